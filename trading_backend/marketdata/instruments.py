"""The instruments table: brokers' instrument masters, loaded atomically, searched, and
resolved to the broker's own tokens.

Why a table and not just an in-memory dict: the master is large (1.5 lakh rows for
Angel One), several processes need it (API, workers, the command line that loads it),
and it must survive restarts and bad downloads. Why the atomic load: the adapter turns
``NSE:SBIN`` into token ``3045`` for every order and the feed turns tokens back into
symbols for every tick, so a reader must never see a half-written table. A load replaces
the broker's rows in ONE transaction, so PostgreSQL (MVCC) and SQLite (WAL) readers keep
seeing the previous set until the commit and the new one after it, never a mix, and a
failure leaves the old set. Each load is a new ``generation`` (part of the unique keys):
PostgreSQL COPYs the new generation in and then deletes the old one, SQLite deletes
first and rebuilds its indexes after the insert (see ``_insert`` for why each is fast).

``InstrumentStore`` loads, counts, searches and looks up rows; ``get``/``by_token`` are
cached in-process and the cache is dropped when a load completes here, or when another
process's load is noticed (the newest ``loaded_at`` is checked at most every
``freshness_seconds``). ``InstrumentResolver`` (``store.resolver("angel_one")``) is a
synchronous snapshot for hot paths (the adapter per order, the feed per tick); the store
refreshes it after each load. ``load_angel_one`` runs the whole pipeline (read or
download, parse, normalise, choose, write) and ``run_daily_refresh`` repeats it daily.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time as _time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

import structlog
from sqlalchemy import Table, case, delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.schema import CreateIndex

from trading_backend.domain import DomainError, ErrorCode, Exchange, Instrument, InstrumentType
from trading_backend.storage.models import InstrumentRow

if TYPE_CHECKING:
    from trading_backend.settings import Settings

log = structlog.get_logger(__name__)

__all__ = [
    "ANGEL_ONE",
    "AngelScripResolver",
    "InstrumentLoadRefused",
    "InstrumentRecord",
    "InstrumentResolver",
    "InstrumentStore",
    "LoadReport",
    "LoadSummary",
    "Progress",
    "ResolvedInstrument",
    "last_refresh_due",
    "load_angel_one",
    "next_refresh",
    "parse_refresh_time",
    "rank_instruments",
    "refresh_if_due",
    "run_daily_refresh",
    "to_record",
]

ANGEL_ONE: Final = "angel_one"
IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")

InstrumentRecord = tuple[
    Exchange, str, InstrumentType, str, str, str, int, Decimal, date | None, Decimal | None,
    str | None,
]  # fmt: skip
"""exchange, symbol, instrument_type, token, broker_symbol, name, lot_size, tick_size,
expiry, strike, underlying. Longer tuples are accepted (extra fields are ignored), which
lets ``brokers.angel_one.scrip_master`` rows go in as they are."""

Progress = Callable[[str, int, int | None], Awaitable[None] | None]
"""``(phase, done, total)``: ``download`` (bytes), ``parse`` (rows read), ``write`` (rows
written, called inside the load transaction between chunks). May be async."""

DEFAULT_CHUNK: Final = 5_000
DEFAULT_MIN_RATIO: Final = 0.5
MAX_SEARCH_LIMIT: Final = 500
_COLUMNS: Final = (
    "broker",
    "exchange",
    "symbol",
    "token",
    "broker_symbol",
    "name",
    "instrument_type",
    "lot_size",
    "tick_size",
    "expiry",
    "strike",
    "underlying",
    "loaded_at",
    "generation",
)


class InstrumentLoadRefused(DomainError):
    """A load would replace a good table with a suspicious one (far fewer rows, or none):
    nothing was changed. ``force=True`` (``--force``) overrides."""

    code = ErrorCode.CONFLICT


def to_record(instrument: Instrument) -> InstrumentRecord:
    return (
        instrument.exchange,
        instrument.symbol,
        instrument.instrument_type,
        instrument.token,
        instrument.broker_symbol or instrument.symbol,
        instrument.name,
        instrument.lot_size,
        instrument.tick_size,
        instrument.expiry,
        instrument.strike,
        instrument.underlying,
    )


def _plain(value: Decimal | None) -> Decimal | None:
    """``0.0500000000`` (PostgreSQL NUMERIC) -> ``0.05``; never exponent notation."""
    if value is None:
        return None
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def _instrument(row: Any) -> Instrument:
    return Instrument(
        symbol=row.symbol,
        exchange=Exchange(row.exchange),
        instrument_type=InstrumentType(row.instrument_type),
        token=row.token,
        name=row.name,
        lot_size=row.lot_size,
        tick_size=_plain(row.tick_size) or Decimal(0),
        expiry=row.expiry,
        strike=_plain(row.strike),
        underlying=row.underlying,
        broker_symbol=row.broker_symbol,
    )


def _broker(name: str) -> str:
    value = name.strip().lower()
    if not value or len(value) > 32:
        raise DomainError(f"bad broker name {name!r}", ErrorCode.VALIDATION_ERROR)
    return value


def _exchange(value: str | Exchange) -> Exchange:
    try:
        return value if isinstance(value, Exchange) else Exchange(value.strip().upper())
    except ValueError:
        raise DomainError(f"unknown exchange {value!r}", ErrorCode.VALIDATION_ERROR) from None


async def _call(progress: Progress | None, phase: str, done: int, total: int | None) -> None:
    if progress is None:
        return
    result = progress(phase, done, total)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True, slots=True)
class LoadReport:
    broker: str
    rows: int
    previous_rows: int
    loaded_at: datetime
    seconds: float


# -- ranking ------------------------------------------------------------------------------
_TYPE_RANK: Final = {
    InstrumentType.EQ: 0,
    InstrumentType.INDEX: 1,
    InstrumentType.SPOT: 1,
    InstrumentType.FUT: 2,
}


# Same symbol on several exchanges: the busiest first.
_EXCHANGE_RANK: Final = {"NSE": 0, "BSE": 1, "NFO": 2, "BFO": 3, "MCX": 4, "CDS": 5, "NCDEX": 6}


def _match_rank(instrument: Instrument, needle: str, raw: str) -> int | None:
    """0 exact symbol, 1 exact token or broker symbol, 2 symbol prefix, 3 exact name,
    4 name prefix, 5 substring of symbol/name/broker symbol; None: no match."""
    symbol = instrument.symbol.upper()
    name = instrument.name.upper()
    broker_symbol = (instrument.broker_symbol or instrument.symbol).upper()
    if symbol == needle:
        return 0
    if instrument.token == raw or broker_symbol == needle:
        return 1
    if symbol.startswith(needle):
        return 2
    if name == needle:
        return 3
    if name.startswith(needle):
        return 4
    if needle in symbol or needle in name or needle in broker_symbol:
        return 5
    return None


def rank_instruments(
    instruments: Iterable[Instrument],
    q: str,
    *,
    exchange: Exchange | None = None,
    instrument_type: InstrumentType | None = None,
    limit: int = 20,
) -> list[Instrument]:
    """The in-memory twin of ``InstrumentStore.search`` (same matching and order), for
    instrument lists that are not in the table (the paper universe)."""
    raw = q.strip()
    needle = raw.upper()
    if not needle:
        return []
    found: list[tuple[tuple[int, int, date, int, str, int], Instrument]] = []
    for instrument in instruments:
        if exchange is not None and instrument.exchange is not exchange:
            continue
        if instrument_type is not None and instrument.instrument_type is not instrument_type:
            continue
        rank = _match_rank(instrument, needle, raw)
        if rank is None:
            continue
        key = (
            rank,
            _TYPE_RANK.get(instrument.instrument_type, 3),
            instrument.expiry or date.min,
            len(instrument.symbol),
            instrument.symbol,
            _EXCHANGE_RANK.get(instrument.exchange.value, len(_EXCHANGE_RANK)),
        )
        found.append((key, instrument))
    found.sort(key=lambda item: item[0])
    return [instrument for _, instrument in found[:limit]]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- the store ----------------------------------------------------------------------------
class InstrumentStore:
    """Brokers' instruments in the ``instruments`` table (see the module docstring)."""

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        *,
        min_ratio: float = DEFAULT_MIN_RATIO,
        chunk: int = DEFAULT_CHUNK,
        freshness_seconds: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``min_ratio``: a load with fewer than this share of the rows the broker has
        now is refused (a truncated or partial file). ``chunk``: rows per INSERT batch."""
        self.db = db
        self.min_ratio = min_ratio
        self.chunk = max(1, chunk)
        self.freshness_seconds = freshness_seconds
        self._clock = clock or (lambda: datetime.now(UTC))
        self._cache: dict[tuple[str, str, Exchange, str], Instrument | None] = {}
        self._marker: dict[str, datetime | None] = {}
        self._checked: dict[str, float] = {}
        self._resolvers: dict[str, InstrumentResolver] = {}
        self._listeners: list[Callable[[str], Awaitable[None] | None]] = []
        self._load_lock = asyncio.Lock()

    # -- reading ---------------------------------------------------------------------------
    async def count(self, broker: str = ANGEL_ONE) -> int:
        async with self.db() as session:
            value = await session.scalar(
                select(func.count())
                .select_from(InstrumentRow)
                .where(InstrumentRow.broker == _broker(broker))
            )
        return int(value or 0)

    async def counts(self, broker: str = ANGEL_ONE) -> dict[str, int]:
        """Rows per instrument type."""
        async with self.db() as session:
            rows = await session.execute(
                select(InstrumentRow.instrument_type, func.count())
                .where(InstrumentRow.broker == _broker(broker))
                .group_by(InstrumentRow.instrument_type)
            )
        return {kind: int(n) for kind, n in rows.all()}

    async def loaded_at(self, broker: str = ANGEL_ONE) -> datetime | None:
        async with self.db() as session:
            value = await session.scalar(
                select(func.max(InstrumentRow.loaded_at)).where(
                    InstrumentRow.broker == _broker(broker)
                )
            )
        if isinstance(value, str):  # SQLite aggregates bypass the column type
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    async def search(
        self,
        q: str,
        *,
        broker: str = ANGEL_ONE,
        exchange: Exchange | str | None = None,
        instrument_type: InstrumentType | str | None = None,
        limit: int = 20,
    ) -> list[Instrument]:
        """Instruments whose symbol, name or broker symbol contains ``q`` (any case), or
        whose token is ``q``. Order: exact symbol, exact token/broker symbol, symbol
        prefix, exact name, name prefix, substring; within each, equities, then indices,
        then futures, then options; nearest expiry first, shorter symbols first."""
        raw = q.strip()
        needle = raw.upper()
        if not needle or len(needle) > 64 or not needle.isprintable():
            raise DomainError("q must be 1-64 printable characters", ErrorCode.VALIDATION_ERROR)
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise DomainError(
                f"limit must be between 1 and {MAX_SEARCH_LIMIT}", ErrorCode.VALIDATION_ERROR
            )
        table = InstrumentRow
        escaped = _like_escape(needle)
        contains = f"%{escaped}%"
        prefix = f"{escaped}%"
        name = func.upper(table.name)
        broker_symbol = func.upper(table.broker_symbol)
        rank = case(
            (table.symbol == needle, 0),
            (or_(table.token == raw, broker_symbol == needle), 1),
            (table.symbol.like(prefix, escape="\\"), 2),
            (name == needle, 3),
            (name.like(prefix, escape="\\"), 4),
            else_=5,
        )
        type_rank = case(
            (table.instrument_type == "EQ", 0),
            (table.instrument_type.in_(("INDEX", "SPOT")), 1),
            (table.instrument_type == "FUT", 2),
            else_=3,
        )
        query = (
            select(table)
            .where(
                table.broker == _broker(broker),
                or_(
                    table.symbol.like(contains, escape="\\"),
                    name.like(contains, escape="\\"),
                    broker_symbol.like(contains, escape="\\"),
                    table.token == raw,
                ),
            )
            .order_by(
                rank,
                type_rank,
                table.expiry.asc().nulls_first(),
                func.length(table.symbol),
                table.symbol,
                case(
                    *((table.exchange == name, n) for name, n in _EXCHANGE_RANK.items()),
                    else_=len(_EXCHANGE_RANK),
                ),
            )
            .limit(limit)
        )
        if exchange is not None:
            query = query.where(table.exchange == _exchange(exchange).value)
        if instrument_type is not None:
            query = query.where(table.instrument_type == InstrumentType(instrument_type).value)
        async with self.db() as session:
            rows = (await session.scalars(query)).all()
        return [_instrument(row) for row in rows]

    async def _fresh(self, broker: str) -> None:
        """Drop cached lookups when another process has loaded since we last looked."""
        now = _time.monotonic()
        if now - self._checked.get(broker, -1e18) < self.freshness_seconds:
            return
        self._checked[broker] = now
        marker = await self.loaded_at(broker)
        if broker in self._marker and self._marker[broker] != marker:
            self._invalidate(broker)
        self._marker[broker] = marker

    def _invalidate(self, broker: str) -> None:
        for key in [k for k in self._cache if k[0] == broker]:
            del self._cache[key]

    async def _lookup(
        self, kind: str, broker: str, exchange: Exchange | str, value: str
    ) -> Instrument | None:
        name = _broker(broker)
        exch = _exchange(exchange)
        await self._fresh(name)
        key = (name, kind, exch, value)
        if key in self._cache:
            return self._cache[key]
        table = InstrumentRow
        query = select(table).where(table.broker == name, table.exchange == exch.value)
        if kind == "symbol":
            query = query.where(or_(table.symbol == value, table.broker_symbol == value))
            query = query.order_by(case((table.symbol == value, 0), else_=1)).limit(1)
        else:
            query = query.where(table.token == value)
        async with self.db() as session:
            row = (await session.scalars(query)).first()
        found = _instrument(row) if row is not None else None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = found
        return found

    async def get(self, broker: str, exchange: Exchange | str, symbol: str) -> Instrument | None:
        """By our symbol (``SBIN``) or the broker's (``SBIN-EQ``)."""
        return await self._lookup("symbol", broker, exchange, symbol.strip())

    async def by_token(
        self, broker: str, exchange: Exchange | str, token: str
    ) -> Instrument | None:
        return await self._lookup("token", broker, exchange, str(token).strip())

    async def all(self, broker: str = ANGEL_ONE) -> list[Instrument]:
        async with self.db() as session:
            result = await session.execute(
                select(InstrumentRow).where(InstrumentRow.broker == _broker(broker))
            )
            return [_instrument(row) for row in result.scalars()]

    # -- resolvers and listeners -----------------------------------------------------------
    def resolver(self, broker: str = ANGEL_ONE) -> InstrumentResolver:
        """The broker's shared synchronous resolver (``await resolver.refresh()`` once;
        the store refreshes it after every load it runs)."""
        name = _broker(broker)
        if name not in self._resolvers:
            self._resolvers[name] = InstrumentResolver(self, name)
        return self._resolvers[name]

    def add_listener(self, callback: Callable[[str], Awaitable[None] | None]) -> None:
        """``callback(broker)`` after each completed load (e.g. to resubscribe a feed)."""
        self._listeners.append(callback)

    # -- writing ---------------------------------------------------------------------------
    async def load(
        self,
        broker: str,
        records: Iterable[InstrumentRecord | Instrument],
        *,
        progress: Progress | None = None,
        force: bool = False,
        min_ratio: float | None = None,
    ) -> LoadReport:
        """Replace ``broker``'s instruments with ``records`` in one transaction.

        Refused (``InstrumentLoadRefused``, table unchanged) when there is nothing to
        load, or fewer than ``min_ratio`` x the current row count, unless ``force``.
        Duplicate (exchange, symbol) or (exchange, token) pairs fail the whole load
        (``DomainError`` VALIDATION_ERROR), also leaving the table unchanged.
        """
        name = _broker(broker)
        started = _time.perf_counter()
        loaded_at = self._clock().astimezone(UTC).replace(microsecond=0)
        ratio = self.min_ratio if min_ratio is None else min_ratio
        rows = [to_record(r) if isinstance(r, Instrument) else r for r in records]
        async with self._load_lock, self.db() as session, session.begin():
            connection = await session.connection()
            previous = int(
                await connection.scalar(
                    select(func.count())
                    .select_from(InstrumentRow)
                    .where(InstrumentRow.broker == name)
                )
                or 0
            )
            if not force:
                if not rows:
                    raise InstrumentLoadRefused(
                        f"no instruments to load for {name}; the current {previous} kept",
                        broker=name,
                        previous_rows=previous,
                        new_rows=0,
                    )
                if previous and len(rows) < previous * ratio:
                    raise InstrumentLoadRefused(
                        f"refusing to replace {previous} {name} instruments with only "
                        f"{len(rows)} (below {ratio:.0%}; truncated file?); use force to "
                        "override",
                        broker=name,
                        previous_rows=previous,
                        new_rows=len(rows),
                    )
            generation = 1 + int(
                await connection.scalar(
                    select(func.max(InstrumentRow.generation)).where(InstrumentRow.broker == name)
                )
                or 0
            )
            sqlite = connection.dialect.name == "sqlite"
            if connection.dialect.name == "postgresql":
                # This commit need not wait for its WAL flush: a crash right after it loses
                # at most this load (reloadable), never half of it.
                await connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if sqlite:
                # Old rows first: the SQLite path rebuilds the indexes anyway, and with only
                # this broker in the table the DELETE has no WHERE (SQLite truncates).
                await self._delete(connection, name, previous, None)
            await _call(progress, "write", 0, len(rows))
            try:
                await self._insert(connection, name, generation, rows, loaded_at, progress)
            except Exception as exc:
                if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                    raise DomainError(
                        "the instruments repeat an (exchange, symbol) or (exchange, token) "
                        "pair; nothing was loaded",
                        ErrorCode.VALIDATION_ERROR,
                    ) from None
                raise
            if not sqlite:
                # New generation in, old one out, one commit: no reader sees both.
                await self._delete(connection, name, previous, generation)
        self._invalidate(name)
        self._marker[name] = loaded_at
        self._checked[name] = _time.monotonic()
        resolver = self._resolvers.get(name)
        if resolver is not None and resolver.loaded:
            await resolver.refresh()
        for listener in list(self._listeners):
            try:
                await _call_listener(listener, name)
            except Exception:  # a listener must not undo a committed load
                log.exception("instrument_listener_failed", broker=name)
        seconds = _time.perf_counter() - started
        log.info("instruments_loaded", broker=name, rows=len(rows), previous=previous)
        return LoadReport(name, len(rows), previous, loaded_at, seconds)

    async def _delete(
        self, connection: AsyncConnection, broker: str, previous: int, keep: int | None
    ) -> None:
        """Delete ``broker``'s rows except generation ``keep``."""
        if not previous:
            return
        table = InstrumentRow
        if keep is None:
            everyone = await connection.scalar(select(func.count()).select_from(table))
            if int(everyone or 0) == previous:
                await connection.execute(delete(table))
                return
            await connection.execute(delete(table).where(table.broker == broker))
            return
        await connection.execute(
            delete(table).where(table.broker == broker, table.generation != keep)
        )

    async def _insert(
        self,
        connection: AsyncConnection,
        broker: str,
        generation: int,
        rows: Sequence[Sequence[Any]],
        loaded_at: datetime,
        progress: Progress | None,
    ) -> None:
        """Write ``rows`` in chunks inside the caller's transaction, the fast way for each
        database (measured by ``benchmarks/instrument_load.py``):

        * SQLite: the table's indexes are dropped, rows go in through the driver's own
          executemany with pre-converted values (the column types would convert 13 values
          a row in Python), then the indexes are rebuilt (a sorted build beats 1.5 lakh
          random B-tree inserts about 3x). SQLite DDL is transactional: readers keep the
          old rows and indexes until the commit, and a failure rolls everything back.
        * PostgreSQL: ``COPY`` through asyncpg on the transaction's connection (several
          times INSERT executemany), rows in index order, as a new generation so that no
          unique-index insert has to look at the row version it replaces (the old
          generation is deleted afterwards). Anything else: Core ``insert()`` executemany.
        """
        dialect = connection.dialect.name
        if dialect == "sqlite":
            await self._insert_sqlite(connection, broker, generation, rows, loaded_at, progress)
            return
        total = len(rows)
        if dialect == "postgresql":
            # Index order: B-tree inserts stay on hot pages (measured 2x on a fresh table).
            rows = sorted(rows, key=itemgetter(0, 1))
        # Enum members -> their text once (an Enum's ``.value`` is a Python-level lookup).
        texts: dict[Any, str] = {member: member.value for member in (*Exchange, *InstrumentType)}
        records = (
            (
                broker,
                texts[r[0]],
                r[1],
                r[3],
                r[4],
                r[5],
                texts[r[2]],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                loaded_at,
                generation,
            )
            for r in rows
        )
        if dialect == "postgresql":
            raw = await connection.get_raw_connection()
            driver = getattr(raw, "driver_connection", None)
            if driver is not None and hasattr(driver, "copy_records_to_table"):

                async def stream() -> AsyncIterator[tuple[Any, ...]]:
                    # One COPY fed from an async iterator: asyncpg sends each part while
                    # the next is encoded, so the server inserts while we encode (chunked
                    # COPYs left one side idle at a time).
                    done = 0
                    while batch := list(islice(records, self.chunk)):
                        for record in batch:
                            yield record
                        done += len(batch)
                        await _call(progress, "write", done, total)

                await driver.copy_records_to_table(
                    InstrumentRow.__tablename__, records=stream(), columns=_COLUMNS
                )
                return
        table = cast(Table, InstrumentRow.__table__)
        for start in range(0, total, self.chunk):
            batch_dicts = [dict(zip(_COLUMNS, r, strict=True)) for r in islice(records, self.chunk)]
            await connection.execute(insert(table), batch_dicts)
            await _call(progress, "write", min(start + self.chunk, total), total)

    async def _insert_sqlite(
        self,
        connection: AsyncConnection,
        broker: str,
        generation: int,
        rows: Sequence[Sequence[Any]],
        loaded_at: datetime,
        progress: Progress | None,
    ) -> None:
        table = cast(Table, InstrumentRow.__table__)
        for index in table.indexes:
            await connection.exec_driver_sql(f'DROP INDEX IF EXISTS "{index.name}"')
        placeholders = ", ".join("?" for _ in _COLUMNS)
        statement = (
            f"INSERT INTO {InstrumentRow.__tablename__} ({', '.join(_COLUMNS)}) "
            f"VALUES ({placeholders})"
        )
        stamp = loaded_at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        total = len(rows)
        # A file repeats a few hundred distinct ticks, strikes and expiries: convert each
        # once. Exchange and InstrumentType are str enums, which sqlite3 binds as text.
        texts: dict[Any, str] = {}

        def text(value: Decimal | date | None) -> str | None:
            if value is None:
                return None
            found = texts.get(value)
            if found is None:
                found = texts[value] = (
                    format(value, "f") if isinstance(value, Decimal) else value.isoformat()
                )
            return found

        for start in range(0, total, self.chunk):
            batch = [
                (
                    broker,
                    r[0],
                    r[1],
                    r[3],
                    r[4],
                    r[5],
                    r[2],
                    r[6],
                    text(r[7]),
                    text(r[8]),
                    text(r[9]),
                    r[10],
                    stamp,
                    generation,
                )
                for r in rows[start : start + self.chunk]
            ]
            await connection.exec_driver_sql(statement, batch)
            await _call(progress, "write", min(start + self.chunk, total), total)
        for index in table.indexes:
            await connection.execute(CreateIndex(index))


