"""The strategies' reader: recent bars from the hub, topped up from history; quotes and
option chains from the market; unknown names are clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.hub import MarketHub
from trading_backend.marketdata.reader import MarketDataReader
from trading_backend.strategies.base import Subscription

CRYPTO = Exchange.CRYPTO


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _noop(_: object) -> None:
    return None


class History:
    """A history loader that makes 1m bars ending at or before ``before``."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, datetime]] = []

    async def __call__(
        self, symbol: str, exchange: Exchange, timeframe: Timeframe, count: int, before: datetime
    ) -> list[Bar]:
        self.asked.append((symbol, count, before))
        bars = []
        for i in range(count, 0, -1):
            start = before - timeframe.duration * i
            price = Decimal(100 + i)
            bars.append(
                Bar(
                    symbol=symbol,
                    exchange=exchange,
                    timeframe=timeframe,
                    start=start,
                    end=start + timeframe.duration,
                    open=price,
                    high=price,
                    low=price,
                    close=price,
                    volume=1,
                )
            )
        return bars


async def _three_minutes(hub: MarketHub, market: SimulatedMarket, clock: Clock) -> None:
    await hub.subscribe(Subscription("BTCUSDT", CRYPTO), on_bar=_noop)
    for _ in range(4):  # ticks in 10:00, 10:01, 10:02, 10:03: three 1m bars complete
        await market.step()
        clock.now += timedelta(minutes=1)


async def test_recent_bars_come_from_the_hub_and_are_topped_up_from_history() -> None:
    clock = Clock()
    market = SimulatedMarket(seed=3, clock=clock)
    hub = MarketHub(market)
    history = History()
    reader = MarketDataReader(market, hub, history)
    await _three_minutes(hub, market, clock)

    live = await reader.bars("BTCUSDT", CRYPTO, Timeframe.M1, 2)
    assert [b.start.minute for b in live] == [1, 2] and history.asked == []

    five = await reader.bars("BTCUSDT", CRYPTO, Timeframe.M1, 5)
    assert [b.start for b in five] == [
        datetime(2026, 11, 25, 9, 58, tzinfo=UTC) + timedelta(minutes=i) for i in range(5)
    ]
    assert history.asked == [("BTCUSDT", 2, datetime(2026, 11, 25, 10, 0, tzinfo=UTC))]
    assert all(b.end <= five[i + 1].start for i, b in enumerate(five[:-1]))

    without_history = MarketDataReader(market, hub)
    assert len(await without_history.bars("BTCUSDT", CRYPTO, Timeframe.M1, 5)) == 3
    assert await reader.bars("BTCUSDT", CRYPTO, Timeframe.M1, 0) == []


async def test_the_last_watcher_leaving_forgets_the_bars() -> None:
    clock = Clock()
    market = SimulatedMarket(seed=3, clock=clock)
    hub = MarketHub(market)
    await _three_minutes(hub, market, clock)
    assert len(hub.recent_bars("BTCUSDT", CRYPTO, Timeframe.M1, 10)) == 3
    await hub.close()
    # Watching again starts afresh: no bar spans the time nobody watched.
    assert hub.recent_bars("BTCUSDT", CRYPTO, Timeframe.M1, 10) == []


async def test_quotes_and_option_chains() -> None:
    market = SimulatedMarket(seed=3)
    reader = MarketDataReader(market, MarketHub(market))
    tick = await reader.quote("TCS", Exchange.NSE)
    assert tick.symbol == "TCS" and tick.bid <= tick.ltp <= tick.ask
    with pytest.raises(DomainError) as unknown:
        await reader.quote("NOPE", Exchange.NSE)
    assert unknown.value.code is ErrorCode.INSTRUMENT_NOT_FOUND

    chain = await reader.option_chain("NIFTY")
    assert chain and {q.option_type for q in chain} == {"CE", "PE"}
    expiry = chain[0].expiry
    assert all(q.expiry == expiry for q in chain)
    assert expiry.hour == 15 and expiry.minute == 30  # IST expiry time
    later = market.expiries("NIFTY")[-1]
    other = await reader.option_chain("NIFTY", datetime.combine(later, datetime.min.time()))
    assert {q.expiry.date() for q in other} == {later}
    with pytest.raises(DomainError) as no_options:
        await reader.option_chain("TCS")
    assert no_options.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
