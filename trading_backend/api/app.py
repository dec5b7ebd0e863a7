"""The FastAPI application: routers, error handlers, correlation ids, runtime lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from trading_backend import __version__
from trading_backend.api.errors import install_error_handlers
from trading_backend.api.routers import (
    admin,
    api_keys,
    audit,
    auth,
    brokers,
    health,
    instruments,
    market,
    metrics,
    risk,
    strategies,
    two_factor,
    ws,
)
from trading_backend.api.security import RateLimitMiddleware, SecurityHeadersMiddleware
from trading_backend.logging import configure_logging, correlation_id, new_correlation_id
from trading_backend.manager import multi_user_broker_manager
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings, get_settings

log = structlog.get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"


class CorrelationIdMiddleware(BaseHTTPMiddleware):
    """One correlation id per request (the caller's, if it sent a sane one)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        incoming = request.headers.get(CORRELATION_HEADER, "")
        cid = (
            incoming if 0 < len(incoming) <= 40 and incoming.isprintable() else new_correlation_id()
        )
        token = correlation_id.set(cid)
        try:
            response = await call_next(request)
        finally:
            correlation_id.reset(token)
        response.headers[CORRELATION_HEADER] = cid
        return response


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    *,
    start_background: bool = True,
) -> FastAPI:
    """Build the app. With ``runtime`` given, the caller owns its lifecycle (tests)."""
    owns_runtime = runtime is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_runtime:
            resolved = settings or get_settings()
            configure_logging(resolved.log_level, resolved.log_json)
        rt = runtime or Runtime(resolved)
        app.state.runtime = rt
        if owns_runtime:
            await rt.start(
                worker=rt.settings.embedded_worker and start_background,
                market=start_background,
                health_monitor=start_background,
                strategies=rt.settings.embedded_strategies and start_background,
            )
        await multi_user_broker_manager.initialize(runtime=rt)
        try:
            yield
        finally:
            if owns_runtime:
                await rt.stop()

    app = FastAPI(
        title="trading-backend",
        version=__version__,
        description="Multi-user, multi-broker algorithmic trading backend.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    effective = runtime.settings if runtime is not None else (settings or get_settings())
    app.add_middleware(CorrelationIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, production=effective.is_production)
    app.add_middleware(RateLimitMiddleware, settings=effective)
    origins = [o.strip() for o in effective.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", CORRELATION_HEADER],
            expose_headers=[CORRELATION_HEADER, "Retry-After"],
        )
    hosts = [h.strip() for h in effective.allowed_hosts.split(",") if h.strip()]
    if hosts and hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(two_factor.router)
    app.include_router(api_keys.router)
    app.include_router(brokers.router)
    app.include_router(admin.router)
    app.include_router(audit.router)
    app.include_router(market.router)
    app.include_router(instruments.router)
    app.include_router(strategies.router)
    app.include_router(risk.router)
    app.include_router(risk.admin_router)
    app.include_router(ws.router)
    app.include_router(metrics.router)
    # -- queue (issue #7): queue depth and dead letters for administrators
    from trading_backend.api.routers import queue as queue_router

    app.include_router(queue_router.router)
    # -- end queue
    from trading_backend.api.routers import portfolio  # -- portfolio analytics (issue #8)

    app.include_router(portfolio.router)
    from trading_backend.api.routers import backtests  # -- backtests (issue #8)

    app.include_router(backtests.router)
    return app
