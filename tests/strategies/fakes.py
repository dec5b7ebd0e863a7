"""In-memory market data for strategy tests: a feed you push ticks and bars into, and a
reader with settable quotes, bar history and option chains. Both satisfy the protocols in
``trading_backend.strategies.ports``; nothing here sleeps or runs in the background.

    feed = FakeFeed()
    await feed.push_bar(make_bar("TCS", close=101))      # every matching subscriber's on_bar
    await feed.push_tick(make_tick("TCS", ltp=101))      # subscribers with ticks=True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.domain.money import to_decimal
from trading_backend.strategies.base import OptionQuote, Subscription, TickView
from trading_backend.strategies.ports import BarCallback, TickCallback

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # 09:30 IST


def make_bar(
    symbol: str = "TCS",
    close: Decimal | float | int | str = 100,
    *,
    exchange: Exchange | str = Exchange.NSE,
    timeframe: Timeframe = Timeframe.M1,
    index: int = 0,
    start: datetime | None = None,
    open: Decimal | float | int | str | None = None,
    high: Decimal | float | int | str | None = None,
    low: Decimal | float | int | str | None = None,
    volume: int = 1000,
) -> Bar:
    """A completed bar; ``index`` places it ``index`` timeframes after ``T0``."""
    close_d = to_decimal(close, "close")
    open_d = to_decimal(open, "open") if open is not None else close_d
    high_d = to_decimal(high, "high") if high is not None else max(open_d, close_d)
    low_d = to_decimal(low, "low") if low is not None else min(open_d, close_d)
    begin = start or T0 + timeframe.duration * index
    return Bar(
        symbol=symbol,
        exchange=Exchange(exchange),
        timeframe=timeframe,
        start=begin,
        end=begin + timeframe.duration,
        open=open_d,
        high=high_d,
        low=low_d,
        close=close_d,
        volume=volume,
    )


def make_tick(
    symbol: str = "TCS",
    ltp: Decimal | float | int | str = 100,
    *,
    exchange: Exchange | str = Exchange.NSE,
    spread: Decimal | float | int | str = "0.10",
    volume: int = 100,
    timestamp: datetime | None = None,
) -> TickView:
    price = to_decimal(ltp, "ltp")
    half = to_decimal(spread, "spread") / 2
    return TickView(
        symbol=symbol,
        exchange=Exchange(exchange),
        ltp=price,
        bid=price - half,
        ask=price + half,
        volume=volume,
        timestamp=timestamp or T0,
    )


@dataclass(eq=False)
class FakeHandle:
    feed: FakeFeed
    subscription: Subscription
    on_tick: TickCallback
    on_bar: BarCallback
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.handles.remove(self)


@dataclass
class FakeFeed:
    """``MarketFeed`` in memory. ``known``: the instrument keys (``NSE:TCS``) it accepts;
    empty accepts everything."""

    known: set[str] = field(default_factory=set)
    handles: list[FakeHandle] = field(default_factory=list)
    subscribe_calls: int = 0

    async def subscribe(
        self, subscription: Subscription, on_tick: TickCallback, on_bar: BarCallback
    ) -> FakeHandle:
        self.subscribe_calls += 1
        if self.known and subscription.key not in self.known:
            raise DomainError(
                f"unknown instrument {subscription.key}", ErrorCode.INSTRUMENT_NOT_FOUND
            )
        handle = FakeHandle(self, subscription, on_tick, on_bar)
        self.handles.append(handle)
        return handle

    def subscribers(self, key: str) -> int:
        return sum(1 for h in self.handles if h.subscription.key == key)

    async def push_tick(self, tick: TickView) -> int:
        """Deliver to every open subscription of the tick's instrument that wants ticks;
        returns how many received it."""
        delivered = 0
        for handle in list(self.handles):
            if handle.subscription.key == tick.key and handle.subscription.ticks:
                await handle.on_tick(tick)
                delivered += 1
        return delivered

    async def push_bar(self, bar: Bar) -> int:
        """Deliver to every open subscription of the bar's instrument and timeframe."""
        delivered = 0
        for handle in list(self.handles):
            sub = handle.subscription
            if sub.key == bar.key and bar.timeframe in sub.timeframes:
                await handle.on_bar(bar)
                delivered += 1
        return delivered


class FakeReader:
    """``MarketReader`` in memory. Quotes come from ``set_quote``, else from ``market``
    (a ``SimulatedMarket``, e.g. ``runtime.market``) when given; bars from ``add_bars``
    (plus every bar passed to ``record``); option chains from ``set_chain``."""

    def __init__(self, market: SimulatedMarket | None = None) -> None:
        self.market = market
        self.quotes: dict[str, TickView] = {}
        self.history: dict[tuple[str, Timeframe], list[Bar]] = {}
        self.chains: dict[str, list[OptionQuote]] = {}

    def set_quote(self, tick: TickView) -> None:
        self.quotes[tick.key] = tick

    def add_bars(self, bars: Sequence[Bar]) -> None:
        for bar in bars:
            self.history.setdefault((bar.key, bar.timeframe), []).append(bar)

    def set_chain(self, underlying: str, chain: Sequence[OptionQuote]) -> None:
        self.chains[underlying.upper()] = list(chain)

    async def quote(self, symbol: str, exchange: Exchange) -> TickView:
        key = f"{Exchange(exchange).value}:{symbol}"
        if key in self.quotes:
            return self.quotes[key]
        if self.market is not None:
            q = self.market.quote(symbol, exchange)
            return TickView(q.symbol, q.exchange, q.ltp, q.bid, q.ask, q.volume, q.timestamp)
        raise DomainError(f"no quote for {key}", ErrorCode.INSTRUMENT_NOT_FOUND)

    async def bars(
        self, symbol: str, exchange: Exchange, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        key = f"{Exchange(exchange).value}:{symbol}"
        bars = self.history.get((key, Timeframe(timeframe)), [])
        return list(bars[-count:]) if count > 0 else []

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]:
        chain = self.chains.get(underlying.upper(), [])
        if expiry is None:
            if not chain:
                return []
            expiry = min(q.expiry for q in chain)
        return [q for q in chain if q.expiry == expiry]
