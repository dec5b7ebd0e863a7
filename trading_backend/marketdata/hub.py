"""The market-data hub: one upstream subscription per instrument, shared by everyone.

Strategies, WebSocket clients and anything else that watches prices subscribe here, never
to a broker directly. The hub counts references per instrument: the first subscriber makes
it subscribe upstream (the paper market here; a broker's live feed later), the last one to
leave unsubscribes, and in between a thousand users watching NIFTY cost one upstream
subscription. Ticks of subscribed instruments are aggregated into bars once, for every
timeframe anyone asked for, and fanned out.

Delivery is by awaiting each consumer's callback in turn; a consumer that must not slow
the market down (a strategy, a socket) puts the event on its own queue and returns.
A consumer that raises is logged and left subscribed: one bad consumer never stops others.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from trading_backend.brokers.paper.market import Quote, SimulatedMarket
from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.marketdata.bars import BarAggregator
from trading_backend.strategies.base import Subscription, TickView

log = structlog.get_logger(__name__)

TickCallback = Callable[[TickView], Awaitable[None]]
BarCallback = Callable[[Bar], Awaitable[None]]
HISTORY_BARS = 500  # completed bars kept per instrument and timeframe for ``recent_bars``


class Upstream(Protocol):
    """Where prices come from. ``subscribe``/``unsubscribe`` are called once per
    instrument key (``NSE:TCS``) on the first subscriber and after the last one."""

    async def subscribe(self, key: str) -> None: ...

    async def unsubscribe(self, key: str) -> None: ...


class PaperUpstream:
    """The simulated market publishes every instrument each tick; subscribing only
    records interest (a real broker feed would send a subscribe frame here)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def subscribe(self, key: str) -> None:
        self.keys.add(key)

    async def unsubscribe(self, key: str) -> None:
        self.keys.discard(key)


def tick_view(quote: Quote) -> TickView:
    return TickView(
        symbol=quote.symbol,
        exchange=quote.exchange,
        ltp=quote.ltp,
        bid=quote.bid,
        ask=quote.ask,
        volume=quote.volume,
        timestamp=quote.timestamp,
    )


@dataclass(eq=False)
class _Consumer:
    id: int
    key: str
    timeframes: frozenset[Timeframe]
    ticks: bool
    on_tick: TickCallback | None
    on_bar: BarCallback | None


@dataclass
class HubHandle:
    """What ``subscribe`` returns: ``await handle.close()`` to unsubscribe (idempotent)."""

    hub: MarketHub
    consumer_id: int
    closed: bool = field(default=False)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.hub._remove(self.consumer_id)


