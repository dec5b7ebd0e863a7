"""The event bus (``execution/events.py``): the wire format, in-process delivery, and two
buses on one real Redis (exactly-once delivery, the bounded send queue, reconnection); then
two runtimes sharing one database and one Redis, where an order update recorded by one
reaches a listener on the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.helpers import order, user_with_config
from trading_backend.domain import (
    Exchange,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)
from trading_backend.execution.events import (
    ORDERS,
    RISK,
    Event,
    LocalEventBus,
    RedisEventBus,
    create_event_bus,
    decode_message,
    encode_message,
    order_from_payload,
    order_to_payload,
)
from trading_backend.execution.order_feed import OrderFeed
from trading_backend.risk.engine import Scope
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings

WAIT = 10.0


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def an_order(**changes: Any) -> Order:
    base = Order(
        order_id="ord-1",
        user_id="user-1",
        config_id="cfg-1",
        symbol="TCS",
        exchange=Exchange.NSE,
        side=OrderSide.BUY,
        order_type=OrderType.SL,
        product_type=ProductType.INTRADAY,
        quantity=7,
        price=Decimal("3512.4500"),
        trigger_price=Decimal("3510.05"),
        validity=Validity.IOC,
        tag="t",
        client_order_id="c-1",
        status=OrderStatus.PARTIALLY_FILLED,
        filled_quantity=3,
        # Not representable as a float: a float on the way would show.
        average_price=Decimal("3512.333333333333333333333333"),
        broker_order_id="B-1",
        error_code=None,
        message="partly",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    )
    return replace(base, **changes)


class Inbox:
    """Collects events; ``wait_for`` waits (with a timeout) until a condition holds."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, condition: Callable[[list[Any]], bool]) -> None:
        async def loop() -> None:
            while not condition(self.items):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), WAIT)

    def payloads(self, key: str) -> list[Any]:
        return [item.payload.get(key) for item in self.items]


# -- the wire format ---------------------------------------------------------------------------


def test_an_order_survives_the_wire_exactly() -> None:
    original = an_order()
    payload = order_to_payload(original)
    assert payload["average_price"] == "3512.333333333333333333333333"
    assert payload["price"] == "3512.4500"  # exact text: the scale survives too
    event = decode_message(encode_message(ORDERS, payload, "proc-a"))
    assert (event.topic, event.origin) == (ORDERS, "proc-a")
    assert order_from_payload(event.payload) == original
    assert order_from_payload(event.payload).price == Decimal("3512.4500")
    market = an_order(order_type=OrderType.MARKET, price=None, trigger_price=None)
    assert (
        order_from_payload(
            decode_message(encode_message(ORDERS, order_to_payload(market), "p")).payload
        )
        == market
    )


def test_decimals_anywhere_in_a_payload_travel_as_strings() -> None:
    event = decode_message(
        encode_message(RISK, {"loss": Decimal("1000.10"), "n": [Decimal("1")]}, "p")
    )
    assert event.payload == {"loss": "1000.10", "n": ["1"]}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"v": 2, "topic": "orders", "origin": "p", "payload": {}}',
        b'{"v": 1, "topic": "orders"}',
    ],
)
def test_foreign_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(data)


def test_a_malformed_order_is_refused_not_guessed() -> None:
    payload = order_to_payload(an_order())
    with pytest.raises(ValueError, match="string"):
        order_from_payload({**payload, "price": 3512.45})  # a float price: never accepted
    with pytest.raises(ValueError):
        order_from_payload({**payload, "status": "NOPE"})
    without = dict(payload)
    del without["user_id"]
    with pytest.raises(ValueError):
        order_from_payload(without)


def test_choosing_the_bus() -> None:
    assert isinstance(create_event_bus("auto", None), LocalEventBus)
    assert isinstance(create_event_bus("local", "redis://127.0.0.1:6379/0"), LocalEventBus)
    assert isinstance(create_event_bus("auto", "redis://127.0.0.1:6379/0"), RedisEventBus)
    with pytest.raises(ValueError, match="REDIS_URL"):
        create_event_bus("redis", None)
    with pytest.raises(ValueError, match="EVENT_BUS"):
        create_event_bus("kafka", None)


