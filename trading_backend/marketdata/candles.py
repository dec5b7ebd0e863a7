"""Historical candles: fetched from a broker once, cached in the ``candles`` table, and
importable and exportable as CSV.

Why a cache: broker history APIs are slow and rate-limited, and a backtest or a chart asks
for the same bars again and again. The table is keyed by ``(broker, exchange, symbol,
timeframe, start)``, so the paper broker's synthetic bars and a real broker's bars for the
same symbol never mix.

Coverage rule: a range ``[start, end)`` is covered when every bar window of the timeframe
that starts in it and has ended by now (the session-aligned windows of
``marketdata.bars.windows``) has a row. Otherwise the broker is asked once per chunk of
at most ``fetch_chunk`` windows for the span from the first missing window to the last
(chunks without a missing window are skipped), and what it returns is stored: rows that
are already there are left alone. Holidays are not modelled by ``marketdata.bars``, so a
range over an exchange holiday never counts as covered for a real broker, and asking for
it fetches that span again (the answer is still right, just not served from the cache).

Only complete bars are stored or returned: a bar whose window ends after now is never
cached (its prices could still change), and ``get`` does not return the forming bar
(live bars come from ``BarAggregator``). Bars the broker returns that are not at a window
start of the requested range are dropped.

CSV: a header naming ``symbol,exchange,timeframe,start,open,high,low,close,volume`` (in any
order), one bar per line, ``start`` as ISO-8601 with a UTC offset (exported in UTC), prices
as plain decimals. An import checks every line first and writes nothing if any line is
bad (``CandleCsvError`` names the lines); re-importing a file changes nothing, and a line
for a bar that is already stored replaces it (the file is the user's explicit intent).
"""

from __future__ import annotations

import csv
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any, TextIO, cast

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.bars import bar_window, windows
from trading_backend.storage.models import CandleRow

__all__ = [
    "CSV_COLUMNS",
    "CandleCsvError",
    "CandleService",
    "Fetch",
    "Progress",
]

CSV_COLUMNS = ("symbol", "exchange", "timeframe", "start", "open", "high", "low", "close", "volume")

Fetch = Callable[[str, str, Timeframe, datetime, datetime], Awaitable[list[Bar]]]
"""``(symbol, exchange, timeframe, start, end) -> bars``: ``Broker.get_historical_candles``."""

Progress = Callable[[str, int, int | None], None]
"""``(phase, done, total)``; ``total`` is None while unknown. Phases: ``fetching`` (windows),
``validating`` and ``writing`` (CSV lines), ``exporting`` (rows)."""

MAX_QUERY_BARS = 500_000  # per ``get``: about five years of NSE 1-minute bars
DEFAULT_FETCH_CHUNK = 10_000  # windows per broker call (the paper broker allows 20,000)
DEFAULT_BATCH = 1_000  # rows per INSERT
MAX_REPORTED_ERRORS = 20
_MAX_SCALE = 10  # Money columns are NUMERIC(28, 10)
_MAX_DIGITS_BEFORE_POINT = 18
_SMALLEST = Decimal(1).scaleb(-_MAX_SCALE)
_KEY_COLUMNS = ("broker", "exchange", "symbol", "timeframe", "start")
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
_VALIDATION_REPORT_EVERY = 5_000


class CandleCsvError(DomainError):
    """A CSV file with bad lines; nothing was imported. ``errors`` holds ``(line, message)``
    for the first ``MAX_REPORTED_ERRORS`` of ``error_count`` bad lines."""

    code = ErrorCode.VALIDATION_ERROR

    def __init__(self, errors: list[tuple[int, str]], error_count: int) -> None:
        shown = "; ".join(f"line {line}: {message}" for line, message in errors)
        more = error_count - len(errors)
        suffix = f" (and {more} more bad lines)" if more > 0 else ""
        super().__init__(
            f"invalid candle CSV, nothing imported: {shown}{suffix}",
            errors=[{"line": line, "message": message} for line, message in errors],
            error_count=error_count,
        )
        self.errors = errors
        self.error_count = error_count


@dataclass(frozen=True, slots=True)
class _Key:
    broker: str
    exchange: Exchange
    symbol: str
    timeframe: Timeframe


