"""What the strategy engine needs from the outside world, as protocols.

``MarketFeed`` pushes live ticks and bars to the runner (the runtime's ``MarketHub`` fits
it: shared, reference-counted subscriptions over the simulated market or a broker feed).
``MarketReader`` answers a strategy's pull reads through its context: a quote, recent bars,
an option chain. Tests use the in-memory fakes in ``tests/strategies/fakes.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.strategies.base import OptionQuote, Subscription, TickView

TickCallback = Callable[[TickView], Awaitable[None]]
BarCallback = Callable[[Bar], Awaitable[None]]


class FeedHandle(Protocol):
    """One subscription; ``close`` unsubscribes and is idempotent."""

    async def close(self) -> None: ...


class MarketFeed(Protocol):
    async def subscribe(
        self, subscription: Subscription, on_tick: TickCallback, on_bar: BarCallback
    ) -> FeedHandle:
        """Deliver ticks (when ``subscription.ticks``) and completed bars of
        ``subscription.timeframes`` for one instrument. The callbacks only queue the event
        and return, so they never slow the feed down. Raises ``DomainError`` (or the
        market's error) for an unknown instrument."""
        ...


class MarketReader(Protocol):
    async def quote(self, symbol: str, exchange: Exchange) -> TickView: ...

    async def bars(
        self, symbol: str, exchange: Exchange, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        """The last ``count`` completed bars, oldest first."""
        ...

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]: ...