# -- in process --------------------------------------------------------------------------------


def test_the_local_bus_delivers_synchronously_and_survives_a_failing_handler() -> None:
    bus = LocalEventBus()
    seen = Inbox()

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(RISK, broken)
    unsubscribe = bus.subscribe(RISK, seen)
    bus.publish(RISK, {"scope": "global"})
    assert [(e.topic, e.payload, e.origin) for e in seen.items] == [
        (RISK, {"scope": "global"}, bus.origin)
    ]
    unsubscribe()
    bus.publish(RISK, {"scope": "global"})
    assert len(seen.items) == 1
    with pytest.raises(ValueError, match="unknown event topic"):
        bus.publish("nope", {})


def test_order_feed_on_the_local_bus_is_unchanged() -> None:
    """Embedded mode: listeners get the recorder's own ``Order`` object, per user, once."""
    bus = LocalEventBus()
    feed = OrderFeed(bus)
    mine, theirs, on_bus = Inbox(), Inbox(), Inbox()
    feed.subscribe("user-1", mine)
    feed.subscribe("user-2", theirs)
    bus.subscribe(ORDERS, on_bus)
    update = an_order()
    feed.publish(update)
    assert mine.items == [update] and mine.items[0] is update
    assert theirs.items == []
    assert on_bus.items == []  # nothing needs serialising in one process


# -- two processes on one Redis ----------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"tbtest:{uuid4().hex}:events:"


@pytest.fixture
async def buses(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisEventBus, RedisEventBus]]:
    a = RedisEventBus(redis_url, prefix=prefix, origin=f"a-{uuid4().hex[:6]}")
    b = RedisEventBus(redis_url, prefix=prefix, origin=f"b-{uuid4().hex[:6]}")
    try:
        await a.start()
        await b.start()
        assert a.connected.is_set() and b.connected.is_set()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_each_process_gets_each_event_once(
    buses: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = buses
    at_a, at_b = Inbox(), Inbox()
    a.subscribe(RISK, at_a)
    b.subscribe(RISK, at_b)
    received_before = metric("trading_backend_events_received_total", topic=RISK)

    a.publish(RISK, {"n": 1, "loss": Decimal("12.50")})
    assert at_a.payloads("n") == [1]  # locally, at once
    await at_b.wait_for(lambda items: len(items) == 1)
    assert at_b.items[0].origin == a.origin
    assert at_b.items[0].payload == {"n": 1, "loss": "12.50"}

    # Redis hands out one channel's messages in order: once A hears B's marker, Redis has
    # also handed A its own echo of event 1 (published earlier), and A must have dropped it.
    b.publish(RISK, {"n": 2})
    await at_a.wait_for(lambda items: len(items) == 2)
    a.publish(RISK, {"n": 3})
    await at_b.wait_for(lambda items: len(items) == 3)
    assert at_a.payloads("n") == [1, 2, 3]
    assert at_b.payloads("n") == [1, 2, 3]
    assert [e.origin for e in at_b.items] == [a.origin, b.origin, a.origin]
    # Both buses live in this test process: B took in 1 and 3, A took in 2; no echo counted.
    assert metric("trading_backend_events_received_total", topic=RISK) == received_before + 3


async def test_order_feeds_in_two_processes(buses: tuple[RedisEventBus, RedisEventBus]) -> None:
    """An order recorded in B reaches A's listener for that user, decoded, exactly once;
    B's own listener gets it once, locally; A's listener of another user gets nothing."""
    a, b = buses
    feed_a, feed_b = OrderFeed(a), OrderFeed(b)
    at_a, other_at_a, at_b = Inbox(), Inbox(), Inbox()
    feed_a.subscribe("user-1", at_a)
    feed_a.subscribe("user-2", other_at_a)
    feed_b.subscribe("user-1", at_b)

    update = an_order()
    feed_b.publish(update)
    assert at_b.items == [update]
    await at_a.wait_for(lambda items: len(items) == 1)
    assert at_a.items == [update] and at_a.items[0] is not update

    marker = an_order(order_id="ord-2", user_id="user-2")
    feed_a.publish(marker)  # A's own: delivered locally, its Redis echo dropped
    assert other_at_a.items == [marker]
    later = an_order(status=OrderStatus.FILLED, filled_quantity=7)
    feed_b.publish(later)
    await at_a.wait_for(lambda items: len(items) == 2)
    assert at_a.items == [update, later]
    assert other_at_a.items == [marker]
    assert at_b.items == [update, later]


async def test_a_full_send_queue_drops_and_counts(redis_url: str, prefix: str) -> None:
    """Publishing never waits for Redis: beyond ``max_pending`` unsent events, new ones
    are dropped and counted; the ones queued are still delivered, in order."""
    sender = RedisEventBus(redis_url, prefix=prefix, max_pending=3)
    receiver = RedisEventBus(redis_url, prefix=prefix)
    inbox = Inbox()
    receiver.subscribe(RISK, inbox)
    dropped_before = metric("trading_backend_events_dropped_total", topic=RISK, reason="queue_full")
    try:
        await receiver.start()
        await sender.start()
        for n in range(5):  # no await in between: the sender cannot send any yet
            sender.publish(RISK, {"n": n})
        assert sender.dropped == 2
        assert sender.status()["pending"] == 3
        assert (
            metric("trading_backend_events_dropped_total", topic=RISK, reason="queue_full")
            == dropped_before + 2
        )
        assert await sender.flush(WAIT)
        sender.publish(RISK, {"n": "end"})
        await inbox.wait_for(lambda items: len(items) == 4)
        assert inbox.payloads("n") == [0, 1, 2, "end"]
    finally:
        await sender.close()
        await receiver.close()


async def _kill(redis_url: str, name: str) -> None:
    """Drop one of our connections at the server, as a Redis restart or network cut would."""
    admin: Redis = Redis.from_url(redis_url)
    try:
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == name]
        assert ids, f"no connection named {name}"
        for client_id in ids:
            await admin.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        await admin.aclose()


