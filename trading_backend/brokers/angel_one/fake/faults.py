"""Fault injection and the per-client-code rate limiter of the fake SmartAPI.

Every one-shot fault is armed for ``times`` requests to one route (a ``protocol.ROUTES``
name such as ``"place_order"``) or to any route (``route=None``), and is consumed in arrival
order. The limiter is real: sliding 1 s / 60 s / 3600 s windows per client code and per
``protocol.RATE_LIMITS`` group, answering the plain-text 403 the real gateway sends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trading_backend.brokers.angel_one.protocol import RATE_LIMITS, ROUTES

DEFAULT_HOLD_SECONDS = 60.0  # longer than any sane client timeout (the SDK's is 7 s)


@dataclass(slots=True)
class Fault:
    kind: str
    route: str | None
    times: int
    status: int = 503
    code: str = ""
    message: str = ""
    hold: float = DEFAULT_HOLD_SECONDS
    after_effect: bool = False


def _check_route(route: str | None) -> None:
    if route is not None and route not in ROUTES:
        raise ValueError(f"unknown SmartAPI route {route!r}; use a protocol.ROUTES name")


class Faults:
    """Switches a test flips to make the fake misbehave the way the real service does."""

    def __init__(
        self,
        invalidate: Callable[[str], int],
        drop_websockets: Callable[[], int],
    ) -> None:
        self._invalidate = invalidate
        self._drop = drop_websockets
        self._armed: list[Fault] = []
        self._latency: dict[str | None, float] = {}
        self.rate_limiting = True

    # ------------------------------------------------------------------ arming
    def latency(self, seconds: float, route: str | None = None) -> None:
        """Delay every matching request by ``seconds`` (0 removes it)."""
        _check_route(route)
        if seconds <= 0:
            self._latency.pop(route, None)
        else:
            self._latency[route] = seconds

    def http_error(self, times: int = 1, *, status: int = 503, route: str | None = None) -> None:
        """The next ``times`` matching requests get an HTML-ish 5xx from the "gateway"."""
        if not 500 <= status <= 599:
            raise ValueError("http_error status must be 5xx")
        self._arm(Fault("http", route, times, status=status))

    def timeout(
        self,
        times: int = 1,
        *,
        route: str | None = None,
        after_effect: bool = False,
        hold: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        """Hold the next ``times`` matching requests for ``hold`` seconds (past the client's
        timeout). With ``after_effect`` the request is executed first (the order IS placed)
        and only the reply is held back."""
        self._arm(Fault("timeout", route, times, hold=hold, after_effect=after_effect))

    def timeout_after_effect(
        self, times: int = 1, *, route: str = "place_order", hold: float = DEFAULT_HOLD_SECONDS
    ) -> None:
        self.timeout(times, route=route, after_effect=True, hold=hold)

    def empty_body(self, times: int = 1, *, route: str = "place_order") -> None:
        """Execute the request (the order is placed) but answer HTTP 200 with an empty body."""
        self._arm(Fault("empty", route, times))

    def rate_limit(self, times: int = 1, *, route: str | None = None) -> None:
        """Answer the plain-text ``403 Access denied because of exceeding access rate``."""
        self._arm(Fault("rate", route, times))

    def error(
        self,
        code: str = "AB1004",
        times: int = 1,
        *,
        route: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer a business error envelope (e.g. AB1004 / AB2001) without executing."""
        self._arm(Fault("error", route, times, code=code, message=message or ""))

    def invalidate_tokens(self, client_code: str) -> int:
        """Kill every session of ``client_code`` now: its next call gets AG8001."""
        return self._invalidate(client_code)

    def drop_websockets(self) -> int:
        """Close every order-update and feed WebSocket abnormally (no close frame)."""
        return self._drop()

    def clear(self) -> None:
        self._armed.clear()
        self._latency.clear()
        self.rate_limiting = True

    def _arm(self, fault: Fault) -> None:
        _check_route(fault.route)
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        self._armed.append(fault)

    # ------------------------------------------------------------------ consuming
    def delay_for(self, route: str) -> float:
        return self._latency.get(route, self._latency.get(None, 0.0))

    def take(self, kind: str, route: str) -> Fault | None:
        for fault in self._armed:
            if fault.kind == kind and fault.route in (None, route):
                fault.times -= 1
                if fault.times <= 0:
                    self._armed.remove(fault)
                return fault
        return None

    @property
    def pending(self) -> list[Fault]:
        return list(self._armed)


class RateLimiter:
    """Sliding-window limits per (client code, limit group), as the real gateway applies them."""

    WINDOWS = (1.0, 60.0, 3600.0)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def allow(self, client_code: str, group: str) -> bool:
        limits = RATE_LIMITS.get(group)
        if limits is None:
            return True
        now = self.clock()
        hits = self._hits.setdefault((client_code, group), deque())
        while hits and now - hits[0] >= self.WINDOWS[-1]:
            hits.popleft()
        for window, limit in zip(self.WINDOWS, limits, strict=True):
            if limit is None:
                continue
            recent = sum(1 for t in hits if now - t < window)
            if recent >= limit:
                return False
        hits.append(now)
        return True

    def reset(self) -> None:
        self._hits.clear()
