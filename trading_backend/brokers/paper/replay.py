"""Recorded bars replayed as prices: the one definition of a bar's *price path*.

Why it lives here: the backtester (``trading_backend.backtest``) and the live paper market
must turn a bar into the same sequence of prices, or a strategy backtested and then run
live on the same data would not trade the same. The backtester feeds these points to its
paper account; ``PriceReplay`` feeds them to a ``SimulatedMarket`` (``set_price``), where
the paper brokers match on them and the market hub aggregates them back into the bars.

The path of a bar: four price points at ``start + k x (end - start) / 4`` for ``k`` = 0..3:

    open -> the nearer of high and low (the high on a tie) -> the other one -> close

Each point carries a quarter of the bar's volume (the close takes what integer division
leaves), which is what the fill model's participation limit draws on when partial fills
are simulated. Without partial fills every point carries ``UNLIMITED_VOLUME``, so any
order that is marketable on a point fills in full there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from decimal import Decimal

from trading_backend.brokers.paper.market import SimulatedMarket
from trading_backend.domain.bars import Bar

__all__ = [
    "POINTS_PER_BAR",
    "UNLIMITED_VOLUME",
    "ManualClock",
    "PriceReplay",
    "path_prices",
    "path_times",
    "path_volumes",
    "price_points",
]

POINTS_PER_BAR = 4
UNLIMITED_VOLUME = 10**15  # a point volume no order size reaches: partial fills off


def path_prices(bar: Bar) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """``(open, nearer extreme, farther extreme, close)``; the high first on a tie."""
    o, h, low = bar.open, bar.high, bar.low
    if h - o <= o - low:
        return (o, h, low, bar.close)
    return (o, low, h, bar.close)


def path_volumes(volume: int, partial_fills: bool) -> tuple[int, int, int, int]:
    """What each point trades: quarters of the bar's volume, or unlimited."""
    if not partial_fills:
        return (UNLIMITED_VOLUME, UNLIMITED_VOLUME, UNLIMITED_VOLUME, UNLIMITED_VOLUME)
    quarter = volume // POINTS_PER_BAR
    return (quarter, quarter, quarter, volume - 3 * quarter)


def path_times(bar: Bar) -> tuple[datetime, datetime, datetime, datetime]:
    step = (bar.end - bar.start) / POINTS_PER_BAR
    start = bar.start
    return (start, start + step, start + 2 * step, start + 3 * step)


def price_points(bar: Bar, partial_fills: bool) -> list[tuple[datetime, Decimal, int]]:
    """The bar's path as ``(timestamp, price, volume)`` points, oldest first."""
    return list(
        zip(path_times(bar), path_prices(bar), path_volumes(bar.volume, partial_fills), strict=True)
    )


class ManualClock:
    """A clock that only moves when told to: the market's clock during a replay."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


class PriceReplay:
    """Drives a ``SimulatedMarket`` with recorded bars instead of its random walk.

    The market must have been built with ``clock`` (so its quotes carry the replayed
    times). For every point of every bar (bars in the order given, so pass them sorted by
    start), the clock is set to the point's time and ``market.set_price`` publishes the
    price with the point's volume: paper accounts match their resting orders on it and the
    hub aggregates it, completing the previous bar on the first point of the next one.
    ``after_point`` is awaited after each point: tests pass ``runner.drain`` there, so
    whatever the point caused (a completed bar handled, orders placed and filled) has
    happened before the next price, as with a real feed a second later - with no sleeping.
    """

    def __init__(
        self,
        market: SimulatedMarket,
        clock: ManualClock,
        *,
        partial_fills: bool = False,
        after_point: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.market = market
        self.clock = clock
        self.partial_fills = partial_fills
        self.after_point = after_point
        self.points = 0

    async def play(self, bars: Iterable[Bar]) -> int:
        """Publish every point of ``bars``; returns how many points were published."""
        count = 0
        for bar in bars:
            for timestamp, price, volume in price_points(bar, self.partial_fills):
                await self.point(bar, timestamp, price, volume)
                count += 1
        return count

    async def point(self, bar: Bar, timestamp: datetime, price: Decimal, volume: int) -> None:
        self.clock.set(timestamp)
        await self.market.set_price(bar.symbol, bar.exchange, price, volume)
        self.points += 1
        if self.after_point is not None:
            await self.after_point()