async def _call_listener(listener: Callable[[str], Awaitable[None] | None], broker: str) -> None:
    result = listener(broker)
    if inspect.isawaitable(result):
        await result


class ResolvedInstrument(NamedTuple):
    """What ``InstrumentResolver.resolve`` answers: the broker's trading symbol, token,
    lot and tick first (the shape ``brokers.angel_one.resolver`` expects from an
    ``instrument_resolver``), then the whole record."""

    tradingsymbol: str
    token: str
    lot_size: int
    tick_size: Decimal
    instrument: Instrument


class InstrumentResolver:
    """Synchronous lookups over a snapshot of one broker's instruments, for hot paths
    (the adapter per order, the feed per tick). Empty until ``await refresh()``; the store
    refreshes it after each load it runs.

    * ``resolve(exchange, symbol)`` (ours ``SBIN`` or the broker's ``SBIN-EQ``) ->
      ``ResolvedInstrument`` or None; fits the adapter's
      ``context.extras["instrument_resolver"]``.
    * ``symbol_for(exchange, tradingsymbol, token)`` -> our symbol or None (the reverse,
      for order-book rows).
    * ``resolve_key("NSE:SBIN")`` -> ``(Exchange.NSE, "3045")``; ``by_token`` and
      ``instrument`` give the full ``Instrument``.
    """

    def __init__(self, store: InstrumentStore, broker: str) -> None:
        self.store = store
        self.broker = broker
        self.loaded = False
        self._by_symbol: dict[tuple[str, str], Instrument] = {}
        self._by_token: dict[tuple[str, str], Instrument] = {}

    async def refresh(self) -> int:
        """Reload the snapshot from the table; returns the number of instruments."""
        instruments = await self.store.all(self.broker)
        by_symbol: dict[tuple[str, str], Instrument] = {}
        by_token: dict[tuple[str, str], Instrument] = {}
        for instrument in instruments:
            exchange = instrument.exchange.value
            if instrument.broker_symbol and instrument.broker_symbol != instrument.symbol:
                by_symbol.setdefault((exchange, instrument.broker_symbol.upper()), instrument)
            by_token[(exchange, instrument.token)] = instrument
        for instrument in instruments:  # our symbols win over broker symbols
            by_symbol[(instrument.exchange.value, instrument.symbol.upper())] = instrument
        self._by_symbol, self._by_token = by_symbol, by_token
        self.loaded = True
        return len(instruments)

    def __len__(self) -> int:
        return len(self._by_token)

    def all(self) -> list[Instrument]:
        """Every instrument of the snapshot (the live market's universe)."""
        return list(self._by_token.values())

    def instrument(self, exchange: Exchange | str, symbol: str) -> Instrument | None:
        return self._by_symbol.get((str(exchange).strip().upper(), symbol.strip().upper()))

    def resolve(self, exchange: Exchange | str, symbol: str) -> ResolvedInstrument | None:
        found = self.instrument(exchange, symbol)
        if found is None:
            return None
        return ResolvedInstrument(
            found.broker_symbol or found.symbol, found.token, found.lot_size, found.tick_size, found
        )

    __call__ = resolve

    def resolve_key(self, key: str) -> tuple[Exchange, str] | None:
        """``"NSE:SBIN"`` -> ``(Exchange.NSE, "3045")``; None when unknown or malformed."""
        exchange, sep, symbol = key.partition(":")
        if not sep:
            return None
        found = self.instrument(exchange, symbol)
        return (found.exchange, found.token) if found is not None else None

    def by_token(self, exchange: Exchange | str, token: str) -> Instrument | None:
        return self._by_token.get((str(exchange).strip().upper(), str(token).strip()))

    def symbol_for(
        self, exchange: Exchange | str, tradingsymbol: str, token: str | None = None
    ) -> str | None:
        """The broker's symbol (or token) -> ours, None when unknown."""
        if token:
            found = self.by_token(exchange, token)
            if found is not None:
                return found.symbol
        found = self.instrument(exchange, tradingsymbol)
        return found.symbol if found is not None else None