class MarketHub:
    """``paper_prices`` (default) takes prices from the simulated ``market`` and refuses
    instruments it does not know. An external feed (``marketdata.feeds``) passes False:
    the hub then neither listens to the simulated market (its ticks would mix with the
    broker's) nor checks instruments against it; the upstream's ``subscribe`` refuses
    unknown ones and prices arrive through ``publish``."""

    def __init__(
        self,
        market: SimulatedMarket,
        upstream: Upstream | None = None,
        *,
        paper_prices: bool = True,
    ) -> None:
        self._market = market
        self.upstream: Upstream = upstream or PaperUpstream()
        self._paper_prices = paper_prices
        self._ids = itertools.count(1)
        self._consumers: dict[int, _Consumer] = {}
        self._by_key: dict[str, set[int]] = {}
        self._aggregator = BarAggregator(list(Timeframe))
        self._lock = asyncio.Lock()
        self._attached = False
        # Completed bars of watched instruments, newest last, for ``recent_bars``.
        self._history: dict[tuple[str, Timeframe], deque[Bar]] = {}

    # -- subscriptions -------------------------------------------------------------------
    def refcount(self, key: str) -> int:
        return len(self._by_key.get(key, ()))

    @property
    def instruments(self) -> list[str]:
        return sorted(self._by_key)

    async def subscribe(
        self,
        subscription: Subscription,
        on_tick: TickCallback | None = None,
        on_bar: BarCallback | None = None,
    ) -> HubHandle:
        """Watch one instrument: ticks (when ``subscription.ticks``) and completed bars of
        ``subscription.timeframes``. Unknown instruments are refused by the market."""
        if self._paper_prices:
            self._market.quote(subscription.symbol, subscription.exchange)  # raises if unknown
        consumer = _Consumer(
            id=next(self._ids),
            key=subscription.key,
            timeframes=frozenset(subscription.timeframes),
            ticks=subscription.ticks,
            on_tick=on_tick,
            on_bar=on_bar,
        )
        async with self._lock:
            if not self._attached and self._paper_prices:
                self._market.add_listener(self._on_quotes)
                self._attached = True
            first = consumer.key not in self._by_key
            if first:
                # Before registering: an upstream refusal (unknown instrument, feed quota)
                # must leave no consumer behind.
                await self.upstream.subscribe(consumer.key)
            self._consumers[consumer.id] = consumer
            self._by_key.setdefault(consumer.key, set()).add(consumer.id)
        return HubHandle(self, consumer.id)

    async def _remove(self, consumer_id: int) -> None:
        async with self._lock:
            consumer = self._consumers.pop(consumer_id, None)
            if consumer is None:
                return
            ids = self._by_key.get(consumer.key)
            if ids is not None:
                ids.discard(consumer_id)
                if not ids:
                    del self._by_key[consumer.key]
                    self._aggregator.forget(consumer.key)
                    for timeframe in Timeframe:
                        self._history.pop((consumer.key, timeframe), None)
                    await self.upstream.unsubscribe(consumer.key)

    async def close(self) -> None:
        for consumer_id in list(self._consumers):
            await self._remove(consumer_id)
        if self._attached:
            self._market.remove_listener(self._on_quotes)
            self._attached = False

    # -- fan-out -------------------------------------------------------------------------
    async def publish(self, quotes: Iterable[Quote]) -> None:
        """Feed ticks from an external source (a broker's live feed): aggregated into bars
        and fanned out exactly like the simulated market's. Quotes of instruments nobody
        watches are dropped."""
        await self._on_quotes(quotes)

    def current_bar(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe
    ) -> Bar | None:
        exchange = Exchange(exchange)
        return self._aggregator.current(f"{exchange.value}:{symbol}", timeframe)

    def recent_bars(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe, count: int
    ) -> list[Bar]:
        """The last ``count`` completed bars the hub aggregated (oldest first). The hub
        only aggregates instruments somebody watches, and keeps ``HISTORY_BARS`` per
        timeframe; older history comes from the candle store."""
        if count <= 0:
            return []
        bars = self._history.get((f"{Exchange(exchange).value}:{symbol}", timeframe))
        return list(bars)[-count:] if bars else []

    def _remember(self, bars: list[Bar]) -> None:
        for bar in bars:
            slot = (bar.key, bar.timeframe)
            history = self._history.get(slot)
            if history is None:
                history = self._history[slot] = deque(maxlen=HISTORY_BARS)
            history.append(bar)

    async def _on_quotes(self, quotes: Iterable[Quote]) -> None:
        if not self._by_key:
            return
        latest: datetime | None = None
        for quote in quotes:
            ids = self._by_key.get(quote.key)
            if not ids:
                continue
            latest = quote.timestamp
            bars = self._aggregator.on_tick(
                quote.symbol, quote.exchange, quote.ltp, quote.tick_volume, quote.timestamp
            )
            if bars:
                self._remember(bars)
            view: TickView | None = None
            for consumer_id in list(ids):
                consumer = self._consumers.get(consumer_id)
                if consumer is None:
                    continue
                if consumer.ticks and consumer.on_tick is not None:
                    view = view or tick_view(quote)
                    await self._deliver(consumer, consumer.on_tick, view)
                if bars:
                    await self._deliver_bars(consumer, bars)
        if latest is not None:
            # Bars whose window ended without a tick after it (quiet instruments).
            flushed = self._aggregator.flush(latest)
            if flushed:
                self._remember(flushed)
                await self._fan_out(flushed)

    async def _fan_out(self, bars: list[Bar]) -> None:
        for bar in bars:
            for consumer_id in list(self._by_key.get(bar.key, ())):
                consumer = self._consumers.get(consumer_id)
                if consumer is not None:
                    await self._deliver_bars(consumer, [bar])

    async def _deliver_bars(self, consumer: _Consumer, bars: list[Bar]) -> None:
        if consumer.on_bar is None:
            return
        for bar in bars:
            if bar.timeframe in consumer.timeframes:
                await self._deliver(consumer, consumer.on_bar, bar)

    async def _deliver(
        self, consumer: _Consumer, callback: Callable[[Any], Awaitable[None]], event: object
    ) -> None:
        try:
            await callback(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("market_consumer_failed", consumer=consumer.id, key=consumer.key)
