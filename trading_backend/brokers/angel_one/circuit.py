"""A circuit breaker per broker session.

Why: when SmartAPI is down (connection refused, 5xx, timeouts), every order, poll and
health check would otherwise wait out its full timeout and retries, piling up work and
hammering a struggling service. After ``failure_threshold`` consecutive transport or 5xx
failures the circuit *opens*: calls fail at once with ``BROKER_UNAVAILABLE`` (certainly
not sent, so safe for orders). After ``cooldown`` seconds it *half-opens* and lets one
probe through; the probe's success closes it, its failure opens it again.

Business errors (an Angel error code in a well-formed reply) and rate limiting are not
failures: the service answered. The state is exported as a dict (for status pages) and
as the Prometheus gauge ``trading_backend_broker_circuit_state{broker,config_id}``
(0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from trading_backend.brokers.base import BrokerUnavailable

__all__ = ["CIRCUIT_STATE", "CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "CircuitOpen"]

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_GAUGE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

CIRCUIT_STATE = Gauge(
    "trading_backend_broker_circuit_state",
    "Broker circuit breaker state per account (0 closed, 1 half-open, 2 open)",
    ["broker", "config_id"],
)


class CircuitOpen(BrokerUnavailable):
    """Refused without calling the broker: the circuit is open."""


class CircuitBreaker:
    def __init__(
        self,
        broker: str,
        config_id: str,
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.broker = broker
        self.config_id = config_id
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.opened_at: float | None = None
        self.probe_in_flight = False
        self.last_error: str | None = None
        self.times_opened = 0
        self._export()

    def _export(self) -> None:
        CIRCUIT_STATE.labels(broker=self.broker, config_id=self.config_id).set(
            _GAUGE_VALUE[self.state]
        )

    def _set(self, state: str) -> None:
        self.state = state
        self._export()

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` if the call must not go out; otherwise let it through
        (in half-open state, only one probe at a time)."""
        if self.state == OPEN:
            assert self.opened_at is not None
            remaining = self.opened_at + self.cooldown - self.clock()
            if remaining > 0:
                raise CircuitOpen(
                    "Angel One is unreachable (circuit open after repeated failures);"
                    f" retry in {remaining:.0f}s",
                    retry_after=round(remaining, 3),
                )
            self._set(HALF_OPEN)
            self.probe_in_flight = False
        if self.state == HALF_OPEN:
            if self.probe_in_flight:
                raise CircuitOpen("Angel One is being probed after an outage; retry shortly")
            self.probe_in_flight = True

    def record_success(self) -> None:
        self.failures = 0
        self.probe_in_flight = False
        if self.state != CLOSED:
            self.opened_at = None
            self._set(CLOSED)

    def record_failure(self, error: str = "") -> None:
        self.failures += 1
        self.last_error = error or self.last_error
        self.probe_in_flight = False
        if self.state == HALF_OPEN or (
            self.state == CLOSED and self.failures >= self.failure_threshold
        ):
            self.opened_at = self.clock()
            self.times_opened += 1
            self._set(OPEN)

    def record_neutral(self) -> None:
        """The call ended without telling us about the service's health (rate limited):
        frees a half-open probe slot without changing the state."""
        self.probe_in_flight = False

    def to_dict(self) -> dict[str, Any]:
        retry_after = None
        if self.state == OPEN and self.opened_at is not None:
            retry_after = max(0.0, round(self.opened_at + self.cooldown - self.clock(), 3))
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "failure_threshold": self.failure_threshold,
            "cooldown_seconds": self.cooldown,
            "retry_after_seconds": retry_after,
            "times_opened": self.times_opened,
            "last_error": self.last_error,
        }

    def forget(self) -> None:
        """Drop this breaker's gauge series (the session closed)."""
        try:
            CIRCUIT_STATE.remove(self.broker, self.config_id)
        except KeyError:
            pass
