"""A live market feed shared by every process of a cluster (issue #7).

A broker limits feed connections per account (Angel One: 3 per client code), so with
``MARKET_DATA_SOURCE`` set, ``REDIS_URL`` and the Redis event bus, the account's feed runs
in **one** process of the cluster: the holder of the lease ``feed:<config id>``
(``Runtime._run_singleton``). Everything else flows through Redis:

* **Quotes** go out from the holder on the event bus's ``market`` topic, one message per
  batch (quotes that arrive in the same event-loop turn share one message), as compact
  JSON: ``{"k": "q", "feed", "t": fencing token, "q": [[symbol, exchange, ltp, bid, ask,
  open, high, low, close, volume, tick_volume, change, change_percent, timestamp,
  sequence], ...]}`` with Decimals as exact strings. Every other process decodes them and
  feeds its own ``LiveMarket`` (the risk engine's prices) and ``MarketHub`` (strategies,
  WebSockets), exactly as the holder does with its own feed's quotes. A batch carrying an
  older fencing token than one already seen is dropped: a holder that lost its lease but
  has not noticed yet cannot interleave stale prices with its successor's.
* **Subscriptions**: each process writes the instruments its hub watches into its own
  Redis set ``<prefix>md:<feed>:want:<process>`` (rewritten whole, atomically, on every
  change and every ``refresh`` seconds, expiring after ``ttl`` seconds so a dead
  process's instruments go away by themselves), lists itself in ``<prefix>md:<feed>:procs``,
  and nudges the holder with a ``{"k": "want"}`` message. The holder subscribes the union
  of all those sets at the broker and drops what nobody wants any more, on every nudge and
  every ``refresh`` seconds (so a lost nudge costs at most one period). A new holder
  (after a crash or a stop) starts from the same union: the standby resubscribes
  everything the cluster watches.

Pub/sub is fire-and-forget: a process disconnected from Redis misses ticks meanwhile (its
``LiveMarket`` keeps the last price; the risk engine then values orders at it, and the hub
picks up again with the next tick). Nothing here touches money or orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from trading_backend.brokers.paper.market import Quote
from trading_backend.domain import DomainError, Exchange
from trading_backend.execution.events import MARKET, Event, EventBus

__all__ = [
    "MarketDistribution",
    "WantedKeys",
    "quotes_from_payload",
    "quotes_to_payload",
]

log = structlog.get_logger(__name__)

QUOTES: Final = "q"
WANT: Final = "want"
MAX_QUOTES_PER_MESSAGE: Final = 500
TRANSPORT_ERRORS: Final[tuple[type[BaseException], ...]] = (RedisError, OSError, TimeoutError)

MARKET_BATCHES = Counter(
    "trading_backend_market_batches_total",
    "Quote batches of the shared live feed: published (by the feed holder) and received "
    "(by the other processes)",
    ["direction"],
)
MARKET_TICKS_PUBLISHED = Counter(  # metrics (issue #7)
    "trading_backend_market_ticks_published_total",
    "Quotes the feed holder published to the other processes",
)
MARKET_BATCHES_DROPPED = Counter(
    "trading_backend_market_batches_dropped_total",
    "Quote batches a process did not apply: malformed, stale (an older fencing token than "
    "the current holder's) or backlog (this process too far behind)",
    ["reason"],
)

QuoteSink = Callable[[list[Quote]], Awaitable[None]]

# Removes a process from the index only if its set is gone (expired or emptied): checked
# and removed atomically, so a process rewriting its set at that moment is never lost.
_PRUNE: Final = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""


# -- the wire form ------------------------------------------------------------------------
def _row(quote: Quote) -> list[Any]:
    return [
        quote.symbol,
        quote.exchange.value,
        str(quote.ltp),
        str(quote.bid),
        str(quote.ask),
        str(quote.open),
        str(quote.high),
        str(quote.low),
        str(quote.close),
        quote.volume,
        quote.tick_volume,
        str(quote.change),
        str(quote.change_percent),
        quote.timestamp.isoformat(),
        quote.sequence,
    ]


def quotes_to_payload(feed: str, token: int, quotes: Sequence[Quote]) -> dict[str, Any]:
    """The ``market`` event of one batch; money as exact strings, never floats."""
    return {"k": QUOTES, "feed": feed, "t": token, "q": [_row(q) for q in quotes]}


def _money(value: object) -> Decimal:
    if not isinstance(value, str):
        raise ValueError(f"money must travel as a string, got {type(value).__name__}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return result


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def quotes_from_payload(payload: dict[str, Any]) -> tuple[int, list[Quote]]:
    """``(fencing token, quotes)`` back from ``quotes_to_payload``; ``ValueError`` for
    anything malformed (the batch is then dropped whole)."""
    token, rows = payload.get("t"), payload.get("q")
    if not isinstance(token, int) or isinstance(token, bool) or not isinstance(rows, list):
        raise ValueError("market batch lacks its token or quotes")
    quotes: list[Quote] = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 15:
            raise ValueError("a quote row must have 15 fields")
        symbol, exchange, timestamp = row[0], row[1], row[13]
        if not isinstance(symbol, str) or not isinstance(timestamp, str):
            raise ValueError("a quote row needs a symbol and a timestamp")
        try:
            quotes.append(
                Quote(
                    symbol=symbol,
                    exchange=Exchange(exchange),
                    ltp=_money(row[2]),
                    bid=_money(row[3]),
                    ask=_money(row[4]),
                    open=_money(row[5]),
                    high=_money(row[6]),
                    low=_money(row[7]),
                    close=_money(row[8]),
                    volume=_count(row[9]),
                    tick_volume=_count(row[10]),
                    change=_money(row[11]),
                    change_percent=_money(row[12]),
                    timestamp=datetime.fromisoformat(timestamp),
                    sequence=_count(row[14]),
                )
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed quote row: {exc}") from None
    return token, quotes


# -- what the cluster watches ---------------------------------------------------------------
class KeyedUpstream(Protocol):
    """The holder's broker feed (``AngelOneFeedUpstream``): what it has subscribed."""

    @property
    def keys(self) -> set[str]: ...

    async def subscribe(self, key: str) -> None: ...

    async def unsubscribe(self, key: str) -> None: ...


