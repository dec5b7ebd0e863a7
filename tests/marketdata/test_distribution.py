"""The shared live feed's plumbing against real Redis (``marketdata.distribution``): the
wire form of quote batches, each process's watched instruments and their union at the
holder, quotes from the holder applied by another process, and stale holders ignored.
The end-to-end test with two runtimes and the Angel One fake is
``tests/brokers/angel_one/test_feed_singleton.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from trading_backend.brokers.paper.market import Quote
from trading_backend.domain import Exchange
from trading_backend.execution.events import MARKET, RedisEventBus
from trading_backend.marketdata.distribution import (
    MarketDistribution,
    quotes_from_payload,
    quotes_to_payload,
    wanted_union,
)
from trading_backend.marketdata.hub import PaperUpstream


def make_quote(symbol: str = "SBIN", ltp: str = "812.35", sequence: int = 1) -> Quote:
    price = Decimal(ltp)
    return Quote(
        symbol=symbol,
        exchange=Exchange.NSE,
        ltp=price,
        bid=price - Decimal("0.05"),
        ask=price + Decimal("0.05"),
        open=Decimal("800.00"),
        high=Decimal("815.10"),
        low=Decimal("799.95"),
        close=Decimal("805.00"),
        volume=123_456,
        tick_volume=25,
        change=price - Decimal("805.00"),
        change_percent=Decimal("0.91"),
        timestamp=datetime(2026, 11, 30, 4, 15, 1, 250_000, tzinfo=UTC),
        sequence=sequence,
    )


def test_batches_round_trip_exactly_with_money_as_strings() -> None:
    quotes = [make_quote(), make_quote("INFY", "1499.999999", 2)]
    payload = quotes_to_payload("cfg-1", 7, quotes)
    assert payload["k"] == "q" and payload["feed"] == "cfg-1" and payload["t"] == 7
    assert payload["q"][1][2] == "1499.999999"  # exact, never a float
    token, back = quotes_from_payload(payload)
    assert token == 7
    assert back == quotes


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(t="7"),
        lambda p: p.update(q="nope"),
        lambda p: p["q"][0].__setitem__(2, 812.35),  # a float price
        lambda p: p["q"][0].__setitem__(2, "NaN"),
        lambda p: p["q"][0].__setitem__(1, "MOON"),  # unknown exchange
        lambda p: p["q"][0].pop(),
    ],
)
def test_malformed_batches_are_refused(mutate: object) -> None:
    payload = quotes_to_payload("cfg-1", 7, [make_quote()])
    mutate(payload)  # type: ignore[operator]
    with pytest.raises(ValueError):
        quotes_from_payload(payload)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"tbtest:{uuid.uuid4().hex}:"
    yield value
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{value}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


class Process:
    """One process's side: a Redis event bus and a distribution applying what it receives."""

    def __init__(self, url: str, prefix: str, *, refresh: float = 0.2, ttl: float = 2.0) -> None:
        self.bus = RedisEventBus(url, prefix=f"{prefix}events:")
        self.redis = Redis.from_url(url)
        self.applied: list[list[Quote]] = []
        self.got = asyncio.Condition()

        async def sink(quotes: list[Quote]) -> None:
            async with self.got:
                self.applied.append(quotes)
                self.got.notify_all()

        self.distribution = MarketDistribution(
            self.bus, self.redis, feed="cfg-1", prefix=prefix, sink=sink, refresh=refresh, ttl=ttl
        )

    async def start(self) -> None:
        await self.bus.start()
        await self.bus.wait_subscribed()
        await self.distribution.start()

    async def wait_applied(self, count: int) -> None:
        async with self.got:
            await asyncio.wait_for(self.got.wait_for(lambda: len(self.applied) >= count), 5)

    async def close(self) -> None:
        await self.distribution.close()
        await self.bus.close()
        await self.redis.aclose()


