"""The event bus: order updates, risk state changes (and, later, market data) for every
process, so a WebSocket client on any API instance sees its own events whichever worker
produced them.

Two implementations behind one interface:

* ``LocalEventBus``: in-process only, what embedded mode uses. ``publish`` calls this
  process's subscribers synchronously, nothing else: embedded mode behaves exactly as before.
* ``RedisEventBus``: the same local delivery, plus a Redis pub/sub channel per topic
  (``<prefix><topic>``) that carries the event to every other process. Each message
  names its publisher (``origin``); a process drops the copy of its own messages that
  Redis echoes back, since its subscribers already had them locally. So every subscriber
  in every process sees each event exactly once.

Publishing never blocks the caller (the order recorder publishes inside its commit path):
the message is encoded and put on a bounded queue that a background task sends to Redis;
when the queue is full the message is dropped and counted
(``trading_backend_events_dropped_total``). Pub/sub is fire-and-forget by nature: a process
that is disconnected while an event is published never sees it. Events tell clients about
state that is durable in the database; a client that must not miss anything re-reads it
(``GET /api/v1/brokers/orders``) after a reconnect.

Messages are JSON ``{"v": 1, "topic", "origin", "payload"}``; payloads are JSON-friendly
dicts with Decimals as strings (``order_to_payload`` for orders), so a payload delivered
locally and one decoded from Redis are equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from trading_backend.domain import (
    Exchange,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)

log = structlog.get_logger(__name__)

ORDERS: Final = "orders"
RISK: Final = "risk"
MARKET: Final = "market"
TOPICS: Final[tuple[str, ...]] = (ORDERS, RISK, MARKET)
DEFAULT_PREFIX: Final = "trading_backend:events:"
MESSAGE_VERSION: Final = 1

EVENTS_PUBLISHED = Counter(
    "trading_backend_events_published_total",
    "Events this process sent to the other processes (through Redis)",
    ["topic"],
)
EVENTS_RECEIVED = Counter(
    "trading_backend_events_received_total",
    "Events from other processes delivered to this process's subscribers",
    ["topic"],
)
EVENTS_DROPPED = Counter(
    "trading_backend_events_dropped_total",
    "Events not sent or not delivered: queue_full (publisher too far behind Redis), "
    "unencodable, malformed (an undecodable message), closed (pending at shutdown)",
    ["topic", "reason"],
)
EVENT_BUS_RECONNECTS = Counter(
    "trading_backend_event_bus_reconnects_total",
    "Redis connection failures of the event bus (each followed by a back-off and a retry)",
    ["role"],
)
EVENT_BUS_PENDING = Gauge("trading_backend_event_bus_pending", "Events waiting to be sent to Redis")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``origin`` is the id of the bus (process) that published it."""

    topic: str
    payload: dict[str, Any]
    origin: str


EventHandler = Callable[[Event], None]