class WantedKeys:
    """This process's watched instruments, published in Redis for the feed holder.

    It is the ``FeedUpstream``'s inner upstream in a cluster: the hub calls ``subscribe``
    on an instrument's first watcher here and ``unsubscribe`` after the last one. A Redis
    error never fails a subscription (the set is rewritten every ``refresh`` seconds by
    ``run``); it is logged."""

    def __init__(
        self,
        redis: Redis,
        *,
        index_key: str,
        set_key: str,
        origin: str,
        ttl: float,
        nudge: Callable[[], None],
        timeout: float = 5.0,
    ) -> None:
        self.redis = redis
        self.index_key = index_key
        self.set_key = set_key
        self.origin = origin
        self.ttl = ttl
        self.timeout = timeout
        self.keys: set[str] = set()
        self._nudge = nudge
        self._lock = asyncio.Lock()
        #: Completed writes (tests and ``status``).
        self.writes = 0

    async def subscribe(self, key: str) -> None:
        self.keys.add(key)
        await self.write()

    async def unsubscribe(self, key: str) -> None:
        self.keys.discard(key)
        await self.write()

    async def write(self, *, nudge: bool = True) -> bool:
        """Replace the Redis set with ``keys`` (atomically) and renew its expiry; then
        tell the holder. Returns False (logged) when Redis could not be reached."""
        async with self._lock:
            keys = sorted(self.keys)
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.set_key)
                    if keys:
                        pipe.sadd(self.set_key, *keys)
                        pipe.pexpire(self.set_key, int(self.ttl * 1000))
                        pipe.sadd(self.index_key, self.origin)
                    else:
                        pipe.srem(self.index_key, self.origin)
                    async with asyncio.timeout(self.timeout):
                        await pipe.execute()
            except TRANSPORT_ERRORS as exc:
                log.warning("market_wants_write_failed", error=type(exc).__name__)
                return False
            self.writes += 1
        if nudge:
            self._nudge()
        return True

    async def run(self, every: float) -> None:
        """Rewrite the set every ``every`` seconds (before it expires), until cancelled."""
        while True:
            await asyncio.sleep(every)
            if self.keys:
                await self.write(nudge=False)

    async def clear(self) -> None:
        """Withdraw this process's instruments (shutdown): best effort."""
        self.keys.clear()
        await self.write()