def _plain(value: Decimal) -> Decimal:
    """Drop trailing zeros (PostgreSQL returns scale 10) without going to exponent form."""
    value = value.normalize()
    exponent = value.as_tuple().exponent
    return value.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else value


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _invalid(message: str, **details: object) -> DomainError:
    return DomainError(message, ErrorCode.VALIDATION_ERROR, **details)


def _exchange(value: Exchange | str) -> Exchange:
    try:
        return Exchange(str(value).strip().upper())
    except ValueError:
        raise _invalid(f"unknown exchange {value!r}", exchange=str(value)) from None


def _timeframe(value: Timeframe | str) -> Timeframe:
    try:
        return Timeframe(str(value).strip())
    except ValueError:
        known = ", ".join(t.value for t in Timeframe)
        raise _invalid(f"unknown timeframe {value!r} (one of {known})") from None


def _broker(value: str) -> str:
    name = str(value).strip().lower()
    if not name or len(name) > 32:
        raise _invalid(f"broker name must be 1 to 32 characters, got {value!r}")
    return name


def _symbol(value: str) -> str:
    symbol = str(value).strip().upper()
    if not symbol or len(symbol) > 64:
        raise _invalid(f"symbol must be 1 to 64 characters, got {value!r}")
    return symbol


def _row_values(key: _Key, bar: Bar) -> dict[str, Any]:
    return {
        "broker": key.broker,
        "exchange": key.exchange.value,
        "symbol": key.symbol,
        "timeframe": key.timeframe.value,
        "start": bar.start,
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume,
    }


def _clean(key: _Key, bar: Bar) -> Bar:
    """A fetched bar as the cache returns it: our key, UTC times, plain Decimals."""
    return Bar(
        key.symbol,
        key.exchange,
        key.timeframe,
        _utc(bar.start),
        _utc(bar.end),
        _plain(bar.open),
        _plain(bar.high),
        _plain(bar.low),
        _plain(bar.close),
        int(bar.volume),
    )


