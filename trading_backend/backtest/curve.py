"""The equity curve of a run: one point before the first bar, then one per bar (or per
bar time, with several instruments).

Why lazy: with one instrument the curve is fully determined by the bars and by the
account's state after each change (cash, net quantity, cost of the open quantity), which
only fills alter. The replay records that state when it changes, a few thousand times,
instead of computing and storing a Decimal per bar a million times; a value is worked
out when read: ``cash + quantity x close - cost``. The metrics read only the daily
closes; output reads a downsampled curve; only code asking for every point
(``values``) computes them all, once. With several instruments the replay stores the
points as it goes (``EquityCurve.explicit``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal

from trading_backend.domain import Bar

__all__ = ["EquityCurve"]

_ZERO = Decimal(0)


class EquityCurve:
    """Point 0 is the opening equity at the first bar's start; point k (k >= 1) is the
    equity at the end of the k-th bar (or bar time)."""

    def __init__(self, start: datetime, capital: Decimal) -> None:
        self.start = start
        self.capital = capital
        self._times: list[datetime] | None = None
        self._values: list[Decimal] | None = None
        # Lazy (one instrument): the bars, how many were replayed, and the account state
        # from each change on: (first bar index, cash, net quantity, cost).
        self._bars: Sequence[Bar] = ()
        self._count = 0
        self._changes: list[tuple[int, Decimal, int, Decimal]] = []

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def explicit(cls, start: datetime, capital: Decimal) -> EquityCurve:
        curve = cls(start, capital)
        curve._times = [start]
        curve._values = [capital]
        return curve

    def append(self, at: datetime, equity: Decimal) -> None:
        """Explicit curves: the next point."""
        assert self._times is not None and self._values is not None
        self._times.append(at)
        self._values.append(equity)

    def track(self, bars: Sequence[Bar]) -> list[tuple[int, Decimal, int, Decimal]]:
        """Lazy curves: follow ``bars``; returns the list the replay appends changes to."""
        self._bars = bars
        return self._changes

    def replayed(self, count: int) -> None:
        """Lazy curves: ``count`` bars were replayed."""
        self._count = count

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._values is not None and not self._bars:
            return len(self._values)
        return self._count + 1

    @property
    def lazy(self) -> bool:
        return bool(self._bars) or self._values is None

    def time(self, index: int) -> datetime:
        if not self.lazy:
            assert self._times is not None
            return self._times[index]
        return self.start if index == 0 else self._bars[index - 1].end

    def value(self, index: int) -> Decimal:
        if not self.lazy:
            assert self._values is not None
            return self._values[index]
        if index == 0:
            return self.capital
        bar_index = index - 1
        changes = self._changes
        k = bisect_right(changes, bar_index, key=lambda c: c[0]) - 1
        if k < 0:
            return self.capital
        _, cash, quantity, cost = changes[k]
        if not quantity:
            return cash
        return cash + quantity * self._bars[bar_index].close - cost

    @property
    def times(self) -> list[datetime]:
        if self._times is None:
            self._times = [self.start, *(bar.end for bar in self._bars[: self._count])]
        return self._times

    @property
    def values(self) -> list[Decimal]:
        if self._values is None:
            self._values = [self.capital]
            append = self._values.append
            bars = self._bars
            changes = self._changes
            cash, quantity, cost = self.capital, 0, _ZERO
            next_change = 0
            for i in range(self._count):
                while next_change < len(changes) and changes[next_change][0] <= i:
                    _, cash, quantity, cost = changes[next_change]
                    next_change += 1
                append(cash + quantity * bars[i].close - cost if quantity else cash)
        return self._values

    def exposed(self) -> int:
        """Bars (lazy) with a position open at their end."""
        exposed = 0
        changes = self._changes
        for k, (first, _, quantity, _) in enumerate(changes):
            if first >= self._count:
                break
            last = changes[k + 1][0] if k + 1 < len(changes) else self._count
            if quantity:
                exposed += min(last, self._count) - first
        return exposed

    def daily_closes(self, tz: tzinfo) -> list[tuple[date, Decimal, datetime]]:
        """``(local day, last equity of the day, its time)``: one timezone conversion and
        one binary search per day, not per point."""
        out: list[tuple[date, Decimal, datetime]] = []
        n = len(self)
        i = 0
        if self.lazy:
            bars, count = self._bars, self._count
            while i < n:
                day = self.time(i).astimezone(tz).date()
                midnight = datetime.combine(day + timedelta(days=1), time(0), tz)
                # Point k >= 1 is bars[k - 1].end: the first point of a later day is j.
                j = bisect_left(bars, midnight, lo=i, hi=count, key=lambda b: b.end) + 1
                out.append((day, self.value(j - 1), self.time(j - 1)))
                i = j
            return out
        times = self.times
        while i < n:
            day = times[i].astimezone(tz).date()
            midnight = datetime.combine(day + timedelta(days=1), time(0), tz)
            j = bisect_left(times, midnight, lo=i + 1)
            out.append((day, self.value(j - 1), times[j - 1]))
            i = j
        return out
