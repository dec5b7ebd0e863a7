"""Transport-level protections: rate limits, security headers, CORS and trusted hosts.

Rate limits (``limits``; Redis storage when REDIS_URL is set so every API instance shares
the counters, memory otherwise):

* POSTs that check a password, refresh token or 2FA code (login, register, refresh,
  password, 2fa confirm/disable/recovery-codes): per client IP, RATE_LIMIT_AUTH.
* order placement, modification and cancellation: per user or API key, RATE_LIMIT_ORDERS.
* every other ``/api/`` route: per user or API key (per IP when anonymous), RATE_LIMIT_API.

A refused request is a 429 ``{"error_code": "RATE_LIMITED"}`` with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Any

import jwt
import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trading_backend.settings import Settings

log = structlog.get_logger(__name__)

ORDER_PATH = re.compile(r"^/api/v1/brokers/orders/(place|[^/]+)$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
# Endpoints that check a password, a refresh token or a 2FA code: the per-IP auth limit
# keeps guessing slow.
GUESSABLE_PATHS = frozenset(
    "/api/v1/auth/" + name
    for name in (
        "login",
        "register",
        "refresh",
        "password",
        "2fa/confirm",
        "2fa/disable",
        "2fa/recovery-codes",
    )
)
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


def _storage(settings: Settings) -> Storage:
    if settings.redis_url:
        url = settings.redis_url
        return RedisStorage(url, implementation="redispy")
    return MemoryStorage()


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = MovingWindowRateLimiter(_storage(settings))
        self.api_limit: RateLimitItem = parse(settings.rate_limit_api)
        self.auth_limit: RateLimitItem = parse(settings.rate_limit_auth)
        self.order_limit: RateLimitItem = parse(settings.rate_limit_orders)
        self._secret = settings.jwt_secret_key or ""

    def _identity(self, scope: Scope) -> str | None:
        """Who is calling, cheaply: the API key's public prefix, or the JWT's subject when
        its signature is valid (expiry and revocation are the auth layer's business)."""
        headers = dict(scope.get("headers") or [])
        key = headers.get(b"x-api-key")
        if key:
            return "key:" + hashlib.sha256(key).hexdigest()[:24]
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            try:
                claims = jwt.decode(
                    auth[7:],
                    self._secret,
                    algorithms=[self.settings.jwt_algorithm],
                    options={"verify_exp": False},
                )
                return "user:" + str(claims.get("sub"))
            except jwt.PyJWTError:
                return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (self.settings.rate_limit_enabled and path.startswith("/api/")):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        checks: list[tuple[RateLimitItem, str]] = []
        if path.startswith("/api/v1/auth/") and method == "POST" and path in GUESSABLE_PATHS:
            checks.append((self.auth_limit, "ip:" + ip))
        else:
            identity = self._identity(scope) or "ip:" + ip
            if method in ("POST", "PUT", "DELETE") and ORDER_PATH.match(path):
                checks.append((self.order_limit, "orders:" + identity))
            checks.append((self.api_limit, identity))
        for item, key in checks:
            try:
                allowed = await self.limiter.hit(item, key)
            except Exception:
                log.exception("rate_limiter_unavailable")
                break
            if not allowed:
                stats = await self.limiter.get_window_stats(item, key)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                await _reject(send, retry, str(item))
                return
        await self.app(scope, receive, send)


async def _reject(send: Send, retry_after: int, limit: str) -> None:
    body = (
        b'{"error_code":"RATE_LIMITED","message":"rate limit exceeded ('
        + limit.encode()
        + b'); retry later"}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after).encode()),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Conservative headers on every response; a strict CSP on API (JSON) routes, where
    no page is ever rendered; HSTS in production."""

    def __init__(self, app: ASGIApp, production: bool = False) -> None:
        self.app = app
        self.production = production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {h[0].lower() for h in headers}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                if path.startswith("/api/") or path == "/health":
                    extra.append(API_CSP)
                if self.production:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