class CandleService:
    """The candle cache over the ``candles`` table; see the module docstring for the rules.

    ``clock`` decides which bars are complete (injectable for tests). Broker calls go
    through the ``fetch`` callable given to ``get`` so that one service serves every
    broker and every session.
    """

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] | None = None,
        fetch_chunk: int = DEFAULT_FETCH_CHUNK,
        batch_size: int = DEFAULT_BATCH,
        max_query_bars: int = MAX_QUERY_BARS,
    ) -> None:
        if fetch_chunk < 1 or batch_size < 1 or max_query_bars < 1:
            raise ValueError("fetch_chunk, batch_size and max_query_bars must be positive")
        self.db = db
        self._clock = clock or (lambda: datetime.now(UTC))
        self.fetch_chunk = fetch_chunk
        self.batch_size = batch_size
        self.max_query_bars = max_query_bars

    def _now(self) -> datetime:
        return _utc(self._clock())

    # -- reading and caching ---------------------------------------------------------------
    async def get(
        self,
        broker_name: str,
        fetch: Fetch | None,
        symbol: str,
        exchange: Exchange | str,
        timeframe: Timeframe | str,
        start: datetime,
        end: datetime,
        *,
        progress: Progress | None = None,
    ) -> list[Bar]:
        """The complete bars starting in ``[start, end)``, oldest first.

        Served from the table when the range is covered; otherwise the missing span is
        fetched with ``fetch`` (``None``: return only what is cached), stored, and merged
        in. Raises ``DomainError(VALIDATION_ERROR)`` for a bad exchange, timeframe or
        range, and whatever ``fetch`` raises (nothing is stored from a failed chunk, the
        chunks before it stay stored).
        """
        key, start, end = self._query(broker_name, symbol, exchange, timeframe, start, end)
        now = self._now()
        expected = self._expected(key, start, end, now)
        cached = await self._load(key, start, end, expected)
        if fetch is None or len(cached) == len(expected):
            return cached
        present = {bar.start for bar in cached}
        found: dict[datetime, Bar] = {}
        chunks = list(self._chunks(expected, present))
        done = 0
        for chunk in chunks:
            if progress is not None:
                progress("fetching", done, len(expected))
            fetched = await fetch(
                key.symbol, key.exchange.value, key.timeframe, chunk[0][0], chunk[-1][1]
            )
            ends = dict(chunk)
            new: dict[datetime, Bar] = {}
            for bar in fetched:
                begin = _utc(bar.start)
                stored = begin in present or begin in found
                if not stored and ends.get(begin) == _utc(bar.end):
                    new[begin] = _clean(key, bar)
            await self._store(key, list(new.values()), overwrite=False)
            found.update(new)
            done += len(chunk)
        if progress is not None:
            progress("fetching", len(expected), len(expected))
        return sorted([*cached, *found.values()], key=lambda bar: bar.start)

    async def cached(
        self,
        broker_name: str,
        symbol: str,
        exchange: Exchange | str,
        timeframe: Timeframe | str,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        """Only what the table holds for ``[start, end)``, oldest first (never fetches)."""
        return await self.get(broker_name, None, symbol, exchange, timeframe, start, end)

    def _query(
        self,
        broker_name: str,
        symbol: str,
        exchange: Exchange | str,
        timeframe: Timeframe | str,
        start: datetime,
        end: datetime,
    ) -> tuple[_Key, datetime, datetime]:
        key = _Key(
            _broker(broker_name), _exchange(exchange), _symbol(symbol), _timeframe(timeframe)
        )
        start, end = _utc(start), _utc(end)
        if start >= end:
            raise _invalid(f"start {start.isoformat()} must be before end {end.isoformat()}")
        return key, start, end

    def _expected(
        self, key: _Key, start: datetime, end: datetime, now: datetime
    ) -> list[tuple[datetime, datetime]]:
        """The complete windows starting in ``[start, end)``: what a covered range holds."""
        horizon = min(end, now)
        if start >= horizon:
            return []
        complete = (w for w in windows(key.exchange, key.timeframe, start, horizon) if w[1] <= now)
        expected = list(islice(complete, self.max_query_bars + 1))
        if len(expected) > self.max_query_bars:
            raise _invalid(
                f"at most {self.max_query_bars} {key.timeframe.value} bars per query; "
                "ask for a shorter range or a larger timeframe"
            )
        return expected

    def _chunks(
        self, expected: list[tuple[datetime, datetime]], present: set[datetime]
    ) -> Iterator[list[tuple[datetime, datetime]]]:
        """Chunks of the span from the first to the last missing window that miss something."""
        missing = [i for i, (begin, _) in enumerate(expected) if begin not in present]
        if not missing:
            return
        span = expected[missing[0] : missing[-1] + 1]
        for offset in range(0, len(span), self.fetch_chunk):
            chunk = span[offset : offset + self.fetch_chunk]
            if any(begin not in present for begin, _ in chunk):
                yield chunk

    async def _load(
        self,
        key: _Key,
        start: datetime,
        end: datetime,
        expected: list[tuple[datetime, datetime]],
    ) -> list[Bar]:
        ends = dict(expected)
        statement = (
            select(
                CandleRow.start,
                CandleRow.open,
                CandleRow.high,
                CandleRow.low,
                CandleRow.close,
                CandleRow.volume,
            )
            .where(
                CandleRow.broker == key.broker,
                CandleRow.exchange == key.exchange.value,
                CandleRow.symbol == key.symbol,
                CandleRow.timeframe == key.timeframe.value,
                CandleRow.start >= start,
                CandleRow.start < end,
            )
            .order_by(CandleRow.start)
        )
        bars: list[Bar] = []
        async with self.db() as session:
            for begin, open_, high, low, close, volume in await session.execute(statement):
                finish = ends.get(begin)
                if finish is None:
                    continue  # not complete by now (the clock went back) or not aligned
                bars.append(
                    Bar(
                        key.symbol,
                        key.exchange,
                        key.timeframe,
                        begin,
                        finish,
                        _plain(open_),
                        _plain(high),
                        _plain(low),
                        _plain(close),
                        int(volume),
                    )
                )
        return bars

    async def _store(self, key: _Key, bars: Sequence[Bar], *, overwrite: bool) -> None:
        if not bars:
            return
        async with self.db() as session, session.begin():
            for offset in range(0, len(bars), self.batch_size):
                rows = [_row_values(key, bar) for bar in bars[offset : offset + self.batch_size]]
                await _upsert(session, rows, overwrite=overwrite)

    # -- CSV -------------------------------------------------------------------------------
    async def import_csv(
        self,
        source: str | Path | TextIO,
        broker: str = "paper",
        *,
        progress: Progress | None = None,
    ) -> int:
        """Import a CSV file (a path or an open text file) into the cache of ``broker``.

        Every line is validated before anything is written, and all rows are written in
        one transaction: a bad line or a failed write leaves the table as it was.
        Returns the number of bars imported. Raises ``CandleCsvError``.
        """
        name = _broker(broker)
        with _opened(source, "r") as handle:
            rows = _parse(handle, name, self._now(), progress)
        total = len(rows)
        async with self.db() as session, session.begin():
            for offset in range(0, total, self.batch_size):
                if progress is not None:
                    progress("writing", offset, total)
                await _upsert(session, rows[offset : offset + self.batch_size], overwrite=True)
        if progress is not None:
            progress("writing", total, total)
        return total

    async def export_csv(
        self,
        target: str | Path | TextIO,
        broker: str,
        symbol: str,
        exchange: Exchange | str,
        timeframe: Timeframe | str,
        start: datetime,
        end: datetime,
        *,
        fetch: Fetch | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the bars of ``[start, end)`` as CSV (a path or an open text file).

        With ``fetch`` missing bars are fetched and cached first (``get``); without it only
        cached bars are written. Returns the number of bars written.
        """
        bars = await self.get(
            broker, fetch, symbol, exchange, timeframe, start, end, progress=progress
        )
        with _opened(target, "w") as handle:
            write_csv(handle, bars, progress=progress)
        return len(bars)


def write_csv(handle: TextIO, bars: Iterable[Bar], *, progress: Progress | None = None) -> int:
    """Write ``bars`` in the import format; returns the number of rows."""
    items = list(bars)
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for n, bar in enumerate(items):
        if progress is not None and n % _VALIDATION_REPORT_EVERY == 0:
            progress("exporting", n, len(items))
        writer.writerow(
            (
                bar.symbol,
                bar.exchange.value,
                bar.timeframe.value,
                _utc(bar.start).isoformat(),
                format(_plain(bar.open), "f"),
                format(_plain(bar.high), "f"),
                format(_plain(bar.low), "f"),
                format(_plain(bar.close), "f"),
                str(int(bar.volume)),
            )
        )
    if progress is not None:
        progress("exporting", len(items), len(items))
    return len(items)


@contextmanager
def _opened(source: str | Path | TextIO, mode: str) -> Iterator[TextIO]:
    if isinstance(source, str | Path):
        # utf-8-sig: spreadsheet programs put a byte-order mark in front of the header.
        encoding = "utf-8-sig" if mode == "r" else "utf-8"
        try:
            handle = cast(TextIO, open(source, mode, newline="", encoding=encoding))
        except OSError as exc:
            raise _invalid(f"cannot open {str(source)!r}: {exc.strerror or exc}") from None
        with handle:
            yield handle
    else:
        yield source


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]], *, overwrite: bool) -> None:
    """INSERT ... ON CONFLICT on the bar's key: idempotent on SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(CandleRow)
    if overwrite:
        statement = statement.on_conflict_do_update(
            index_elements=list(_KEY_COLUMNS),
            set_={column: statement.excluded[column] for column in _VALUE_COLUMNS},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(_KEY_COLUMNS))
    await session.execute(statement, rows)


# -- CSV parsing ---------------------------------------------------------------------------
class _LineError(ValueError):
    pass


def _price(field: str, text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise _LineError(f"{field} {text!r} is not a number") from None
    if not value.is_finite():
        raise _LineError(f"{field} {text!r} is not a finite number")
    if value <= 0:
        raise _LineError(f"{field} {text!r} must be positive")
    if value.adjusted() >= _MAX_DIGITS_BEFORE_POINT:
        raise _LineError(f"{field} {text!r} is too large")
    if value != value.quantize(_SMALLEST):
        raise _LineError(f"{field} {text!r} has more than {_MAX_SCALE} decimal places")
    return value


def _volume(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise _LineError(f"volume {text!r} is not a whole number") from None
    if value < 0:
        raise _LineError(f"volume {text!r} must not be negative")
    return value


def _start(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _LineError(f"start {text!r} is not an ISO-8601 timestamp") from None
    if value.tzinfo is None:
        raise _LineError(
            f"start {text!r} has no UTC offset (write it like 2024-01-01T03:45:00+00:00)"
        )
    return value.astimezone(UTC)


class _Windows:
    """``bar_window`` answers, memoised per (exchange, timeframe, start): a CSV repeats
    each window once per symbol."""

    def __init__(self) -> None:
        self._cache: dict[
            tuple[Exchange, Timeframe, datetime], tuple[datetime, datetime] | None
        ] = {}

    def get(
        self, exchange: Exchange, timeframe: Timeframe, start: datetime
    ) -> tuple[datetime, datetime] | None:
        key = (exchange, timeframe, start)
        if key not in self._cache:
            self._cache[key] = bar_window(exchange, timeframe, start)
        return self._cache[key]


def _row(fields: dict[str, str], broker: str, now: datetime, windows_: _Windows) -> dict[str, Any]:
    symbol = fields["symbol"].strip().upper()
    if not symbol or len(symbol) > 64:
        raise _LineError(f"symbol {fields['symbol']!r} must be 1 to 64 characters")
    try:
        exchange = Exchange(fields["exchange"].strip().upper())
    except ValueError:
        raise _LineError(f"unknown exchange {fields['exchange']!r}") from None
    try:
        timeframe = Timeframe(fields["timeframe"].strip())
    except ValueError:
        known = ", ".join(t.value for t in Timeframe)
        raise _LineError(f"unknown timeframe {fields['timeframe']!r} (one of {known})") from None
    start = _start(fields["start"])
    open_, high, low, close = (
        _price(name, fields[name]) for name in ("open", "high", "low", "close")
    )
    volume = _volume(fields["volume"])
    if high < low:
        raise _LineError(f"high {high} is below low {low}")
    if not low <= open_ <= high:
        raise _LineError(f"open {open_} is outside low {low} .. high {high}")
    if not low <= close <= high:
        raise _LineError(f"close {close} is outside low {low} .. high {high}")
    window = windows_.get(exchange, timeframe, start)
    if window is None or window[0] != start:
        raise _LineError(
            f"start {start.isoformat()} is not the start of a {timeframe.value} bar "
            f"of {exchange.value}'s sessions"
        )
    if window[1] > now:
        raise _LineError(f"the bar ending {window[1].isoformat()} is not complete yet")
    return {
        "broker": broker,
        "exchange": exchange.value,
        "symbol": symbol,
        "timeframe": timeframe.value,
        "start": start,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
    }


def _parse(
    handle: TextIO, broker: str, now: datetime, progress: Progress | None
) -> list[dict[str, Any]]:
    """Every row of the file, validated; raises ``CandleCsvError`` listing bad lines."""
    reader = csv.reader(handle)
    errors: list[tuple[int, str]] = []
    error_count = 0

    def fail(line: int, message: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append((line, message))

    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CandleCsvError([(1, f"unreadable: {exc}")], 1) from None
    if header is None:
        raise CandleCsvError([(1, "the file is empty (expected a header line)")], 1)
    names = [name.strip().lower() for name in header]
    missing = [c for c in CSV_COLUMNS if c not in names]
    unknown = [n for n in names if n not in CSV_COLUMNS]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing columns {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown columns {', '.join(unknown)}")
        if duplicated:
            problems.append(f"repeated columns {', '.join(duplicated)}")
        expected = ",".join(CSV_COLUMNS)
        raise CandleCsvError([(1, f"{'; '.join(problems)} (expected {expected})")], 1)

    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], int] = {}
    windows_ = _Windows()
    line = 1
    try:
        for record in reader:
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if progress is not None and len(rows) % _VALIDATION_REPORT_EVERY == 0:
                progress("validating", len(rows), None)
            if len(record) != len(names):
                fail(line, f"expected {len(names)} fields, found {len(record)}")
                continue
            try:
                row = _row(dict(zip(names, record, strict=True)), broker, now, windows_)
            except _LineError as exc:
                fail(line, str(exc))
                continue
            bar_key = tuple(row[c] for c in _KEY_COLUMNS)
            first = seen.setdefault(bar_key, line)
            if first != line:
                fail(line, f"repeats the bar of line {first}")
                continue
            rows.append(row)
    except (csv.Error, UnicodeDecodeError) as exc:
        fail(line + 1, f"unreadable: {exc}")
    if error_count:
        raise CandleCsvError(errors, error_count)
    if progress is not None:
        progress("validating", len(rows), len(rows))
    return rows