async def wanted_union(redis: Redis, index_key: str, set_prefix: str) -> set[str]:
    """Every instrument some live process watches; prunes processes whose set expired."""
    origins = [
        o.decode() if isinstance(o, bytes) else str(o) for o in await redis.smembers(index_key)
    ]
    if not origins:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for origin in origins:
            pipe.smembers(f"{set_prefix}{origin}")
        results = await pipe.execute()
    union: set[str] = set()
    for origin, members in zip(origins, results, strict=True):
        if not members:
            await redis.eval(_PRUNE, 2, index_key, f"{set_prefix}{origin}", origin)
            continue
        union.update(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    return union


# -- the whole ----------------------------------------------------------------------------
class MarketDistribution:
    """One process's part in the shared feed: receiving quotes (every process), publishing
    its watched instruments (every process) and, while it holds the feed lease, publishing
    quotes and following the cluster's subscriptions.

    ``sink`` applies received quotes locally (``LiveMarket.record`` then
    ``MarketHub.publish``). ``refresh``: how often wants are rewritten and the holder
    re-reads them; ``ttl``: how long a silent process's wants survive (a few refreshes).
    ``stale_after``: a batch with an older fencing token is accepted again once the newer
    token has been silent that long (Redis lost the fence counter, e.g. a restart without
    persistence)."""

    def __init__(
        self,
        bus: EventBus,
        redis: Redis,
        *,
        feed: str,
        prefix: str,
        sink: QuoteSink,
        refresh: float = 3.0,
        ttl: float = 10.0,
        stale_after: float | None = None,
        max_backlog: int = 10_000,
    ) -> None:
        if refresh <= 0 or ttl <= refresh:
            raise ValueError("MarketDistribution needs 0 < refresh < ttl")
        self.bus = bus
        self.redis = redis
        self.feed = feed
        self.refresh = refresh
        self.stale_after = stale_after if stale_after is not None else ttl
        self._sink = sink
        base = f"{prefix}md:{feed}:"
        self.index_key = f"{base}procs"
        self.set_prefix = f"{base}want:"
        self.wants_changed = asyncio.Event()
        self.wanted = WantedKeys(
            redis,
            index_key=self.index_key,
            set_key=f"{self.set_prefix}{bus.origin}",
            origin=bus.origin,
            ttl=ttl,
            nudge=self._nudge,
        )
        self._inbox: asyncio.Queue[list[Quote]] = asyncio.Queue(maxsize=max_backlog)
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._token = 0
        self._token_seen = 0.0
        self._outgoing: list[Quote] = []
        self._out_token = 0
        self._flush_scheduled = False
        #: The fencing token while this process holds the feed, else None.
        self.holding: int | None = None
        self.received = 0
        self.dropped = 0
        self.syncs = 0

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._unsubscribe = self.bus.subscribe(MARKET, self._on_event)
        self._tasks = [
            asyncio.create_task(self._apply_received(), name="market-receive"),
            asyncio.create_task(self.wanted.run(self.refresh), name="market-wants"),
        ]

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.wanted.clear()

    def status(self) -> dict[str, Any]:
        return {
            "shared_feed": True,
            "holder": self.holding is not None,
            "watched": len(self.wanted.keys),
            "received_batches": self.received,
            "dropped_batches": self.dropped,
        }

    # -- receiving ---------------------------------------------------------------------------
    def _nudge(self) -> None:
        self.bus.publish(MARKET, {"k": WANT, "feed": self.feed})

    def _on_event(self, event: Event) -> None:
        payload = event.payload
        if payload.get("feed") != self.feed:
            return
        kind = payload.get("k")
        if kind == WANT:
            self.wants_changed.set()
            return
        if kind != QUOTES or event.origin == self.bus.origin:
            return  # our own batches were applied before they were published
        try:
            token, quotes = quotes_from_payload(payload)
        except ValueError as exc:
            log.warning("market_batch_malformed", error=str(exc))
            self._drop("malformed")
            return
        if not self._fresh(token):
            self._drop("stale")
            return
        try:
            self._inbox.put_nowait(quotes)
        except asyncio.QueueFull:
            self._drop("backlog")

    def _fresh(self, token: int) -> bool:
        now = time.monotonic()
        if token >= self._token or now - self._token_seen > self.stale_after:
            self._token, self._token_seen = token, now
            return True
        return False

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        MARKET_BATCHES_DROPPED.labels(reason=reason).inc()
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...: seen, not flooding
            log.warning("market_batches_dropped", reason=reason, dropped=self.dropped)

    async def _apply_received(self) -> None:
        while True:
            quotes = await self._inbox.get()
            try:
                await self._sink(quotes)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("market_batch_apply_failed")
            self.received += 1
            MARKET_BATCHES.labels(direction="received").inc()

    # -- holding the feed -----------------------------------------------------------------------
    def publish(self, quotes: Iterable[Quote], token: int) -> None:
        """The holder's feed produced ``quotes``: send them to the other processes. Quotes
        arriving in the same event-loop turn go out as one message (each message carries
        the token of the holding that produced its quotes)."""
        if self._outgoing and token != self._out_token:
            self._flush()
        self._outgoing.extend(quotes)
        self._out_token = token
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._outgoing = self._outgoing, []
        for start in range(0, len(pending), MAX_QUOTES_PER_MESSAGE):
            chunk = pending[start : start + MAX_QUOTES_PER_MESSAGE]
            self.bus.publish(MARKET, quotes_to_payload(self.feed, self._out_token, chunk))
            MARKET_BATCHES.labels(direction="published").inc()
            MARKET_TICKS_PUBLISHED.inc(len(chunk))

    async def sync(self, upstream: KeyedUpstream) -> None:
        """Make the broker feed's subscriptions the cluster's union. A Redis error leaves
        them as they are (unsubscribing everything over a blip would cost every watcher
        its ticks); an instrument the broker refuses is logged and tried again later."""
        try:
            async with asyncio.timeout(self.refresh * 2):
                wanted = await wanted_union(self.redis, self.index_key, self.set_prefix)
        except TRANSPORT_ERRORS as exc:
            log.warning("market_wants_read_failed", error=type(exc).__name__)
            return
        current = set(upstream.keys)
        for key in sorted(wanted - current):
            try:
                await upstream.subscribe(key)
            except DomainError as exc:
                log.warning("live_feed_subscribe_failed", key=key, error=exc.message)
        for key in sorted(current - wanted):
            try:
                await upstream.unsubscribe(key)
            except DomainError as exc:
                log.warning("live_feed_unsubscribe_failed", key=key, error=exc.message)
        self.syncs += 1

    async def follow_wants(self, upstream: KeyedUpstream, token: int) -> None:
        """The holder's loop: subscribe the cluster's union on every nudge and every
        ``refresh`` seconds, until cancelled (the lease lost, or shutdown)."""
        self.holding = token
        try:
            while True:
                # A cancellation swallowed by something awaited below (a feed connection's
                # stop() suppresses CancelledError while it ends its own task) must still
                # end this loop, or the lease could never be handed over.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                self.wants_changed.clear()  # before reading: a nudge meanwhile re-runs it
                await self.sync(upstream)
                # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` loses a
                # cancellation that arrives as the event is set (a nudge during shutdown),
                # and this loop would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.refresh):
                        await self.wants_changed.wait()
        finally:
            self.holding = None