async def test_reconnects_after_losing_redis(
    buses: tuple[RedisEventBus, RedisEventBus], redis_url: str
) -> None:
    a, b = buses
    at_a, at_b = Inbox(), Inbox()
    a.subscribe(RISK, at_a)
    b.subscribe(RISK, at_b)
    reconnects = metric("trading_backend_event_bus_reconnects_total", role="subscriber")
    assert a.subscriptions == 1

    await _kill(redis_url, a.subscriber_name)
    await a.wait_subscribed(count=2, timeout=WAIT)  # re-subscribed after a back-off
    assert a.connected.is_set()
    assert metric("trading_backend_event_bus_reconnects_total", role="subscriber") >= reconnects + 1
    b.publish(RISK, {"n": 1})
    await at_a.wait_for(lambda items: len(items) == 1)

    # The sending side too: a publish on a dead connection is retried on a new one.
    b.publish(RISK, {"n": 2})
    assert await b.flush(WAIT)
    await _kill(redis_url, b.publisher_name)
    b.publish(RISK, {"n": 3})
    await at_a.wait_for(lambda items: len(items) == 3)
    assert at_a.payloads("n") == [1, 2, 3]


class Blackhole:
    """A TCP proxy to Redis that can silently stop carrying its current connections (as
    a NAT or load balancer that forgets them does: no reset, just silence); connections
    made afterwards work."""

    def __init__(self, redis_url: str) -> None:
        url = urlparse(redis_url)
        self._target = (url.hostname or "127.0.0.1", url.port or 6379)
        self._db = url.path or "/0"
        self._dead: set[asyncio.StreamWriter] = set()
        self._live: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{self._db}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._live | self._dead:
            writer.close()

    def silence(self) -> None:
        self._dead |= self._live
        self._live.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._live |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if dst not in self._dead:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_silently_dead_connection_is_noticed_and_replaced(
    redis_url: str, prefix: str
) -> None:
    sender = RedisEventBus(redis_url, prefix=prefix)
    inbox = Inbox()
    async with Blackhole(redis_url) as proxy:
        receiver = RedisEventBus(
            proxy.url, prefix=prefix, health_check_interval=0.2, reconnect_initial=0.05
        )
        receiver.subscribe(RISK, inbox)
        try:
            await sender.start()
            await receiver.start()
            assert receiver.subscriptions == 1
            proxy.silence()
            # Pinged after 0.2 s of silence, given up after 0.4 s, subscribed again.
            await receiver.wait_subscribed(count=2, timeout=WAIT)
            sender.publish(RISK, {"n": 1})
            await inbox.wait_for(lambda items: len(items) == 1)
        finally:
            await receiver.close()
            await sender.close()