AngelScripResolver = InstrumentResolver
"""The adapter's and the feed's name for ``store.resolver("angel_one")``."""


# -- the Angel One pipeline ---------------------------------------------------------------
@dataclass(slots=True)
class LoadSummary:
    """What a load read, kept and skipped (for the command line and the logs)."""

    broker: str
    source: str
    bytes_read: int
    rows_read: int
    skipped: dict[str, int]
    kept: dict[str, int]
    dropped_by_caps: dict[str, int]
    rows_written: int
    previous_rows: int
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "source": self.source,
            "bytes_read": self.bytes_read,
            "rows_read": self.rows_read,
            "skipped": dict(self.skipped),
            "kept": dict(self.kept),
            "dropped_by_caps": dict(self.dropped_by_caps),
            "rows_written": self.rows_written,
            "previous_rows": self.previous_rows,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


async def load_angel_one(
    store: InstrumentStore,
    *,
    data: bytes | None = None,
    path: str | None = None,
    url: str | None = None,
    caps: Any = None,
    today: date | None = None,
    progress: Progress | None = None,
    force: bool = False,
    timeout: float = 120.0,
    in_thread: bool = True,
    transport: Any = None,
) -> LoadSummary:
    """Read (``data``, ``path`` or ``url``), parse, normalise, choose (``caps``: an
    ``InstrumentCaps``; default: the seed defaults) and load Angel One's master.

    ``in_thread`` parses in a worker thread so a server's event loop keeps serving (the
    parse is about a second of CPU for the full file); ``transport`` is an httpx
    transport for the download (tests). Raises ``ScripMasterError`` for
    an unusable file and ``InstrumentLoadRefused`` for a suspicious one; either way the
    table is unchanged.
    """
    from trading_backend.brokers.angel_one import scrip_master as sm

    caps = caps or sm.InstrumentCaps()
    today = today or datetime.now(IST).date()
    loop = asyncio.get_running_loop()
    timings: dict[str, float] = {}

    pending: set[asyncio.Task[None]] = set()

    def deliver(phase: str, done: int, total: int | None) -> None:
        assert progress is not None
        result = progress(phase, done, total)
        if inspect.isawaitable(result):
            task = loop.create_task(_await(result))
            pending.add(task)
            task.add_done_callback(pending.discard)

    def sync_progress(phase: str, done: int, total: int | None) -> None:
        """Progress from the parsing thread: delivered on the event loop."""
        if progress is None:
            return
        if in_thread:
            loop.call_soon_threadsafe(deliver, phase, done, total)
        else:
            deliver(phase, done, total)

    started = _time.perf_counter()
    if data is not None:
        source = "bytes"
    elif path is not None:
        source = path
        data = sm.read_scrip_master(path, progress=sync_progress if not in_thread else None)
        await _call(progress, "download", len(data), len(data))
    else:
        source = url or sm_default_url()
        data = await sm.fetch_scrip_master(
            source, timeout=timeout, progress=sync_progress, transport=transport
        )
    timings["read"] = _time.perf_counter() - started

    def parse() -> tuple[Any, Any]:
        began = _time.perf_counter()
        raw = sm.parse_scrip_master(data)
        sync_progress("parse", 0, len(raw))
        normalised = sm.normalise_rows(raw, today=today, progress=sync_progress)
        del raw
        selection = sm.select_instruments(normalised.rows, caps)
        timings["parse"] = _time.perf_counter() - began
        return normalised, selection

    with _collector_paused():
        normalised, selection = await (asyncio.to_thread(parse) if in_thread else _now(parse))
        if pending:
            await asyncio.gather(*pending)
        report = await store.load(ANGEL_ONE, selection.rows, progress=progress, force=force)
    timings["write"] = report.seconds
    timings["total"] = _time.perf_counter() - started
    summary = LoadSummary(
        broker=ANGEL_ONE,
        source=source,
        bytes_read=len(data),
        rows_read=normalised.rows_read,
        skipped=dict(normalised.skipped.most_common()),
        kept=selection.kept,
        dropped_by_caps=selection.dropped,
        rows_written=report.rows,
        previous_rows=report.previous_rows,
        seconds=timings,
    )
    log.info("angel_one_instruments_loaded", **summary.as_dict())
    return summary


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a load: its million-odd new objects
    (row dicts, strings, record tuples) form no cycles, yet each allocation burst makes the
    collector walk all of them again (measured: 0.55 s of a 1.5 s parse). Reference
    counting still frees everything; the collector resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


