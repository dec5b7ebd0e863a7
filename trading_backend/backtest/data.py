"""Where a backtest's bars come from: memory, CSV files, or the candle cache (which fetches
what it lacks from a broker).

Every source answers one question, ``load(instruments, timeframe, start, end)``: for each
``(symbol, exchange)``, its bars of ``timeframe`` starting in ``[start, end)`` (``None``:
unbounded), oldest first. The engine checks what comes back (order, overlaps, an
instrument without bars) so a source need not.

* ``InMemorySource(bars)``: bars you already hold (tests, notebooks, the benchmark).
* ``CsvSource(paths)``: files in the candle CSV format (``marketdata.candles``), checked
  line by line with the same rules as ``trading-backend data import``; a bad file is a
  ``CandleCsvError`` naming its lines.
* ``CandleSource(service, broker, fetch)``: the ``candles`` table through
  ``CandleService``; with ``fetch`` (a broker's ``get_historical_candles``) missing bars
  are fetched and cached first. ``paper_history(seed)`` is such a fetch for the paper
  broker's synthetic history, needing no broker session.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TextIO

from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.bars import bar_window
from trading_backend.marketdata.candles import CandleService, Fetch, _opened, _parse

__all__ = [
    "BarSource",
    "CandleSource",
    "CsvSource",
    "InMemorySource",
    "Instruments",
    "paper_history",
]

Instruments = Sequence[tuple[str, Exchange]]
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class BarSource(Protocol):
    async def load(
        self,
        instruments: Instruments,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
    ) -> dict[tuple[str, Exchange], list[Bar]]:
        """Bars per instrument, oldest first; an instrument without bars maps to []."""
        ...


def _in_range(bar: Bar, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or bar.start >= start) and (end is None or bar.start < end)


class InMemorySource:
    """Bars held in memory: any mix of instruments and timeframes (filtered and sorted
    per instrument), or a mapping ``{(symbol, exchange): bars}`` of series already split
    by instrument, each of one timeframe and sorted by start. A series is handed over
    without a copy when it lies within the range (a million bars cost nothing); it is
    trusted to be what its key says (the engine still checks the order of starts)."""

    def __init__(self, bars: Iterable[Bar] | Mapping[tuple[str, Exchange], Sequence[Bar]]) -> None:
        self.series: Mapping[tuple[str, Exchange], Sequence[Bar]] | None = None
        self.bars: list[Bar] = []
        if isinstance(bars, Mapping):
            self.series = bars
        else:
            self.bars = list(bars)

    async def load(
        self,
        instruments: Instruments,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
    ) -> dict[tuple[str, Exchange], list[Bar]]:
        if self.series is not None:
            return {i: _clip(self.series.get(i, ()), timeframe, start, end) for i in instruments}
        wanted: dict[tuple[str, Exchange], list[Bar]] = {i: [] for i in instruments}
        for bar in self.bars:
            if bar.timeframe is not timeframe or not _in_range(bar, start, end):
                continue
            series = wanted.get((bar.symbol, bar.exchange))
            if series is not None:
                series.append(bar)
        for series in wanted.values():
            series.sort(key=lambda b: b.start)
        return wanted


def _clip(
    series: Sequence[Bar], timeframe: Timeframe, start: datetime | None, end: datetime | None
) -> list[Bar]:
    if not series:
        return []
    if series[0].timeframe is not timeframe:
        return []
    lo = 0 if start is None else bisect_left(series, start, key=lambda b: b.start)
    hi = len(series) if end is None else bisect_left(series, end, key=lambda b: b.start)
    if lo == 0 and hi == len(series) and isinstance(series, list):
        return series
    return list(series[lo:hi])


class CsvSource:
    """One or more candle CSV files (paths or open text files)."""

    def __init__(self, *sources: str | Path | TextIO) -> None:
        if not sources:
            raise DomainError("CsvSource needs at least one file", ErrorCode.VALIDATION_ERROR)
        self.sources = sources
        self._bars: list[Bar] | None = None

    def read(self) -> list[Bar]:
        """Every bar of every file, validated (``CandleCsvError`` on a bad line)."""
        if self._bars is None:
            now = datetime.now(UTC)
            bars: list[Bar] = []
            for source in self.sources:
                with _opened(source, "r") as handle:
                    rows = _parse(handle, "csv", now, None)
                for row in rows:
                    exchange = Exchange(row["exchange"])
                    timeframe = Timeframe(row["timeframe"])
                    window = bar_window(exchange, timeframe, row["start"])
                    end = window[1] if window is not None else row["start"] + timeframe.duration
                    bars.append(
                        Bar(
                            row["symbol"],
                            exchange,
                            timeframe,
                            row["start"],
                            end,
                            row["open"],
                            row["high"],
                            row["low"],
                            row["close"],
                            row["volume"],
                        )
                    )
            self._bars = bars
        return self._bars

    async def load(
        self,
        instruments: Instruments,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
    ) -> dict[tuple[str, Exchange], list[Bar]]:
        bars = await asyncio.to_thread(self.read)
        return await InMemorySource(bars).load(instruments, timeframe, start, end)


class CandleSource:
    """The candle cache (``CandleService``) of ``broker``; ``fetch`` fills its gaps.

    Without ``start`` the last ``default_span`` before ``end`` (or now) is asked for."""

    def __init__(
        self,
        service: CandleService,
        broker: str = "paper",
        fetch: Fetch | None = None,
        *,
        default_span: timedelta = timedelta(days=365),
    ) -> None:
        self.service = service
        self.broker = broker
        self.fetch = fetch
        self.default_span = default_span

    async def load(
        self,
        instruments: Instruments,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
    ) -> dict[tuple[str, Exchange], list[Bar]]:
        stop = end or datetime.now(UTC)
        begin = start or stop - self.default_span
        result: dict[tuple[str, Exchange], list[Bar]] = {}
        for symbol, exchange in instruments:
            result[(symbol, exchange)] = await self.service.get(
                self.broker, self.fetch, symbol, exchange, timeframe, begin, stop
            )
        return result


def paper_history(seed: int = 42) -> Fetch:
    """A ``Fetch`` serving the paper broker's synthetic history for market seed ``seed``
    (the same bars ``PaperBroker.get_historical_candles`` gives a market of that seed)."""
    from trading_backend.brokers.paper.market import SimulatedMarket

    market = SimulatedMarket(seed=seed)

    async def fetch(
        symbol: str, exchange: str, timeframe: Timeframe, start: datetime, end: datetime
    ) -> list[Bar]:
        try:
            return await asyncio.to_thread(
                market.historical_bars, symbol, exchange, timeframe, start, end
            )
        except KeyError:
            raise DomainError(
                f"the paper broker lists no {exchange}:{symbol}",
                ErrorCode.INSTRUMENT_NOT_FOUND,
                symbol=symbol,
                exchange=str(exchange),
            ) from None
        except ValueError as exc:
            raise DomainError(str(exc), ErrorCode.VALIDATION_ERROR) from None

    return fetch
