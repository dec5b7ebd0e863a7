# syntax=docker/dockerfile:1
#
# trading-backend image: one image for every process role. The role is the command:
#   docker run IMAGE                       -> serve --host 0.0.0.0 (the API)
#   docker run IMAGE worker                -> an order worker
#   docker run IMAGE strategies run        -> the strategy runner
#   docker run IMAGE marketdata run        -> the live market-data feed (live source only)
#   docker run IMAGE db upgrade            -> migrations (run once before the others)
# The roles other than serve have no API; with METRICS_PORT set (docker-compose.yml: 9100)
# they serve Prometheus metrics on it, unauthenticated: never publish that port.
# Configuration and secrets come from the environment at run time (docker-compose.yml reads
# them from .env); nothing secret is baked into the image. See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: wheels for the package and every dependency ------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps data, venvs and tests out).
COPY pyproject.toml README.md ./
COPY trading_backend ./trading_backend
# All our dependencies ship binary wheels for linux/amd64 and arm64, so no compiler is
# needed; the wheels directory is all the runtime stage takes from here.
RUN pip wheel --wheel-dir /wheels .

# -- runtime: the slim image with the installed wheels and a non-root user -----------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRADING_BACKEND_DATA_DIR=/var/lib/trading-backend \
    PORT=8000
RUN groupadd --system --gid 10001 trading \
    && useradd --system --uid 10001 --gid trading --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin trading \
    && mkdir -p /app /var/lib/trading-backend \
    && chown trading:trading /app /var/lib/trading-backend
# Install from the build stage's wheels without copying them into a layer of this image
# (BuildKit bind mount; the default builder of Docker 23+ and of `docker compose build`).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels trading-backend
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# The API answers /health with 200 (database and queue reachable) or 503. Slim images have
# no curl, so Python probes it. The Host header is "localhost": keep localhost in
# ALLOWED_HOSTS when you restrict it. Non-API roles (worker, strategies, marketdata) have
# no /health (at most a metrics port): docker-compose.yml disables this check for them.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), headers={'Host': 'localhost'}), timeout=4)"]
ENTRYPOINT ["trading-backend"]
CMD ["serve", "--host", "0.0.0.0"]
