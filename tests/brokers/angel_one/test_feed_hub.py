"""The market hub fed by Angel One's live feed, end to end against the fake SmartAPI:
login for a feed token, ``AngelOneFeedUpstream`` under ``MarketHub``; two consumers of one
instrument cost exactly one subscribe frame; the fake's price moves reach both as ticks
and build bars; the last consumer leaving sends one unsubscribe; unknown instruments are
refused without leaving anything behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from tests.brokers.angel_one.support import (
    API_KEY,
    CLIENT_CODE,
    PIN,
    SBIN,
    TOTP_SECRET,
    Clock,
    headers,
    totp,
)
from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.fake import FakeSmartAPI, running_fake
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.angel_one.feed import AngelOneFeed, FeedCredentials
from trading_backend.brokers.angel_one.protocol import ROUTES
from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.feeds import AngelOneFeedUpstream
from trading_backend.marketdata.hub import BarCallback, MarketHub, TickCallback
from trading_backend.strategies.base import Subscription, TickView

INSTRUMENTS = {"NSE:SBIN": SBIN, "NSE:RELIANCE": ("NSE", "2885")}


async def resolve(key: str) -> tuple[str, str] | None:
    return INSTRUMENTS.get(key)


@dataclass
class Live:
    server: RunningFake
    clock: Clock
    feed: AngelOneFeed
    upstream: AngelOneFeedUpstream
    hub: MarketHub

    @property
    def fake(self) -> FakeSmartAPI:
        return self.server.fake


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    clock = Clock()  # Wednesday 10:30 IST: inside the NSE session, so bars form
    fake = FakeSmartAPI(clock=clock)
    fake.add_client(CLIENT_CODE, PIN, TOTP_SECRET, API_KEY)
    async with running_fake(fake) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            reply = await http.post(
                ROUTES["login"].path,
                json={"clientcode": CLIENT_CODE, "password": PIN, "totp": totp(at=clock.now)},
                headers=headers(),
            )
        data = reply.json()["data"]
        credentials = FeedCredentials(
            CLIENT_CODE, data["feedToken"], api_key=API_KEY, auth_token=data["jwtToken"]
        )
        feed = AngelOneFeed(credentials, url=server.feed_url, proxy=None)
        upstream = AngelOneFeedUpstream(feed, resolve)
        hub = MarketHub(SimulatedMarket(seed=1), upstream, paper_prices=False)
        upstream.bind(hub.publish)
        await feed.start()
        try:
            yield Live(server, clock, feed, upstream, hub)
        finally:
            await hub.close()
            await feed.close()


async def test_two_consumers_share_one_subscription_and_both_get_ticks_and_bars(
    live: Live,
) -> None:
    fake_feed = live.fake.feed
    assert fake_feed is not None
    ticks: dict[str, list[TickView]] = {"a": [], "b": []}
    bars: dict[str, list[Bar]] = {"a": [], "b": []}

    def consumer(name: str) -> tuple[TickCallback, BarCallback]:
        async def on_tick(tick: TickView) -> None:
            ticks[name].append(tick)

        async def on_bar(bar: Bar) -> None:
            bars[name].append(bar)

        return on_tick, on_bar

    sbin = Subscription("SBIN", Exchange.NSE, timeframes=(Timeframe.M1,), ticks=True)
    handles = []
    for name in ("a", "b"):
        on_tick, on_bar = consumer(name)
        handles.append(await live.hub.subscribe(sbin, on_tick=on_tick, on_bar=on_bar))
    assert live.hub.refcount("NSE:SBIN") == 2

    wanted = {(1, "3045", packets.MODE_SNAP_QUOTE)}
    await fake_feed.wait_until(lambda: fake_feed.subscriptions(CLIENT_CODE) == wanted)
    assert len(fake_feed.subscribe_requests("3045")) == 1  # one frame for two consumers

    # Three trades in the 10:30 minute, then one at 10:31:05 completes the 10:30 bar.
    for price in ("812.35", "815.00", "811.10"):
        live.fake.set_price(*SBIN, Decimal(price))
        live.clock.advance(seconds=15)
    live.clock.advance(seconds=20)
    live.fake.set_price(*SBIN, Decimal("813.00"))

    await live.feed.wait_until(lambda: live.upstream.ticks == 4)
    for name in ("a", "b"):
        assert [t.ltp for t in ticks[name]] == [
            Decimal("812.35"),
            Decimal("815.00"),
            Decimal("811.10"),
            Decimal("813.00"),
        ]
        assert all(t.bid < t.ltp < t.ask for t in ticks[name])  # SnapQuote best five
        assert ticks[name][0].timestamp == Clock().now
        (bar,) = bars[name]
        assert (bar.timeframe, bar.start.minute, bar.complete) == (Timeframe.M1, 0, True)
        assert (bar.open, bar.high, bar.low, bar.close) == (
            Decimal("812.35"),
            Decimal("815.00"),
            Decimal("811.10"),
            Decimal("811.10"),
        )
    forming = live.hub.current_bar("SBIN", Exchange.NSE, Timeframe.M1)
    assert forming is not None and forming.open == Decimal("813.00")

    for handle in handles:
        await handle.close()
    await fake_feed.wait_until(lambda: fake_feed.subscriptions(CLIENT_CODE) == set())
    assert [r.action for r in fake_feed.requests] == [1, 0]
    assert live.upstream.keys == set()


async def test_an_unknown_instrument_is_refused_and_leaves_nothing_behind(live: Live) -> None:
    async def never(_: object) -> None:
        raise AssertionError("no tick expected")

    with pytest.raises(DomainError) as refused:
        await live.hub.subscribe(Subscription("NOPE", Exchange.NSE, ticks=True), on_tick=never)
    assert refused.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
    assert live.hub.refcount("NSE:NOPE") == 0 and live.hub.instruments == []
    assert live.feed.subscriptions == 0 and live.upstream.keys == set()
