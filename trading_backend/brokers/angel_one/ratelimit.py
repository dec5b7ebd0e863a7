"""Client-side rate limiting for SmartAPI, per client code and endpoint group.

Why: Angel One counts requests per *client code* (not per API key or per process object)
in sliding per-second, per-minute and per-hour windows (``protocol.RATE_LIMITS``), and
answers a breach with a plain-text HTTP 403 that does not reset on re-login. Spending a
stale budget overnight or bursting candle requests locks a user out for minutes, so we
keep below the limits ourselves:

* one ``ClientRateLimiter`` per client code, found through a module-level registry
  (``limiter_for``), so every session object of the same account in this process spends
  from the same budget (place/modify/cancel share the ``orders`` group, as at Angel);
* callers *wait* for a slot (``acquire``) instead of failing; only when the wait would
  exceed ``max_wait`` do they get ``RATE_LIMITED``;
* the window bookkeeping (``SlidingWindow``) is pure logic over an injectable clock, so
  tests drive time without sleeping.

A small ``margin`` widens every window: the server measures arrival times, we measure
send times, and a request sent exactly one second after another may arrive a hair early.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from trading_backend.brokers.angel_one.protocol import RATE_LIMITS, RateLimit
from trading_backend.brokers.base import BrokerError
from trading_backend.domain import ErrorCode

__all__ = [
    "ClientRateLimiter",
    "RateLimited",
    "SlidingWindow",
    "limiter_for",
    "reset_registry",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_WINDOWS = (1.0, 60.0, 3600.0)  # the spans of the three numbers in a ``RateLimit``


class RateLimited(BrokerError):
    """Our own limiter (or Angel's 403) refused a request: back off, do not re-login."""

    code = ErrorCode.RATE_LIMITED


@dataclass(slots=True)
class SlidingWindow:
    """At most ``limit`` events in any ``span`` seconds (timestamps kept, oldest first)."""

    limit: int
    span: float
    events: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        while self.events and self.events[0] <= now - self.span:
            self.events.popleft()

    def wait_time(self, now: float) -> float:
        """Seconds until one more event fits (0 when it fits now)."""
        self._expire(now)
        if len(self.events) < self.limit:
            return 0.0
        # The oldest event that must leave before we fit.
        oldest = self.events[len(self.events) - self.limit]
        return max(0.0, oldest + self.span - now)

    def record(self, now: float) -> None:
        self.events.append(now)


class _GroupLimiter:
    """All windows of one endpoint group: an event fits only when it fits every window."""

    __slots__ = ("windows",)

    def __init__(self, limit: RateLimit, margin: float) -> None:
        self.windows = [
            SlidingWindow(count, span + margin)
            for count, span in zip(limit, _WINDOWS, strict=True)
            if count is not None
        ]

    def try_acquire(self, now: float) -> float:
        wait = max((w.wait_time(now) for w in self.windows), default=0.0)
        if wait <= 0.0:
            for window in self.windows:
                window.record(now)
        return wait


class ClientRateLimiter:
    """The budgets of one client code, one per endpoint group of ``protocol.RATE_LIMITS``."""

    def __init__(
        self,
        client_code: str,
        *,
        limits: dict[str, RateLimit] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: float = 0.05,
        max_wait: float = 10.0,
    ) -> None:
        self.client_code = client_code
        self.clock = clock
        self.sleep = sleep
        self.max_wait = max_wait
        self._margin = margin
        self._limits = dict(RATE_LIMITS if limits is None else limits)
        self._groups: dict[str, _GroupLimiter] = {}
        self.waited: dict[str, float] = {}  # total seconds callers waited, per group

    def _group(self, name: str) -> _GroupLimiter | None:
        limiter = self._groups.get(name)
        if limiter is None:
            limit = self._limits.get(name)
            if limit is None:
                return None  # an undocumented group: no client-side limit
            limiter = self._groups[name] = _GroupLimiter(limit, self._margin)
        return limiter

    def try_acquire(self, group: str) -> float:
        """Take a slot now and return 0, or return how long until one may be free."""
        limiter = self._group(group)
        return 0.0 if limiter is None else limiter.try_acquire(self.clock())

    async def acquire(self, group: str, max_wait: float | None = None) -> float:
        """Wait for a slot of ``group``; returns the seconds waited. Raises ``RateLimited``
        when the slot is further away than ``max_wait`` (default: the limiter's)."""
        budget = self.max_wait if max_wait is None else max_wait
        waited = 0.0
        while True:
            wait = self.try_acquire(group)
            if wait <= 0.0:
                if waited:
                    self.waited[group] = self.waited.get(group, 0.0) + waited
                return waited
            if waited + wait > budget:
                raise RateLimited(
                    f"Angel One {group} rate limit: no request slot within {budget:g}s",
                    group=group,
                    retry_after=round(wait, 3),
                )
            await self.sleep(wait)
            waited += wait

    def penalise(self, group: str, seconds: float) -> None:
        """After a server-side 403: treat the group as full for ``seconds`` (back off)."""
        limiter = self._group(group)
        if limiter is None:
            return
        now = self.clock()
        for window in limiter.windows:
            # Fill the window with events that expire ``seconds`` from now.
            stamp = now + seconds - window.span
            window.events.clear()
            window.events.extend([stamp] * window.limit)


_REGISTRY: dict[str, ClientRateLimiter] = {}


def limiter_for(client_code: str) -> ClientRateLimiter:
    """The process-wide limiter of a client code, shared by all its sessions."""
    limiter = _REGISTRY.get(client_code)
    if limiter is None:
        limiter = _REGISTRY[client_code] = ClientRateLimiter(client_code)
    return limiter


def reset_registry() -> None:
    """Forget every client code's budget (tests)."""
    _REGISTRY.clear()