@pytest.fixture
async def processes(redis_url: str, prefix: str) -> AsyncIterator[tuple[Process, Process]]:
    a, b = Process(redis_url, prefix), Process(redis_url, prefix)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_the_holder_subscribes_the_union_of_every_process_watch(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    await a.distribution.wanted.subscribe("NSE:SBIN")
    await b.distribution.wanted.subscribe("NSE:INFY")
    await b.distribution.wanted.subscribe("NSE:SBIN")
    feed = PaperUpstream()  # the holder's broker feed, as far as subscriptions go
    await a.distribution.sync(feed)
    assert feed.keys == {"NSE:SBIN", "NSE:INFY"}

    # B stops watching INFY, and A goes away altogether: only B's SBIN is left.
    await b.distribution.wanted.unsubscribe("NSE:INFY")
    await a.distribution.wanted.clear()
    await a.distribution.sync(feed)
    assert feed.keys == {"NSE:SBIN"}


async def test_a_dead_process_watch_ends_with_its_expiry(
    processes: tuple[Process, Process], prefix: str
) -> None:
    a, b = processes
    await b.distribution.wanted.subscribe("NSE:TCS")
    index, sets = a.distribution.index_key, a.distribution.set_prefix
    assert await wanted_union(a.redis, index, sets) == {"NSE:TCS"}
    assert await a.redis.pttl(b.distribution.wanted.set_key) > 0  # it would expire
    # B dies: its set expires (here: removed as Redis would on expiry).
    await a.redis.delete(b.distribution.wanted.set_key)
    assert await wanted_union(a.redis, index, sets) == set()
    assert not await a.redis.sismember(index, b.bus.origin)  # pruned from the index


class WatchedUpstream(PaperUpstream):
    """A paper upstream that says when something was subscribed."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def subscribe(self, key: str) -> None:
        await super().subscribe(key)
        self.changed.set()


async def test_a_watch_change_nudges_the_holder_at_once(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    feed = WatchedUpstream()
    # A long refresh: only the nudge can make the holder subscribe in time.
    a.distribution.refresh = 60.0
    follower = asyncio.create_task(a.distribution.follow_wants(feed, token=1))
    try:
        await b.distribution.wanted.subscribe("NSE:RELIANCE")
        await asyncio.wait_for(feed.changed.wait(), 5)
        assert feed.keys == {"NSE:RELIANCE"}
        assert a.distribution.holding == 1
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
    assert a.distribution.holding is None


async def test_quotes_from_the_holder_reach_the_other_process(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    sent = [make_quote(), make_quote("INFY", "1501.20", 2)]
    a.distribution.publish(sent[:1], token=3)
    a.distribution.publish(sent[1:], token=3)  # same loop turn: one message
    await b.wait_applied(1)
    assert b.applied == [sent]
    assert a.applied == []  # the holder applies its own quotes itself, never twice
    assert b.distribution.received == 1


async def test_a_stale_holder_is_ignored(processes: tuple[Process, Process]) -> None:
    a, b = processes
    a.distribution.publish([make_quote(ltp="900.00")], token=5)
    await b.wait_applied(1)
    # A holder that lost the lease (token 4) and has not noticed yet: dropped. Its
    # successor (token 5) still gets through after it.
    a.distribution.publish([make_quote(ltp="1.00")], token=4)
    a.distribution.publish([make_quote(ltp="901.00")], token=5)  # a message of its own
    await b.wait_applied(2)
    assert [batch[0].ltp for batch in b.applied] == [Decimal("900.00"), Decimal("901.00")]
    assert b.distribution.dropped == 1


async def test_malformed_messages_are_dropped_not_applied(
    processes: tuple[Process, Process],
) -> None:
    a, b = processes
    a.bus.publish(MARKET, {"k": "q", "feed": "cfg-1", "t": 1, "q": [["SBIN"]]})
    a.bus.publish(MARKET, {"k": "q", "feed": "other-feed", "t": 1, "q": []})  # not ours
    a.distribution.publish([make_quote()], token=1)
    await b.wait_applied(1)
    assert b.applied == [[make_quote()]]
    assert b.distribution.dropped == 1
