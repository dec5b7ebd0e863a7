"""The client-side SmartAPI rate limiter: sliding windows per endpoint group and client
code, waiting rather than failing, shared across sessions. Time is injected: no sleeping."""

from __future__ import annotations

import pytest

from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.ratelimit import (
    ClientRateLimiter,
    RateLimited,
    SlidingWindow,
    limiter_for,
)
from trading_backend.domain import ErrorCode


class FakeTime:
    """A monotonic clock whose ``sleep`` moves time forward instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(t: FakeTime, **kw: object) -> ClientRateLimiter:
    return ClientRateLimiter("A1", clock=t.clock, sleep=t.sleep, margin=0.0, **kw)  # type: ignore[arg-type]


def test_sliding_window_counts_only_recent_events() -> None:
    window = SlidingWindow(limit=2, span=1.0)
    assert window.wait_time(0.0) == 0
    window.record(0.0)
    window.record(0.4)
    assert window.wait_time(0.5) == pytest.approx(0.5)  # the 0.0 event leaves at 1.0
    assert window.wait_time(1.0) == 0  # it left: one slot free
    window.record(1.0)
    assert window.wait_time(1.2) == pytest.approx(0.2)  # now the 0.4 one must leave


async def test_per_second_limit_makes_callers_wait_not_fail() -> None:
    t = FakeTime()
    limiter = make(t)
    start = t.now
    for _ in range(9):  # orders: 9/s
        assert await limiter.acquire("orders") == 0
    waited = await limiter.acquire("orders")
    assert waited == pytest.approx(1.0)
    assert t.now - start == pytest.approx(1.0)
    assert limiter.waited["orders"] == pytest.approx(1.0)


async def test_place_modify_cancel_share_one_budget_but_other_groups_do_not() -> None:
    t = FakeTime()
    limiter = make(t)
    for _ in range(9):
        await limiter.acquire("orders")
    # A different group is untouched by the orders budget.
    assert limiter.try_acquire("ltp") == 0
    assert limiter.try_acquire("orders") > 0


async def test_per_minute_window_is_sliding() -> None:
    t = FakeTime()
    limiter = make(t)
    # candles: 3/s and 180/min. 180 calls take 59 s of 1 s waits; the 181st waits for the
    # first minute's first call to leave the window.
    for _ in range(180):
        await limiter.acquire("candles", max_wait=120)
    elapsed = t.now - 1000.0
    assert elapsed == pytest.approx(59.0)
    await limiter.acquire("candles", max_wait=120)
    assert t.now - 1000.0 == pytest.approx(60.0)


async def test_wait_beyond_max_wait_is_rate_limited() -> None:
    t = FakeTime()
    limiter = make(t, max_wait=0.5)
    await limiter.acquire("order_book")  # 1/s
    with pytest.raises(RateLimited) as info:
        await limiter.acquire("order_book")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.details["retry_after"] == pytest.approx(1.0)
    assert t.sleeps == []  # refused at once, no pointless waiting


async def test_penalty_after_a_server_403_blocks_the_group() -> None:
    t = FakeTime()
    limiter = make(t, max_wait=10)
    limiter.penalise("quote", 60.0)
    with pytest.raises(RateLimited):
        await limiter.acquire("quote")
    assert limiter.try_acquire("ltp") == 0  # other groups are not penalised
    t.now += 60.0
    assert await limiter.acquire("quote") == 0


async def test_unknown_group_is_not_limited() -> None:
    t = FakeTime()
    limiter = make(t)
    for _ in range(100):
        assert limiter.try_acquire("estimate_charges") == 0


def test_registry_shares_one_limiter_per_client_code() -> None:
    ratelimit.reset_registry()
    try:
        first = limiter_for("A123456")
        assert limiter_for("A123456") is first
        assert limiter_for("B765432") is not first
        first.try_acquire("order_book")
        # A second session of the same client code sees the budget already spent.
        assert limiter_for("A123456").try_acquire("order_book") > 0
        assert limiter_for("B765432").try_acquire("order_book") == 0
    finally:
        ratelimit.reset_registry()
