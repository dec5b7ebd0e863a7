"""The per-session circuit breaker with an injected clock."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from trading_backend.brokers.angel_one.circuit import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitOpen,
)
from trading_backend.domain import ErrorCode


def gauge(config_id: str) -> float | None:
    return REGISTRY.get_sample_value(
        "trading_backend_broker_circuit_state", {"broker": "angel_one", "config_id": config_id}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_cycle_closed_open_half_open_closed() -> None:
    clock = Clock()
    cb = CircuitBreaker("angel_one", "cfg-cycle", failure_threshold=3, cooldown=10, clock=clock)
    assert cb.state == CLOSED and gauge("cfg-cycle") == 0
    for _ in range(2):
        cb.before_call()
        cb.record_failure("HTTP 503")
    assert cb.state == CLOSED  # below the threshold
    cb.before_call()
    cb.record_success()  # a success resets the count
    assert cb.failures == 0
    for _ in range(3):
        cb.before_call()
        cb.record_failure("HTTP 503")
    assert cb.state == OPEN and gauge("cfg-cycle") == 2
    with pytest.raises(CircuitOpen) as info:
        cb.before_call()
    assert info.value.code is ErrorCode.BROKER_UNAVAILABLE
    assert cb.to_dict()["retry_after_seconds"] == 10
    clock.now = 10.0
    cb.before_call()  # the probe goes through
    assert cb.state == HALF_OPEN and gauge("cfg-cycle") == 1
    with pytest.raises(CircuitOpen):
        cb.before_call()  # only one probe at a time
    cb.record_success()
    assert cb.state == CLOSED and gauge("cfg-cycle") == 0
    assert cb.to_dict()["times_opened"] == 1
    cb.forget()
    assert gauge("cfg-cycle") is None


def test_failed_probe_opens_again() -> None:
    clock = Clock()
    cb = CircuitBreaker("angel_one", "cfg-probe", failure_threshold=1, cooldown=5, clock=clock)
    cb.before_call()
    cb.record_failure("timeout")
    assert cb.state == OPEN
    clock.now = 5.0
    cb.before_call()
    cb.record_failure("timeout")
    assert cb.state == OPEN
    assert cb.to_dict() == {
        "state": "open",
        "consecutive_failures": 2,
        "failure_threshold": 1,
        "cooldown_seconds": 5,
        "retry_after_seconds": 5.0,
        "times_opened": 2,
        "last_error": "timeout",
    }
    cb.forget()


def test_neutral_outcome_frees_the_probe_without_closing() -> None:
    clock = Clock()
    cb = CircuitBreaker("angel_one", "cfg-neutral", failure_threshold=1, cooldown=1, clock=clock)
    cb.before_call()
    cb.record_failure()
    clock.now = 1.0
    cb.before_call()
    cb.record_neutral()  # e.g. rate limited: says nothing about health
    assert cb.state == HALF_OPEN
    cb.before_call()  # the probe slot is free again
    cb.forget()
