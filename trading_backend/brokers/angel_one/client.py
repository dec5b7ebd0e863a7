"""``SmartApiClient``: our own small async SmartAPI client over ``httpx.AsyncClient``.

Why not the official SDK: it is synchronous, has import-time network side effects, never
raises on Angel error codes, and cannot tell "the server refused" from "we do not know
what happened" — the one distinction an order path cannot live without. This client:

* sends exactly the headers of BROKER_PROTOCOLS §1.3 (``X-PrivateKey`` = API key,
  ``Authorization: Bearer <jwt>`` on everything but login; a stored token's own leading
  ``Bearer `` is stripped so we never send ``Bearer Bearer``);
* sends JSON bodies with ``None`` values dropped; GETs carry no query (the server ignores it);
* decodes every reply with ``protocol.parse_envelope`` (both JSON dialects);
* spends from the client code's shared rate budget first (``ratelimit``) and goes through
  the session's circuit breaker (``circuit``);
* classifies failures:

  ===============================  ==========================  ===========================
  what happened                    idempotent read             write (order, GTT, logout)
  ===============================  ==========================  ===========================
  plain-text HTTP 403              RATE_LIMITED (no retry, back off, never re-login)
  connect error / pool timeout     retried, then UNAVAILABLE   BrokerUnavailable (not sent)
  read timeout, dropped reply      retried, then UNAVAILABLE   BrokerTimeout (fate unknown)
  HTTP 5xx                         retried, then UNAVAILABLE   BrokerTimeout (fate unknown)
  empty / non-JSON body            retried, then UNAVAILABLE   BrokerTimeout (fate unknown)
  transient Angel code (AB1004..)  retried, then envelope      envelope returned
  ===============================  ==========================  ===========================

  Retries with exponential back-off happen only for idempotent reads (GET routes, LTP,
  quote, candles, search, GTT details/list, margin). A write is sent at most once.

Business errors are returned as the ``Envelope``; ``error_from_envelope`` turns one into
the matching ``BrokerError``. Nothing here logs a secret: no headers, no login body, no
tokens — only the route name, status and timing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog

from trading_backend.brokers.angel_one.circuit import CircuitBreaker
from trading_backend.brokers.angel_one.protocol import (
    ERROR_CODE_MAP,
    ERROR_MESSAGES,
    INSUFFICIENT_FUNDS_HINT,
    RATE_LIMIT_TEXT,
    REST_ROOT,
    ROUTES,
    TRANSIENT_ERRORS,
    Envelope,
    parse_envelope,
)
from trading_backend.brokers.angel_one.ratelimit import (
    ClientRateLimiter,
    RateLimited,
    limiter_for,
)
from trading_backend.brokers.base import (
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerTimeout,
    BrokerUnavailable,
    InsufficientFunds,
)
from trading_backend.domain import ErrorCode

__all__ = [
    "IDEMPOTENT_ROUTES",
    "ORDER_ROUTES",
    "SmartApiClient",
    "error_from_envelope",
    "strip_bearer",
]

log = structlog.get_logger(__name__)

# POST routes that only read: safe to retry.
IDEMPOTENT_ROUTES = frozenset(
    {"ltp", "quote", "candles", "oi_data", "search_scrip", "gtt_details", "gtt_list", "margin"}
)
ORDER_ROUTES = frozenset(
    {"place_order", "modify_order", "cancel_order", "gtt_create", "gtt_modify", "gtt_cancel"}
)
SDK_PUBLIC_IP = "106.193.147.98"  # what the official SDK always sends (§1.2)

_EXCEPTION_BY_CODE: dict[ErrorCode, type[BrokerError]] = {
    ErrorCode.AUTH_ERROR: BrokerAuthError,
    ErrorCode.INVALID_TOTP: BrokerAuthError,
    ErrorCode.BROKER_UNAVAILABLE: BrokerUnavailable,
    ErrorCode.INSUFFICIENT_FUNDS: InsufficientFunds,
    ErrorCode.INVALID_ORDER: BrokerRejected,
    ErrorCode.VALIDATION_ERROR: BrokerRejected,
    ErrorCode.INSTRUMENT_NOT_FOUND: BrokerRejected,
    ErrorCode.ORDER_NOT_FOUND: BrokerRejected,
    ErrorCode.FORBIDDEN: BrokerRejected,
    ErrorCode.RATE_LIMITED: RateLimited,
}


def strip_bearer(token: str | None) -> str | None:
    """Tokens are stored bare: the SDK hands out ``"Bearer <jwt>"`` (§1.3)."""
    if token is None:
        return None
    token = token.strip()
    while token[:7].lower() == "bearer ":
        token = token[7:].strip()
    return token or None


def error_from_envelope(envelope: Envelope, route: str) -> BrokerError:
    """The ``BrokerError`` for a failed envelope: Angel's code through
    ``protocol.ERROR_CODE_MAP``; "insufficient funds" in the text wins; unlisted codes are
    INVALID_ORDER on order routes and SYSTEM_ERROR elsewhere."""
    angel = envelope.error_code
    text = envelope.message or ERROR_MESSAGES.get(angel, "request failed")
    if INSUFFICIENT_FUNDS_HINT in text.lower():
        ours = ErrorCode.INSUFFICIENT_FUNDS
    else:
        ours = ERROR_CODE_MAP.get(angel) or (
            ErrorCode.INVALID_ORDER if route in ORDER_ROUTES else ErrorCode.SYSTEM_ERROR
        )
    cls = _EXCEPTION_BY_CODE.get(ours, BrokerError)
    suffix = f" ({angel})" if angel else ""
    return cls(f"Angel One: {text}{suffix}", ours, angel_code=angel or None, route=route)


def _mac_address() -> str:
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


class SmartApiClient:
    """One account's HTTP conversation with SmartAPI (see the module docstring)."""

    def __init__(
        self,
        api_key: str,
        *,
        client_code: str,
        base_url: str = REST_ROOT,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 7.0,
        limiter: ClientRateLimiter | None = None,
        circuit: CircuitBreaker | None = None,
        read_retries: int = 2,
        retry_backoff: float = 0.25,
        rate_limit_backoff: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        local_ip: str = "127.0.0.1",
        public_ip: str = SDK_PUBLIC_IP,
        mac_address: str | None = None,
    ) -> None:
        if not api_key:
            raise BrokerAuthError("Angel One needs an API key")
        self._api_key = api_key
        self.client_code = client_code
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter or limiter_for(client_code)
        self.circuit = circuit
        self.read_retries = max(0, read_retries)
        self.retry_backoff = retry_backoff
        self.rate_limit_backoff = rate_limit_backoff
        self._sleep = sleep
        self._static_headers = {
            "Content-type": "application/json",
            "Accept": "application/json",
            "X-UserType": "USER",
            "X-SourceID": "WEB",
            "X-ClientLocalIP": local_ip,
            "X-ClientPublicIP": public_ip,
            "X-MACAddress": mac_address or _mac_address(),
            "X-PrivateKey": api_key,
        }
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
        )
        self.requests_sent = 0

    def __repr__(self) -> str:  # never show the key
        return f"SmartApiClient(client_code={self.client_code!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def headers(self, jwt: str | None) -> dict[str, str]:
        headers = dict(self._static_headers)
        token = strip_bearer(jwt)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def call(
        self,
        route_name: str,
        body: dict[str, Any] | None = None,
        *,
        jwt: str | None = None,
        path_params: dict[str, str] | None = None,
    ) -> Envelope:
        """Send one request (retrying idempotent reads) and return the decoded envelope.

        Raises ``RateLimited``, ``BrokerUnavailable`` (certainly no effect) or, for writes,
        ``BrokerTimeout`` (the effect is unknown: reconcile, never resend)."""
        route = ROUTES[route_name]
        path = route.path.format(**(path_params or {}))
        idempotent = route.method == "GET" or route_name in IDEMPOTENT_ROUTES
        attempts = 1 + (self.read_retries if idempotent else 0)
        payload = None
        if route.method != "GET":
            payload = {k: v for k, v in (body or {}).items() if v is not None}
        headers = self.headers(jwt if route.secure or route_name == "generate_tokens" else None)
        last_problem = "no reply"
        for attempt in range(attempts):
            if attempt:
                await self._sleep(self.retry_backoff * (2 ** (attempt - 1)))
            if self.circuit is not None:
                self.circuit.before_call()
            try:
                await self.limiter.acquire(route.limit_group)
            except RateLimited:
                if self.circuit is not None:
                    self.circuit.record_neutral()
                raise
            try:
                outcome = await self._attempt(route_name, route.method, path, headers, payload)
            except BaseException:
                # Cancelled (a caller's timeout) or rate limited: never leave a half-open
                # probe slot taken, or the circuit would refuse everything forever.
                if self.circuit is not None:
                    self.circuit.record_neutral()
                raise
            if isinstance(outcome, Envelope):
                if idempotent and not outcome.ok and outcome.error_code in TRANSIENT_ERRORS:
                    last_problem = f"transient error {outcome.error_code}"
                    if attempt + 1 < attempts:
                        continue
                return outcome
            sent, problem = outcome
            last_problem = problem
            if not idempotent:
                if sent:
                    raise BrokerTimeout(
                        f"Angel One {route_name}: {problem}; the outcome is unknown",
                        route=route_name,
                    )
                raise BrokerUnavailable(
                    f"Angel One {route_name}: {problem}; the request was not sent",
                    route=route_name,
                )
        raise BrokerUnavailable(
            f"Angel One {route_name} failed after {attempts} attempt(s): {last_problem}",
            route=route_name,
        )

    async def _attempt(
        self,
        route_name: str,
        method: str,
        path: str,
        headers: dict[str, str],
        payload: dict[str, Any] | None,
    ) -> Envelope | tuple[bool, str]:
        """One HTTP exchange: an envelope, or ``(maybe_sent, problem)`` for a failure."""
        started = time.perf_counter()
        self.requests_sent += 1
        try:
            response = await self._http.request(method, path, headers=headers, json=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._failed(route_name, type(exc).__name__)
            return False, f"could not connect ({type(exc).__name__})"
        except httpx.TimeoutException as exc:
            self._failed(route_name, type(exc).__name__)
            return True, f"no reply in time ({type(exc).__name__})"
        except httpx.TransportError as exc:
            self._failed(route_name, type(exc).__name__)
            return True, f"connection failed ({type(exc).__name__})"
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        status = response.status_code
        try:
            envelope: Envelope | None = parse_envelope(response.json())
        except ValueError:  # JSONDecodeError is a ValueError
            envelope = None
        if envelope is None and (status == 403 or RATE_LIMIT_TEXT in response.text):
            if self.circuit is not None:
                self.circuit.record_neutral()
            self.limiter.penalise(ROUTES[route_name].limit_group, self.rate_limit_backoff)
            log.warning("angel_rate_limited", route=route_name, client_code=self.client_code)
            raise RateLimited(
                "Angel One refused the request: rate limit exceeded; backing off",
                route=route_name,
                retry_after=self.rate_limit_backoff,
            )
        if status >= 500:
            self._failed(route_name, f"HTTP {status}")
            return True, f"server error HTTP {status}"
        if envelope is None:
            # The service answered, but not with an envelope (the empty placeOrder body of
            # openalgo #721, a static-IP refusal...): not an outage, but no answer either.
            if self.circuit is not None:
                self.circuit.record_neutral()
            log.warning(
                "angel_unreadable_reply",
                route=route_name,
                status=status,
                bytes=len(response.content),
            )
            return True, f"unreadable reply (HTTP {status}, {len(response.content)} bytes)"
        if self.circuit is not None:
            self.circuit.record_success()
        log.debug(
            "angel_request",
            route=route_name,
            status=status,
            ok=envelope.ok,
            error_code=envelope.error_code or None,
            ms=elapsed_ms,
        )
        return envelope

    def _failed(self, route_name: str, problem: str) -> None:
        if self.circuit is not None:
            self.circuit.record_failure(f"{route_name}: {problem}")
        log.warning("angel_request_failed", route=route_name, problem=problem)
