"""The market hub: one upstream subscription per instrument, ticks and bars fanned out to
every consumer that asked for them, a failing consumer isolated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.marketdata.hub import MarketHub
from trading_backend.strategies.base import Subscription, TickView

CRYPTO = Exchange.CRYPTO


class CountingUpstream:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def subscribe(self, key: str) -> None:
        self.calls.append(("subscribe", key))

    async def unsubscribe(self, key: str) -> None:
        self.calls.append(("unsubscribe", key))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _noop(_: object) -> None:
    return None


async def test_one_upstream_subscription_per_instrument_whatever_the_consumers() -> None:
    upstream = CountingUpstream()
    hub = MarketHub(SimulatedMarket(seed=1), upstream)
    btc = Subscription("BTCUSDT", CRYPTO, ticks=True)
    handles = [await hub.subscribe(btc, on_tick=_noop) for _ in range(50)]
    eth = await hub.subscribe(Subscription("ETHUSDT", CRYPTO), on_bar=_noop)
    assert upstream.calls == [("subscribe", "CRYPTO:BTCUSDT"), ("subscribe", "CRYPTO:ETHUSDT")]
    assert hub.refcount("CRYPTO:BTCUSDT") == 50

    for handle in handles[:49]:
        await handle.close()
    await handles[0].close()  # closing twice changes nothing
    assert hub.refcount("CRYPTO:BTCUSDT") == 1 and len(upstream.calls) == 2
    await handles[49].close()
    await eth.close()
    assert upstream.calls[2:] == [
        ("unsubscribe", "CRYPTO:BTCUSDT"),
        ("unsubscribe", "CRYPTO:ETHUSDT"),
    ]
    assert hub.instruments == []


async def test_ticks_and_bars_reach_only_those_who_asked() -> None:
    clock = Clock()
    market = SimulatedMarket(seed=1, clock=clock)
    hub = MarketHub(market)
    ticks: list[TickView] = []
    one_minute: list[Bar] = []
    five_minutes: list[Bar] = []
    other: list[object] = []

    async def on_tick(tick: TickView) -> None:
        ticks.append(tick)

    async def on_1m(bar: Bar) -> None:
        one_minute.append(bar)

    async def on_5m(bar: Bar) -> None:
        five_minutes.append(bar)

    async def on_other(event: object) -> None:
        other.append(event)

    await hub.subscribe(Subscription("BTCUSDT", CRYPTO, ticks=True, timeframes=()), on_tick=on_tick)
    await hub.subscribe(Subscription("BTCUSDT", CRYPTO, timeframes=(Timeframe.M1,)), on_bar=on_1m)
    await hub.subscribe(Subscription("BTCUSDT", CRYPTO, timeframes=(Timeframe.M5,)), on_bar=on_5m)
    await hub.subscribe(Subscription("ETHUSDT", CRYPTO, ticks=True), on_tick=on_other)

    prices = ["100", "105", "95", "101", "102"]  # one price every 30 s from 10:00:00
    for price in prices:
        await market.set_price("BTCUSDT", CRYPTO, price, volume=2)
        clock.now += timedelta(seconds=30)
    # 10:02:30 now: the bars 10:00 and 10:01 are complete; 10:02 is forming.
    await market.set_price("BTCUSDT", CRYPTO, "110", volume=1)

    assert [t.ltp for t in ticks] == [Decimal(p) for p in [*prices, "110"]]
    assert other == []  # ETH did not move: set_price only notifies BTC
    assert [(b.start.minute, b.open, b.high, b.low, b.close, b.volume) for b in one_minute] == [
        (0, Decimal(100), Decimal(105), Decimal(100), Decimal(105), 4),
        (1, Decimal(95), Decimal(101), Decimal(95), Decimal(101), 4),
    ]
    assert all(b.timeframe is Timeframe.M1 and b.complete for b in one_minute)
    assert five_minutes == []  # 10:00-10:05 is still forming
    forming = hub.current_bar("BTCUSDT", CRYPTO, Timeframe.M5)
    assert forming is not None and forming.high == Decimal(110) and not forming.complete


async def test_a_failing_consumer_does_not_stop_the_others() -> None:
    market = SimulatedMarket(seed=1)
    hub = MarketHub(market)
    seen: list[Decimal] = []

    async def broken(_: TickView) -> None:
        raise RuntimeError("consumer bug")

    async def healthy(tick: TickView) -> None:
        seen.append(tick.ltp)

    sub = Subscription("BTCUSDT", CRYPTO, ticks=True)
    await hub.subscribe(sub, on_tick=broken)
    await hub.subscribe(sub, on_tick=healthy)
    await market.set_price("BTCUSDT", CRYPTO, "100")
    await market.set_price("BTCUSDT", CRYPTO, "101")
    assert seen == [Decimal(100), Decimal(101)]
    assert hub.refcount("CRYPTO:BTCUSDT") == 2