def new_origin() -> str:
    """A process id unique across machines and restarts (host, pid, random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)  # exact; floats would round money
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_message(topic: str, payload: dict[str, Any], origin: str) -> str:
    """The wire form; Decimals become strings, datetimes ISO 8601, enums their values."""
    return json.dumps(
        {"v": MESSAGE_VERSION, "topic": topic, "origin": origin, "payload": payload},
        default=_json_default,
        separators=(",", ":"),
    )


def decode_message(data: bytes | str) -> Event:
    """Parse a wire message; ``ValueError`` when it is not one of ours."""
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"event is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != MESSAGE_VERSION:
        raise ValueError("event is not a version 1 envelope")
    topic, origin, payload = message.get("topic"), message.get("origin"), message.get("payload")
    if not isinstance(topic, str) or not isinstance(origin, str) or not isinstance(payload, dict):
        raise ValueError("event lacks topic, origin or payload")
    return Event(topic, payload, origin)


# -- orders on the wire -------------------------------------------------------------------
def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def order_to_payload(order: Order) -> dict[str, Any]:
    """Every field of the order, JSON-friendly (Decimals as exact strings)."""
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "config_id": order.config_id,
        "symbol": order.symbol,
        "exchange": order.exchange.value,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "product_type": order.product_type.value,
        "quantity": order.quantity,
        "price": _text(order.price),
        "trigger_price": _text(order.trigger_price),
        "validity": order.validity.value,
        "tag": order.tag,
        "client_order_id": order.client_order_id,
        "status": order.status.value,
        "filled_quantity": order.filled_quantity,
        "average_price": str(order.average_price),
        "broker_order_id": order.broker_order_id,
        "error_code": order.error_code,
        "message": order.message,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"money must travel as a string, got {type(value).__name__}")
    return Decimal(value)


def order_from_payload(payload: dict[str, Any]) -> Order:
    """The ``Order`` back from ``order_to_payload``; ``ValueError`` for a malformed one."""
    try:
        average = _decimal(payload["average_price"])
        return Order(
            order_id=str(payload["order_id"]),
            user_id=str(payload["user_id"]),
            config_id=str(payload["config_id"]),
            symbol=str(payload["symbol"]),
            exchange=Exchange(payload["exchange"]),
            side=OrderSide(payload["side"]),
            order_type=OrderType(payload["order_type"]),
            product_type=ProductType(payload["product_type"]),
            quantity=int(payload["quantity"]),
            price=_decimal(payload.get("price")),
            trigger_price=_decimal(payload.get("trigger_price")),
            validity=Validity(payload["validity"]),
            tag=payload.get("tag"),
            client_order_id=payload.get("client_order_id"),
            status=OrderStatus(payload["status"]),
            filled_quantity=int(payload["filled_quantity"]),
            average_price=average if average is not None else Decimal(0),
            broker_order_id=payload.get("broker_order_id"),
            error_code=payload.get("error_code"),
            message=payload.get("message"),
            created_at=datetime.fromisoformat(payload["created_at"]),
            updated_at=datetime.fromisoformat(payload["updated_at"]),
        )
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"malformed order event: {exc!r}") from None


# -- the buses ----------------------------------------------------------------------------
class EventBus(ABC):
    """Publish ``(topic, payload)``; subscribers in this process get it at once, and with a
    distributed bus (``remote``) every other process's subscribers get it too, once."""

    #: Whether events reach other processes (false for the in-process bus).
    remote: bool = False

    def __init__(self, *, origin: str | None = None) -> None:
        self.origin = origin or new_origin()
        self._handlers: dict[str, list[EventHandler]] = {}

    def subscribe(self, topic: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler`` (synchronously; it must not block) for every event on
        ``topic``, local or remote; returns the unsubscribe call. A handler that only wants
        other processes' events compares ``event.origin`` with ``self.origin``."""
        _check_topic(topic)
        self._handlers.setdefault(topic, []).append(handler)

        def unsubscribe() -> None:
            handlers = self._handlers.get(topic, [])
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe

    def subscribers(self, topic: str) -> int:
        return len(self._handlers.get(topic, ()))

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Deliver locally now and, if distributed, queue for the other processes. Never
        blocks and never raises for a delivery problem (those are logged and counted)."""
        _check_topic(topic)
        self._deliver(Event(topic, payload, self.origin))
        self._send(topic, payload)

    def _deliver(self, event: Event) -> None:
        for handler in list(self._handlers.get(event.topic, ())):
            try:
                handler(event)
            except Exception:
                log.exception("event_handler_failed", topic=event.topic)

    @abstractmethod
    def _send(self, topic: str, payload: dict[str, Any]) -> None:
        """Hand the event to the other processes (no-op for the local bus)."""

    @abstractmethod
    async def start(self) -> None:
        """Connect (a distributed bus); returns once subscribed or the first try failed."""

    @abstractmethod
    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything published so far has been sent; false on timeout."""

    @abstractmethod
    async def close(self, timeout: float = 5.0) -> None:
        """Send what is pending (up to ``timeout`` seconds), then disconnect."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """What the health answer shows."""


def _check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise ValueError(f"unknown event topic {topic!r}; topics are {', '.join(TOPICS)}")


class LocalEventBus(EventBus):
    """In-process only: embedded mode, where every producer and consumer share a process."""

    remote = False

    def _send(self, topic: str, payload: dict[str, Any]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def flush(self, timeout: float = 5.0) -> bool:
        return True

    async def close(self, timeout: float = 5.0) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"backend": "local"}


class RedisEventBus(EventBus):
    """Redis pub/sub between processes, with local delivery as ``LocalEventBus``.

    ``prefix`` names the channels (one per topic): processes of one deployment share it,
    separate deployments (or tests) on one Redis use different ones. ``max_pending`` bounds
    the queue of events not yet sent; beyond it events are dropped and counted. A lost
    connection is retried with exponential back-off (``reconnect_initial`` doubling up to
    ``reconnect_max`` seconds, with jitter so a restarted Redis is not stormed). A
    subscription silent for ``health_check_interval`` seconds is pinged, and one silent for
    twice that is taken for dead and reconnected."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        origin: str | None = None,
        max_pending: int = 10_000,
        batch_size: int = 500,
        reconnect_initial: float = 0.2,
        reconnect_max: float = 30.0,
        connect_timeout: float = 5.0,
        health_check_interval: float = 15.0,
        command_timeout: float = 10.0,
    ) -> None:
        super().__init__(origin=origin)
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.url = url
        self.prefix = prefix
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self._connect_timeout = connect_timeout
        self._health_check_interval = health_check_interval
        self._poll = min(1.0, health_check_interval / 2)
        self._command_timeout = command_timeout
        self._channels = {f"{prefix}{topic}": topic for topic in TOPICS}
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=max_pending)
        self._inflight: list[tuple[str, str]] = []  # taken from the outbox, not yet sent
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[Redis] = []
        self._first_attempt = asyncio.Event()
        #: Set while subscribed (Redis confirmed every channel); cleared on a lost connection.
        self.connected = asyncio.Event()
        #: How many times the subscription was (re-)established; tests wait on it.
        self.subscriptions = 0
        self._subscribed = asyncio.Condition()
        self.dropped = 0
        self._closing = False

    # -- names -------------------------------------------------------------------------------
    def channel(self, topic: str) -> str:
        _check_topic(topic)
        return f"{self.prefix}{topic}"

    @property
    def subscriber_name(self) -> str:
        """The Redis CLIENT name of the subscribing connection (operators; tests)."""
        return f"tb-events-sub:{self.origin}"

    @property
    def publisher_name(self) -> str:
        return f"tb-events-pub:{self.origin}"

    def _client(self, name: str, socket_timeout: float | None = None) -> Redis:
        # redis-py's own silent retries are off: this class reconnects, with back-off, and
        # knows (``connected``) whether it is subscribed.
        client = Redis.from_url(
            self.url,
            client_name=name,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self._connect_timeout,
            socket_keepalive=True,
            socket_timeout=socket_timeout,
        )
        self._clients.append(client)
        return client

    # -- publishing --------------------------------------------------------------------------
    def _send(self, topic: str, payload: dict[str, Any]) -> None:
        if self._closing:
            self._drop(topic, "closed")
            return
        try:
            data = encode_message(topic, payload, self.origin)
        except (TypeError, ValueError):
            log.exception("event_unencodable", topic=topic)
            self._drop(topic, "unencodable")
            return
        try:
            self._outbox.put_nowait((topic, data))
        except asyncio.QueueFull:
            self._drop(topic, "queue_full")
            return
        EVENT_BUS_PENDING.inc()

    def _drop(self, topic: str, reason: str) -> None:
        self.dropped += 1
        EVENTS_DROPPED.labels(topic=topic, reason=reason).inc()
        if reason == "queue_full" and self.dropped & (self.dropped - 1) == 0:
            # Logged at 1, 2, 4, 8, ... drops: visible without flooding the log.
            log.warning("events_dropped", topic=topic, reason=reason, dropped=self.dropped)

    async def _run_publisher(self) -> None:
        # A command that gets no answer in ``command_timeout`` seconds counts as a lost
        # connection (the batch is sent again on a new one).
        client = self._client(self.publisher_name, socket_timeout=self._command_timeout)
        delay = self.reconnect_initial
        batch = self._inflight
        while True:
            if not batch:
                batch.append(await self._outbox.get())
                while len(batch) < self.batch_size and not self._outbox.empty():
                    batch.append(self._outbox.get_nowait())
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for topic, data in batch:
                        pipe.publish(self.channel(topic), data)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                EVENT_BUS_RECONNECTS.labels(role="publisher").inc()
                log.warning("event_publish_failed", error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)  # the batch is kept and sent again, in order
                delay = self._next_delay(delay)
                continue
            delay = self.reconnect_initial
            for topic, _ in batch:
                EVENTS_PUBLISHED.labels(topic=topic).inc()
                self._outbox.task_done()
            EVENT_BUS_PENDING.dec(len(batch))
            batch.clear()

    def _next_delay(self, delay: float) -> float:
        return min(delay * 2, self.reconnect_max) * random.uniform(0.8, 1.0)

    # -- receiving -------------------------------------------------------------------------
    async def _run_subscriber(self) -> None:
        client = self._client(self.subscriber_name)
        delay = self.reconnect_initial
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                confirmed = 0
                loop = asyncio.get_running_loop()
                last_heard, pinged = loop.time(), False
                while True:
                    message = await pubsub.get_message(timeout=self._poll)
                    if message is None:
                        # A connection that died without a reset (a NAT or a load balancer
                        # forgetting it) stays silent: ask, and give up when still silent.
                        silent = loop.time() - last_heard
                        if silent > 2 * self._health_check_interval:
                            raise RedisConnectionError(f"no answer from Redis in {silent:.1f}s")
                        if silent > self._health_check_interval and not pinged:
                            await pubsub.ping()
                            pinged = True
                        continue
                    last_heard, pinged = loop.time(), False
                    kind = message.get("type")
                    if kind == "message":
                        self._receive(message["channel"], message["data"])
                    elif kind == "subscribe":
                        confirmed += 1
                        if confirmed == len(self._channels):
                            await self._mark_subscribed()
                            delay = self.reconnect_initial
            except (RedisError, OSError) as exc:
                self.connected.clear()
                self._first_attempt.set()
                EVENT_BUS_RECONNECTS.labels(role="subscriber").inc()
                log.warning("event_subscriber_lost", error=repr(exc), retry_in=round(delay, 2))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = self._next_delay(delay)

    async def _mark_subscribed(self) -> None:
        async with self._subscribed:
            self.subscriptions += 1
            self.connected.set()
            self._first_attempt.set()
            self._subscribed.notify_all()
        log.info("event_bus_subscribed", channels=len(self._channels), times=self.subscriptions)

    async def wait_subscribed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the subscription has been established ``count`` times in all
        (``TimeoutError`` otherwise): after a reconnect, ``count`` is one more."""
        async with self._subscribed:
            await asyncio.wait_for(
                self._subscribed.wait_for(lambda: self.subscriptions >= count), timeout
            )

    def _receive(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        topic = self._channels.get(name, "unknown")
        try:
            event = decode_message(data)
            if event.topic != topic:
                raise ValueError(f"event for {event.topic!r} on the {topic!r} channel")
        except ValueError as exc:
            log.warning("event_malformed", channel=name, error=str(exc))
            EVENTS_DROPPED.labels(topic=topic, reason="malformed").inc()
            return
        if event.origin == self.origin:
            return  # our own, echoed by Redis: delivered locally when published
        EVENTS_RECEIVED.labels(topic=topic).inc()
        self._deliver(event)

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._run_subscriber(), name="event-bus-subscriber"),
            asyncio.create_task(self._run_publisher(), name="event-bus-publisher"),
        ]
        # Subscribed, or the first try failed (then it keeps trying in the background):
        # a Redis that is down at start-up must not keep the process from starting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), self._connect_timeout + 1)
        if not self.connected.is_set():
            log.warning("event_bus_not_connected", retrying=True)

    async def flush(self, timeout: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(self._outbox.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        if not self._tasks:
            return
        self._closing = True
        if not await self.flush(timeout):
            log.warning("event_bus_closed_with_pending", pending=self._outbox.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for topic, _ in self._inflight:
            self._outbox.task_done()
            EVENT_BUS_PENDING.dec()
            self._drop(topic, "closed")
        self._inflight.clear()
        while not self._outbox.empty():
            topic, _ = self._outbox.get_nowait()
            self._outbox.task_done()
            EVENT_BUS_PENDING.dec()
            self._drop(topic, "closed")
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients = []
        self.connected.clear()
        self._first_attempt.clear()

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "connected": self.connected.is_set(),
            "pending": self._outbox.qsize() + len(self._inflight),
            "dropped": self.dropped,
        }


def create_event_bus(mode: str, redis_url: str | None, *, prefix: str = DEFAULT_PREFIX) -> EventBus:
    """``mode``: ``auto`` (Redis when a URL is configured), ``local`` or ``redis``."""
    if mode not in ("auto", "local", "redis"):
        raise ValueError(f"EVENT_BUS must be auto, local or redis, got {mode!r}")
    if mode == "redis" and not redis_url:
        raise ValueError("EVENT_BUS=redis needs REDIS_URL")
    if mode == "local" or not redis_url:
        return LocalEventBus()
    return RedisEventBus(redis_url, prefix=prefix)