async def test_a_redis_that_is_down_does_not_stop_the_process() -> None:
    bus = RedisEventBus("redis://127.0.0.1:1/0", connect_timeout=2.0, reconnect_initial=0.05)
    inbox = Inbox()
    bus.subscribe(RISK, inbox)
    closed_before = metric("trading_backend_events_dropped_total", topic=RISK, reason="closed")
    await bus.start()  # returns after the first failed try
    assert not bus.connected.is_set()
    bus.publish(RISK, {"n": 1})  # local subscribers still hear it
    assert inbox.payloads("n") == [1]
    assert not await bus.flush(0.05)
    await bus.close(timeout=0.05)
    assert (
        metric("trading_backend_events_dropped_total", topic=RISK, reason="closed")
        == closed_before + 1
    )
    assert bus.status()["pending"] == 0


# -- two runtimes, one database, one Redis -----------------------------------------------------


def cluster_settings(settings: Settings, redis_url: str) -> Settings:
    """The settings of one deployment's processes: the order queue stays embedded (only
    runtime B runs a worker), the events go through Redis under a prefix of this test."""
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "event_bus": "redis",
            "queue_backend": "embedded",
            "queue_prefix": f"tbtest:{uuid4().hex}:",
        }
    )


@pytest.fixture
async def cluster(settings: Settings, redis_url: str) -> AsyncIterator[tuple[Runtime, Runtime]]:
    shared = cluster_settings(settings, redis_url)
    api = Runtime(shared)  # A: serves clients, executes nothing
    worker = Runtime(shared)  # B: the order worker
    try:
        await api.start(worker=False, market=False, health_monitor=False)
        await worker.start(worker=True, market=False, health_monitor=False)
        assert isinstance(api.events, RedisEventBus) and api.events.connected.is_set()
        assert isinstance(worker.events, RedisEventBus) and worker.events.connected.is_set()
        yield api, worker
    finally:
        await worker.stop()
        await api.stop()


async def test_an_order_recorded_in_one_runtime_reaches_a_listener_in_another(
    cluster: tuple[Runtime, Runtime],
) -> None:
    api, worker = cluster
    user_id, config_id = await user_with_config(worker)
    inbox = Inbox()
    api.order_feed.subscribe(user_id, inbox)
    result = await worker.orders.place(user_id, config_id, order(quantity=2), wait=5)
    assert result.order.status is OrderStatus.FILLED
    await inbox.wait_for(lambda items: any(o.status is OrderStatus.FILLED for o in items))
    final = [o for o in inbox.items if o.status is OrderStatus.FILLED]
    assert len(final) == 1  # once, not once per process
    assert final[0].order_id == result.order.order_id
    assert final[0].average_price == result.order.average_price
    assert final[0].filled_quantity == 2
    assert {o.order_id for o in inbox.items} == {result.order.order_id}


async def test_a_risk_state_change_in_one_runtime_is_heard_in_another(
    cluster: tuple[Runtime, Runtime],
) -> None:
    api, worker = cluster
    user_id, config_id = await user_with_config(worker)
    inbox = Inbox()
    api.events.subscribe(RISK, inbox)
    await worker.risk_service.kill_switch(Scope.for_account(config_id), by="admin", reason="test")
    await inbox.wait_for(lambda items: len(items) == 1)
    payload = inbox.items[0].payload
    assert inbox.items[0].origin == worker.events.origin
    assert payload["scope"] == f"account:{config_id}"
    assert (payload["user_id"], payload["account"]) == (user_id, config_id)
    assert (payload["old_state"], payload["new_state"]) == ("ACTIVE", "HALTED")
    assert payload["reason"] == "test" and payload["kill_switch"] is True
