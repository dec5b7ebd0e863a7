"""The instruments table: atomic loads (a reader sees the old set or the new one), the
refusal of truncated files, search ranking, cached lookups, the synchronous resolver,
the Angel One pipeline and the daily refresh. SQLite always, PostgreSQL with
TEST_DATABASE_URL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import make_settings
from trading_backend.brokers.angel_one.fake.scrip_master import (
    generate_scrip_master,
    scrip_master_bytes,
    small_scrip_master,
)
from trading_backend.brokers.angel_one.resolver import ResolvedSymbol, resolve_with
from trading_backend.brokers.angel_one.scrip_master import InstrumentCaps, ScripMasterError
from trading_backend.brokers.paper.universe import default_universe
from trading_backend.domain import DomainError, Exchange, Instrument, InstrumentType
from trading_backend.marketdata.instruments import (
    ANGEL_ONE,
    IST,
    InstrumentLoadRefused,
    InstrumentStore,
    LoadSummary,
    load_angel_one,
    next_refresh,
    parse_refresh_time,
    rank_instruments,
    refresh_if_due,
    run_daily_refresh,
)
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.models import InstrumentRow

TODAY = date(2026, 11, 25)
ALL = InstrumentCaps(load_all=True)
WAIT = 10.0


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    await upgrade_database(engine)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def store(db: async_sessionmaker[AsyncSession]) -> InstrumentStore:
    return InstrumentStore(db)


def small_bytes() -> bytes:
    return scrip_master_bytes(small_scrip_master(TODAY))


async def load_small(store: InstrumentStore, **kwargs: Any) -> LoadSummary:
    return await load_angel_one(store, data=small_bytes(), caps=ALL, today=TODAY, **kwargs)


def eq(symbol: str, token: str, exchange: Exchange = Exchange.NSE) -> Instrument:
    return Instrument(
        symbol=symbol,
        exchange=exchange,
        instrument_type=InstrumentType.EQ,
        token=token,
        name=symbol,
        tick_size=Decimal("0.05"),
        broker_symbol=f"{symbol}-EQ",
    )


# -- loading ------------------------------------------------------------------------------
async def test_load_writes_normalised_rows(store: InstrumentStore) -> None:
    summary = await load_small(store)
    assert summary.rows_read == 600 and summary.rows_written == 600
    assert summary.skipped == {} and summary.previous_rows == 0
    assert sum(summary.kept.values()) == 600
    assert await store.count(ANGEL_ONE) == 600
    counts = await store.counts(ANGEL_ONE)
    assert set(counts) == {"EQ", "INDEX", "FUT", "CE", "PE"}
    sbin = await store.get(ANGEL_ONE, "NSE", "SBIN")
    assert sbin is not None
    assert (sbin.token, sbin.broker_symbol, sbin.tick_size) == ("3045", "SBIN-EQ", Decimal("0.05"))
    assert await store.get(ANGEL_ONE, Exchange.NSE, "SBIN-EQ") == sbin  # the broker's name
    assert await store.by_token(ANGEL_ONE, "NSE", "3045") == sbin
    nifty = await store.by_token(ANGEL_ONE, "NSE", "99926000")
    assert nifty is not None and nifty.symbol == "NIFTY" and nifty.name == "Nifty 50"
    option = next(i for i in await store.all() if i.instrument_type is InstrumentType.CE)
    assert option.strike is not None and option.strike == option.strike.to_integral_value()
    assert str(option.strike) == str(int(option.strike))  # 22500, not 2.25E+4
    assert await store.get(ANGEL_ONE, "NSE", "NOPE") is None
    loaded_at = await store.loaded_at(ANGEL_ONE)
    assert loaded_at is not None and loaded_at.tzinfo is not None


async def test_caps_apply_when_not_loading_everything(store: InstrumentStore) -> None:
    caps = InstrumentCaps(max_equity=10, max_derivatives=5)
    summary = await load_angel_one(store, data=small_bytes(), caps=caps, today=TODAY)
    indices = summary.kept["index"]
    assert summary.kept == {"index": indices, "equity": 10, "index_future": 5}
    assert await store.count() == indices + 15
    assert await store.get(ANGEL_ONE, "NSE", "ADANIENT") is not None  # Nifty 50, A first
    assert await store.get(ANGEL_ONE, "NSE", "RELIANCE") is None


async def test_a_truncated_file_is_refused_and_the_table_kept(store: InstrumentStore) -> None:
    await load_small(store)
    before = await store.loaded_at()
    data = small_bytes()
    with pytest.raises(ScripMasterError, match="not valid JSON"):
        await load_angel_one(store, data=data[: len(data) // 2], caps=ALL, today=TODAY)
    with pytest.raises(ScripMasterError, match="not an array"):
        await load_angel_one(store, data=b'{"status": false}', caps=ALL, today=TODAY)
    # A valid array with far fewer rows than the table holds: a partial file.
    few = scrip_master_bytes(small_scrip_master(TODAY)[:100])
    with pytest.raises(InstrumentLoadRefused) as info:
        await load_angel_one(store, data=few, caps=ALL, today=TODAY)
    assert info.value.code.value == "CONFLICT" and "600" in info.value.message
    with pytest.raises(InstrumentLoadRefused, match="no instruments"):
        await store.load(ANGEL_ONE, [])
    assert await store.count() == 600 and await store.loaded_at() == before
    # Deliberately smaller: --force.
    forced = await load_angel_one(store, data=few, caps=ALL, today=TODAY, force=True)
    assert forced.rows_written == 100 and await store.count() == 100
    # The threshold is configurable.
    lenient = InstrumentStore(store.db, min_ratio=0.1)
    await lenient.load(ANGEL_ONE, [eq("AAA", "1"), eq("BBB", "2"), eq("CCC", "3"), eq("D", "4"),
                                   eq("E", "5"), eq("F", "6"), eq("G", "7"), eq("H", "8"),
                                   eq("I", "9"), eq("J", "10")])  # fmt: skip
    assert await store.count() == 10


async def test_duplicates_fail_the_whole_load(store: InstrumentStore) -> None:
    await store.load(ANGEL_ONE, [eq("SBIN", "3045")])
    with pytest.raises(DomainError) as info:
        await store.load(ANGEL_ONE, [eq("TCS", "11536"), eq("TCS", "1")])
    assert info.value.code.value == "VALIDATION_ERROR"
    assert [i.symbol for i in await store.all()] == ["SBIN"]
    # the table is intact and usable after the failed load
    await store.load(ANGEL_ONE, [eq("TCS", "11536"), eq("INFY", "1594")])
    assert sorted(i.symbol for i in await store.all()) == ["INFY", "TCS"]


async def test_brokers_are_kept_apart(store: InstrumentStore) -> None:
    await store.load(ANGEL_ONE, [eq("SBIN", "3045")])
    await store.load("other", [eq("SBIN", "999"), eq("TCS", "1")])
    await store.load(ANGEL_ONE, [eq("RELIANCE", "2885")])
    assert [i.symbol for i in await store.all(ANGEL_ONE)] == ["RELIANCE"]
    assert sorted(i.symbol for i in await store.all("other")) == ["SBIN", "TCS"]
    found = await store.get("other", "NSE", "SBIN")
    assert found is not None and found.token == "999"


async def test_a_reader_sees_the_old_set_or_the_new_one(
    store: InstrumentStore, database_url: str
) -> None:
    """Another connection counts rows while the load is in flight (driven by the progress
    callback, which runs inside the load's transaction between chunks)."""
    old = [eq(f"OLD{i}", str(i)) for i in range(3000)]
    new = [eq(f"NEW{i}", str(10_000 + i)) for i in range(4000)]
    await store.load(ANGEL_ONE, old)
    reader = create_engine(database_url)
    seen: list[tuple[str, int, int, int]] = []

    async def observe(phase: str, done: int, total: int | None) -> None:
        async with reader.connect() as connection:
            count = await connection.scalar(
                select(func.count())
                .select_from(InstrumentRow)
                .where(InstrumentRow.broker == ANGEL_ONE)
            )
            fresh = await connection.scalar(
                select(func.count())
                .select_from(InstrumentRow)
                .where(InstrumentRow.symbol.like("NEW%"))
            )
        seen.append((phase, done, int(count or 0), int(fresh or 0)))

    try:
        writer = InstrumentStore(store.db, chunk=500)
        await writer.load(ANGEL_ONE, new, progress=observe)
        async with reader.connect() as connection:
            after = await connection.scalar(select(func.count()).select_from(InstrumentRow))
    finally:
        await reader.dispose()
    writes = [s for s in seen if s[0] == "write"]
    assert [s[1] for s in writes] == [0, *range(500, 4001, 500)]  # mid-load, chunk by chunk
    assert all(count == 3000 and fresh == 0 for _, _, count, fresh in writes)
    assert after == 4000


# -- searching ----------------------------------------------------------------------------
async def test_search_ranks_exact_then_prefix_equities_first(store: InstrumentStore) -> None:
    await load_small(store)
    hits = await store.search("sbin", limit=50)
    keys = [(i.exchange.value, i.symbol, i.instrument_type.value) for i in hits]
    assert keys[:2] == [("NSE", "SBIN", "EQ"), ("BSE", "SBIN", "EQ")]
    assert all(i.symbol.startswith("SBIN") or "SBIN" in i.name.upper() for i in hits)
    nifty = await store.search("NIFTY", limit=100)
    assert nifty[0].key == "NSE:NIFTY" and nifty[0].instrument_type is InstrumentType.INDEX
    types = [i.instrument_type for i in nifty if i.symbol.startswith("NIFTY")]
    futures_at = types.index(InstrumentType.FUT)
    assert InstrumentType.INDEX in types[:futures_at]
    assert all(t in (InstrumentType.CE, InstrumentType.PE) for t in types[futures_at + 3 :])
    # exact token, the broker's own symbol, the index display name
    assert (await store.search("3045"))[0].key == "NSE:SBIN"
    assert (await store.search("sbin-eq"))[0].key == "NSE:SBIN"
    assert (await store.search("nifty bank"))[0].key == "NSE:BANKNIFTY"
    # filters
    bse = await store.search("SBIN", exchange="BSE")
    assert bse and all(i.exchange is Exchange.BSE for i in bse)
    futures = await store.search("NIFTY", instrument_type=InstrumentType.FUT, limit=5)
    assert futures and all(i.instrument_type is InstrumentType.FUT for i in futures)
    prefix = [i for i in futures if i.symbol.startswith("NIFTY")]
    assert futures[: len(prefix)] == prefix and len(prefix) == 3  # prefix before substring
    assert [i.expiry for i in prefix] == sorted(i.expiry for i in prefix if i.expiry)
    # LIKE wildcards in the query are literal characters
    assert await store.search("%") == [] and await store.search("_") == []
    assert len(await store.search("S", limit=3)) == 3


async def test_search_validates_its_arguments(store: InstrumentStore) -> None:
    for kwargs in ({"q": "  "}, {"q": "x" * 65}, {"q": "SBIN", "limit": 0}):
        with pytest.raises(DomainError) as info:
            await store.search(**kwargs)  # type: ignore[arg-type]
        assert info.value.code.value == "VALIDATION_ERROR"
    with pytest.raises(DomainError, match="unknown exchange"):
        await store.search("SBIN", exchange="MOON")


def test_rank_instruments_ranks_the_paper_universe_the_same_way() -> None:
    universe = [s.instrument for s in default_universe(TODAY, options=True)]
    hits = rank_instruments(universe, "nifty", limit=5)
    assert hits[0].key == "NSE:NIFTY"
    assert [i.instrument_type for i in hits[1:3]] == [InstrumentType.FUT, InstrumentType.CE]
    assert rank_instruments(universe, "tcs")[0].key == "NSE:TCS"
    assert rank_instruments(universe, "state bank")[0].key == "NSE:SBIN"  # by name
    only_pe = rank_instruments(universe, "NIFTY", instrument_type=InstrumentType.PE, limit=3)
    assert len(only_pe) == 3 and all(i.instrument_type is InstrumentType.PE for i in only_pe)
    assert rank_instruments(universe, " ") == []


# -- caching and resolving ----------------------------------------------------------------
async def test_lookups_are_cached_until_a_load_completes(store: InstrumentStore) -> None:
    await store.load(ANGEL_ONE, [eq("SBIN", "3045")])
    first = await store.get(ANGEL_ONE, "NSE", "SBIN")
    assert first is not None and first.token == "3045"
    # Rows changed behind the store's back (as by hand): the cache still answers.
    async with store.db() as session, session.begin():
        row = (await session.scalars(select(InstrumentRow))).one()
        row.token = "1"
    assert await store.get(ANGEL_ONE, "NSE", "SBIN") == first
    # A load through the store drops the cache.
    await store.load(ANGEL_ONE, [eq("SBIN", "777")])
    found = await store.get(ANGEL_ONE, "NSE", "SBIN")
    assert found is not None and found.token == "777"


async def test_a_load_by_another_process_is_noticed(db: async_sessionmaker[AsyncSession]) -> None:
    ours = InstrumentStore(db, freshness_seconds=0)
    theirs = InstrumentStore(db)
    await theirs.load(ANGEL_ONE, [eq("SBIN", "3045")])
    first = await ours.get(ANGEL_ONE, "NSE", "SBIN")
    assert first is not None and first.token == "3045"
    await theirs.load(
        ANGEL_ONE,
        [eq("SBIN", "888")],
        force=True,
    )
    # loaded_at has one-second resolution: make the second load visibly newer.
    async with db() as session, session.begin():
        row = (await session.scalars(select(InstrumentRow))).one()
        row.loaded_at = datetime(2099, 1, 1, tzinfo=UTC)
    found = await ours.get(ANGEL_ONE, "NSE", "SBIN")
    assert found is not None and found.token == "888"


async def test_the_resolver_follows_loads(store: InstrumentStore) -> None:
    resolver = store.resolver(ANGEL_ONE)
    assert store.resolver("ANGEL_ONE") is resolver
    assert resolver.resolve("NSE", "SBIN") is None  # empty until refreshed
    await load_small(store)
    assert await resolver.refresh() == 600
    resolved = resolver.resolve("NSE", "SBIN")
    assert resolved is not None
    assert (resolved.tradingsymbol, resolved.token, resolved.lot_size) == ("SBIN-EQ", "3045", 1)
    assert resolved.instrument.key == "NSE:SBIN"
    assert resolver.resolve(Exchange.NSE, "sbin-eq") == resolved
    assert resolver("NSE", "SBIN") == resolved
    assert resolver.resolve_key("NSE:NIFTY") == (Exchange.NSE, "99926000")
    assert resolver.resolve_key("NSE:NOPE") is None and resolver.resolve_key("SBIN") is None
    by_token = resolver.by_token("NSE", "3045")
    assert by_token is not None and by_token.symbol == "SBIN"
    assert resolver.symbol_for("NSE", "SBIN-EQ") == "SBIN"
    assert resolver.symbol_for("NSE", "whatever", "99926009") == "BANKNIFTY"
    assert resolver.symbol_for("NSE", "UNKNOWN-EQ") is None
    # The adapter's contract for ``context.extras["instrument_resolver"]``.
    assert await resolve_with(resolver, "NSE", "SBIN") == ResolvedSymbol(
        "SBIN-EQ", "3045", 1, Decimal("0.05")
    )
    # A load through the store refreshes it.
    await store.load(ANGEL_ONE, [eq("SBIN", "42")], force=True)
    assert len(resolver) == 1
    again = resolver.resolve("NSE", "SBIN")
    assert again is not None and again.token == "42"


async def test_listeners_hear_about_completed_loads(store: InstrumentStore) -> None:
    heard: list[str] = []

    async def listener(broker: str) -> None:
        heard.append(broker)

    def broken(broker: str) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(listener)
    await store.load(ANGEL_ONE, [eq("SBIN", "3045")])
    with pytest.raises(InstrumentLoadRefused):
        await store.load(ANGEL_ONE, [])
    assert heard == [ANGEL_ONE]
    assert await store.count() == 1  # a failing listener does not undo the load


# -- the Angel One pipeline ---------------------------------------------------------------
async def test_download_parse_write_with_progress(store: InstrumentStore) -> None:
    payload = small_bytes()
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(200, content=payload)

    phases: list[tuple[str, int, int | None]] = []

    async def progress(phase: str, done: int, total: int | None) -> None:
        phases.append((phase, done, total))

    summary = await load_angel_one(
        store,
        url="https://example.test/OpenAPIScripMaster.json",
        caps=ALL,
        today=TODAY,
        progress=progress,
        transport=httpx.MockTransport(handler),
    )
    assert requests == ["https://example.test/OpenAPIScripMaster.json"]
    assert summary.source == "https://example.test/OpenAPIScripMaster.json"
    assert summary.bytes_read == len(payload) and summary.rows_written == 600
    names = [p[0] for p in phases]
    assert names.index("download") < names.index("parse") < names.index("write")
    assert phases[-1] == ("write", 600, 600)
    assert ("parse", 600, 600) in phases
    assert max(p[1] for p in phases if p[0] == "download") == len(payload)
    assert set(summary.as_dict()) >= {"rows_read", "kept", "skipped", "dropped_by_caps"}


async def test_a_file_on_disk_and_skipped_rows_are_reported(
    store: InstrumentStore, tmp_path: Path
) -> None:
    rows = generate_scrip_master(800, today=TODAY)
    rows[5] = {**rows[5], "instrumenttype": "UNDCUR"}
    rows.append({"token": "1"})
    path = tmp_path / "OpenAPIScripMaster.json"
    path.write_bytes(scrip_master_bytes(rows))
    summary = await load_angel_one(store, path=str(path), caps=ALL, today=TODAY, in_thread=False)
    assert summary.rows_read == 801 and summary.rows_written == 799
    assert summary.skipped == {"unsupported instrumenttype UNDCUR": 1, "missing field symbol": 1}
    with pytest.raises(ScripMasterError, match="cannot read"):
        await load_angel_one(store, path=str(tmp_path / "missing.json"), today=TODAY)


# -- daily refresh ------------------------------------------------------------------------
def test_refresh_times() -> None:
    assert parse_refresh_time("08:00") == time(8, 0)
    for bad in ("8", "aa:bb", ""):
        with pytest.raises(ValueError):
            parse_refresh_time(bad)
    at = time(8, 0)
    before = datetime(2026, 11, 25, 7, 59, tzinfo=IST)
    assert next_refresh(before, at) == datetime(2026, 11, 25, 8, 0, tzinfo=IST)
    after = datetime(2026, 11, 25, 8, 0, tzinfo=IST)
    assert next_refresh(after, at) == datetime(2026, 11, 26, 8, 0, tzinfo=IST)
    assert next_refresh(after, at).tzinfo is UTC


def _summary() -> LoadSummary:
    return LoadSummary(ANGEL_ONE, "test", 0, 0, {}, {}, {}, 0, 0)


async def test_refresh_runs_only_when_due(store: InstrumentStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite+aiosqlite:///:memory:")
    calls: list[dict[str, Any]] = []

    async def loader(target: InstrumentStore, **kwargs: Any) -> LoadSummary:
        calls.append(kwargs)
        await target.load(ANGEL_ONE, [eq("SBIN", "3045")], force=True)
        return _summary()

    now = datetime.now(UTC)
    assert await refresh_if_due(store, settings, now, loader=loader) is not None
    assert calls[0]["url"] == settings.angel_one_scrip_master_url
    assert calls[0]["caps"] == InstrumentCaps.from_settings(settings)
    assert await refresh_if_due(store, settings, now, loader=loader) is None  # done today
    tomorrow = now.replace(year=now.year + 1)
    assert await refresh_if_due(store, settings, tomorrow, loader=loader) is not None
    assert len(calls) == 2


async def test_the_daily_task_loads_retries_and_stops(
    store: InstrumentStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, "sqlite+aiosqlite:///:memory:")
    attempts: list[int] = []
    loaded = asyncio.Event()

    async def loader(target: InstrumentStore, **kwargs: Any) -> LoadSummary:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ScripMasterError("instrument master download failed: HTTP 503")
        await target.load(ANGEL_ONE, [eq("SBIN", "3045")])
        loaded.set()
        return _summary()

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_daily_refresh(store, settings, stop, loader=loader, retry_seconds=0.01)
    )
    await asyncio.wait_for(loaded.wait(), WAIT)  # the failure was retried
    assert attempts == [0, 1] and await store.count() == 1
    stop.set()
    await asyncio.wait_for(task, WAIT)  # waiting for tomorrow, it stops at once
    assert attempts == [0, 1]


def test_instrument_records_are_plain_dataclasses() -> None:
    # ``broker_symbol`` is optional: existing Instrument users are unaffected.
    plain = Instrument("TCS", Exchange.NSE, InstrumentType.EQ)
    assert plain.broker_symbol == "" and "broker_symbol" in {
        f.name for f in dataclasses.fields(Instrument)
    }
