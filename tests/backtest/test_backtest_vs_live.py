"""A strategy backtested, then run live on the paper market over the same replayed prices,
makes the same trades.

Live here is the real thing, nothing faked: the runtime's ``SimulatedMarket`` (on a manual
clock) driven by ``PriceReplay`` with the bars' price paths, the market hub aggregating
those ticks back into bars, the ``StrategyRunner`` running ``sma_crossover`` created
through ``StrategyService``, its orders through the order service (risk included), the
queue, the worker and the paper broker, fills recorded as trades. After each price point
the runner is drained (``runner.drain()``), so whatever a point caused has happened before
the next one: deterministic, with no sleeping.

The rule both sides follow: bar t is complete at the first price point of bar t+1 (the live
hub completes it on that tick), and an order placed on bar t fills at that point, bar
t+1's open. The backtest is configured as the paper market trades: a two-tick spread
(``half_spread_ticks=1``), partial fills against each point's volume, default charges.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.helpers import user_with_config
from trading_backend.backtest import Backtest, InMemorySource
from trading_backend.brokers.paper.replay import ManualClock, PriceReplay
from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.domain.calendar import IST
from trading_backend.runtime import Runtime
from trading_backend.storage.models import TradeRow
from trading_backend.strategies.runner import StrategyRunner
from trading_backend.strategies.service import StrategyService

START = datetime(2026, 11, 2, 9, 15, tzinfo=IST).astimezone(UTC)  # a Monday's open
PARAMS = {
    "symbol": "INFY",
    "exchange": "NSE",
    "timeframe": "1m",
    "fast_period": 3,
    "slow_period": 8,
    "quantity": 20,
    "allow_short": True,
}


def minute_bars(count: int = 150, seed: int = 21) -> list[Bar]:
    """One-minute INFY bars of one session, prices on INFY's 0.05 tick."""
    rng = np.random.default_rng(seed)
    closes = np.round(1500 * np.exp(rng.normal(0, 0.002, count).cumsum()) * 20).astype(int)
    opens = np.concatenate([[30000], closes[:-1]]) + rng.integers(-2, 3, count)
    highs = np.maximum(opens, closes) + rng.integers(0, 8, count)
    lows = np.minimum(opens, closes) - rng.integers(0, 8, count)
    step = Timeframe.M1.duration
    return [
        Bar(
            "INFY",
            Exchange.NSE,
            Timeframe.M1,
            START + i * step,
            START + (i + 1) * step,
            *(Decimal(int(v)) / 20 for v in (o, h, lo, c)),
            400_000,
        )
        for i, (o, h, lo, c) in enumerate(zip(opens, highs, lows, closes, strict=True))
    ]


@pytest.fixture
async def live(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Runtime, ManualClock]]:
    clock = ManualClock(START - timedelta(minutes=1))
    runtime = Runtime(make_settings(tmp_path, database_url), clock=clock)
    await runtime.start(worker=True, market=False, health_monitor=False)
    try:
        yield runtime, clock
    finally:
        await runtime.stop()


Trade = tuple[datetime, str, int, Decimal, Decimal]


async def live_trades(runtime: Runtime, clock: ManualClock, bars: list[Bar]) -> list[Trade]:
    user_id, config_id = await user_with_config(runtime)
    registry = runtime.strategy_registry
    runner = StrategyRunner(
        runtime.db,
        registry,
        runtime.market_hub,
        runtime.market_reader,
        runtime.orders,
        runtime.recorder,
    )
    await runner.start()
    try:
        service = StrategyService(runtime.db, registry, runner)
        created = await service.create(user_id, "sma live", "sma_crossover", config_id, PARAMS)
        await service.start(user_id, created.id)
        replay = PriceReplay(runtime.market, clock, partial_fills=True, after_point=runner.drain)
        assert await replay.play(bars) == 4 * len(bars)
    finally:
        await runner.stop()
    async with runtime.db() as session:
        rows = (
            await session.scalars(select(TradeRow).order_by(TradeRow.executed_at, TradeRow.id))
        ).all()
    return [(r.executed_at, r.side, r.quantity, r.price, r.charges) for r in rows]


async def backtest_trades(bars: list[Bar]) -> list[Trade]:
    config = {
        "strategy": "sma_crossover",
        "params": PARAMS,
        "half_spread_ticks": 1,
        "partial_fills": True,
        "charges": True,
    }
    result = await Backtest(config, InMemorySource(bars)).run()
    assert result.error is None
    return [(f.timestamp, f.side.value, f.quantity, f.price, f.charges) for f in result.fills]


async def test_backtest_then_live_on_the_same_prices_trade_the_same(
    live: tuple[Runtime, ManualClock],
) -> None:
    runtime, clock = live
    bars = minute_bars()
    expected = await backtest_trades(bars)
    got = await live_trades(runtime, clock, bars)
    assert len(expected) >= 6  # entries, reversals and exits both ways
    assert {side for _, side, *_ in expected} == {"BUY", "SELL"}
    assert got == expected
    # Each trade is at a bar's open plus the paper market's one-tick half spread.
    opens = {b.start: b.open for b in bars}
    tick = Decimal("0.05")
    for when, side, _, price, _ in expected:
        assert price == opens[when] + (tick if side == "BUY" else -tick)