async def _now(work: Callable[[], Any]) -> Any:
    return work()


def sm_default_url() -> str:
    from trading_backend.brokers.angel_one.protocol import SCRIP_MASTER_URL

    return SCRIP_MASTER_URL


# -- daily refresh ------------------------------------------------------------------------
def parse_refresh_time(text: str) -> time:
    """``"08:00"`` (IST) -> ``time(8, 0)``; ``ValueError`` otherwise."""
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit():
        raise ValueError(f"refresh time {text!r} is not HH:MM")
    return time(int(hours), int(minutes))


def next_refresh(now: datetime, at: time) -> datetime:
    """The first ``at`` (IST) strictly after ``now``, in UTC."""
    local = now.astimezone(IST)
    candidate = datetime.combine(local.date(), at, IST)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(UTC)


def last_refresh_due(now: datetime, at: time) -> datetime:
    """The latest ``at`` (IST) at or before ``now``, in UTC."""
    return next_refresh(now, at) - timedelta(days=1)


async def refresh_if_due(
    store: InstrumentStore,
    settings: Settings,
    now: datetime,
    *,
    loader: Callable[..., Awaitable[LoadSummary]] = load_angel_one,
) -> LoadSummary | None:
    """Load when the table has not been loaded since the latest scheduled time."""
    from trading_backend.brokers.angel_one.scrip_master import InstrumentCaps

    at = parse_refresh_time(settings.instruments_refresh_time)
    last = await store.loaded_at(ANGEL_ONE)
    if last is not None and last >= last_refresh_due(now, at):
        return None
    return await loader(
        store,
        url=settings.angel_one_scrip_master_url,
        caps=InstrumentCaps.from_settings(settings),
        timeout=settings.instruments_download_timeout,
    )


async def run_daily_refresh(
    store: InstrumentStore,
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Callable[[], datetime] | None = None,
    loader: Callable[..., Awaitable[LoadSummary]] = load_angel_one,
    retry_seconds: float = 900.0,
) -> None:
    """Background task: load Angel One's master now if today's scheduled load has not
    happened, then once a day at INSTRUMENTS_REFRESH_TIME (IST). A failed load keeps
    the current table and is retried every ``retry_seconds`` until it succeeds."""
    now_fn = clock or (lambda: datetime.now(UTC))
    at = parse_refresh_time(settings.instruments_refresh_time)
    while not stop.is_set():
        wait: float
        try:
            await refresh_if_due(store, settings, now_fn(), loader=loader)
            wait = (next_refresh(now_fn(), at) - now_fn()).total_seconds()
        except Exception as exc:  # noqa: BLE001 - keep the old table, try again later
            log.warning(
                "instrument_refresh_failed",
                error=getattr(exc, "message", str(exc)),
                retry_seconds=retry_seconds,
            )
            wait = retry_seconds
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.0))
        except TimeoutError:
            continue
