"""Historical candles: the paper broker's synthetic history, the database cache
(``marketdata.candles``), CSV import/export and ``trading-backend data``.

Database tests run on SQLite and on PostgreSQL (with TEST_DATABASE_URL), like the others.
Clocks are fixed so that "complete by now" never depends on when the tests run.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from trading_backend import data_cli
from trading_backend.api.errors import status_for
from trading_backend.brokers.base import (
    Broker,
    BrokerConfigData,
    BrokerContext,
    BrokerError,
    BrokerNotSupported,
    BrokerOrderState,
)
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket
from trading_backend.brokers.paper.history import MAX_HISTORY_BARS
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import is_multiple
from trading_backend.marketdata.bars import bar_window, resample, session_for, windows
from trading_backend.marketdata.candles import CSV_COLUMNS, CandleCsvError, CandleService
from trading_backend.settings import get_settings
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.models import CandleRow

NOW = datetime(2025, 6, 4, 8, 0, tzinfo=UTC)  # Wednesday 13:30 IST: NSE is open
SEED = 7


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def make_market(seed: int = SEED, now: datetime = NOW) -> SimulatedMarket:
    return SimulatedMarket(seed=seed, clock=lambda: now)


def make_broker(market: SimulatedMarket) -> PaperBroker:
    config = BrokerConfigData(config_id="cfg-history", user_id="usr-history", broker="paper")
    return PaperBroker(config, BrokerContext(market=market))


class CountingFetch:
    """The real paper broker's ``get_historical_candles``, counting its calls."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.calls: list[tuple[str, str, Timeframe, datetime, datetime]] = []

    async def __call__(
        self, symbol: str, exchange: str, timeframe: Timeframe, start: datetime, end: datetime
    ) -> list[Bar]:
        self.calls.append((symbol, exchange, timeframe, start, end))
        return await self.broker.get_historical_candles(symbol, exchange, timeframe, start, end)


@pytest.fixture
def market() -> SimulatedMarket:
    return make_market()


@pytest.fixture
def fetch(market: SimulatedMarket) -> CountingFetch:
    return CountingFetch(make_broker(market))


async def open_db(url: str) -> tuple[Any, async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    await upgrade_database(engine)
    return engine, session_factory(engine)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine, factory = await open_db(database_url)
    try:
        yield factory
    finally:
        await engine.dispose()


@pytest.fixture
def service(db: async_sessionmaker[AsyncSession]) -> CandleService:
    return CandleService(db, clock=lambda: NOW)


async def count_rows(db: async_sessionmaker[AsyncSession], **where: str) -> int:
    async with db() as session:
        statement = select(func.count()).select_from(CandleRow)
        for column, value in where.items():
            statement = statement.where(getattr(CandleRow, column) == value)
        return int((await session.execute(statement)).scalar_one())


# -- the paper broker's synthetic history ------------------------------------------------------
def test_paper_history_is_deterministic_and_independent_of_the_range() -> None:
    start, end = utc(2024, 3, 4), utc(2024, 3, 9)
    first = make_market().historical_bars("TCS", "NSE", "5m", start, end)
    again = make_market(now=NOW + timedelta(days=300)).historical_bars(
        "TCS", "NSE", "5m", start, end
    )
    assert first and first == again
    # A wider request contains exactly the same bars: each session is generated alone.
    wider = make_market().historical_bars("TCS", "NSE", "5m", utc(2024, 2, 1), utc(2024, 4, 1))
    assert [b for b in wider if start <= b.start < end] == first
    # Another seed, another instrument: another history.
    assert make_market(seed=SEED + 1).historical_bars("TCS", "NSE", "5m", start, end) != first
    infy = make_market().historical_bars("INFY", "NSE", "5m", start, end)
    assert [b.close for b in infy] != [b.close for b in first]


@pytest.mark.parametrize(
    ("symbol", "exchange", "timeframe", "start", "end"),
    [
        ("TCS", "NSE", "1m", utc(2024, 3, 1), utc(2024, 3, 12)),
        ("SBIN", "NSE", "1h", utc(2023, 1, 1), utc(2023, 3, 1)),
        ("NIFTY", "NSE", "15m", utc(2024, 3, 1), utc(2024, 3, 12)),
        ("BTCUSDT", "CRYPTO", "1m", utc(2024, 3, 1), utc(2024, 3, 4)),
        ("ETHUSDT", "CRYPTO", "1d", utc(2020, 1, 1), utc(2021, 1, 1)),
    ],
)
def test_paper_history_bars_are_well_formed(
    market: SimulatedMarket,
    symbol: str,
    exchange: str,
    timeframe: str,
    start: datetime,
    end: datetime,
) -> None:
    instrument = market.get_instrument(symbol, exchange)
    assert instrument is not None
    bars = market.historical_bars(symbol, exchange, timeframe, start, end)
    # Exactly one bar per session-aligned window of the range, in order.
    assert [(b.start, b.end) for b in bars] == list(windows(exchange, timeframe, start, end))
    for bar in bars:
        assert bar.symbol == symbol and bar.exchange is Exchange(exchange)
        assert bar.timeframe is Timeframe(timeframe) and bar.complete
        for price in (bar.open, bar.high, bar.low, bar.close):
            assert isinstance(price, Decimal)
            assert price >= instrument.tick_size
            assert is_multiple(price, instrument.tick_size), (bar, price)
        assert bar.low <= bar.open <= bar.high and bar.low <= bar.close <= bar.high
        assert bar.volume >= 0
        session = session_for(exchange, bar.start)
        assert session is not None and bar.end <= session.close
        assert bar_window(exchange, timeframe, bar.start) == (bar.start, bar.end)
    if exchange == "NSE":
        assert all(b.start.astimezone(IST).weekday() < 5 for b in bars)
        volumes = [b.volume for b in bars]
        assert (max(volumes) == 0) == (symbol == "NIFTY")  # an index trades nothing
    else:
        assert any(b.start.weekday() >= 5 for b in bars)  # crypto trades at weekends


@pytest.mark.parametrize(("symbol", "exchange"), [("RELIANCE", "NSE"), ("BTCUSDT", "CRYPTO")])
def test_larger_timeframes_are_the_1m_history_resampled(
    market: SimulatedMarket, symbol: str, exchange: str
) -> None:
    start, end = utc(2024, 5, 6), utc(2024, 5, 9)
    minutes = market.historical_bars(symbol, exchange, "1m", start, end)
    for timeframe in ("3m", "5m", "15m", "30m", "1h", "1d"):
        assert market.historical_bars(symbol, exchange, timeframe, start, end) == resample(
            minutes, timeframe
        ), timeframe


def test_history_stays_near_the_instruments_price_level(market: SimulatedMarket) -> None:
    quote = market.quote("HDFCBANK", "NSE")
    daily = market.historical_bars("HDFCBANK", "NSE", "1d", utc(2015, 1, 1), NOW)
    assert len(daily) > 2500
    assert all(quote.ltp / 3 < bar.close < quote.ltp * 3 for bar in daily)
    assert quote.ltp * Decimal("0.6") < daily[-1].close < quote.ltp * Decimal("1.6")


def test_history_has_only_complete_bars_and_starts_in_2000(market: SimulatedMarket) -> None:
    today = market.historical_bars("TCS", "NSE", "1m", utc(2025, 6, 4), utc(2025, 6, 5))
    assert today and today[-1].end == NOW  # 13:30 IST: the 13:29 bar is the last complete one
    assert market.historical_bars("TCS", "NSE", "1d", utc(2025, 6, 4), utc(2025, 6, 5)) == []
    assert market.historical_bars("TCS", "NSE", "1d", utc(2030, 1, 1), utc(2030, 2, 1)) == []
    early = market.historical_bars("TCS", "NSE", "1d", utc(1999, 12, 1), utc(2000, 1, 8))
    assert [b.start.date().isoformat() for b in early] == [
        "2000-01-03",
        "2000-01-04",
        "2000-01-05",
        "2000-01-06",
        "2000-01-07",
    ]


async def test_paper_broker_errors(market: SimulatedMarket) -> None:
    broker = make_broker(market)
    with pytest.raises(BrokerError) as unknown:
        await broker.get_historical_candles("NOPE", "NSE", Timeframe.D1, utc(2024, 1, 1), NOW)
    assert unknown.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
    with pytest.raises(BrokerError) as too_many:
        await broker.get_historical_candles("TCS", "NSE", Timeframe.M1, utc(2024, 1, 1), NOW)
    assert too_many.value.code is ErrorCode.VALIDATION_ERROR
    assert str(MAX_HISTORY_BARS) in too_many.value.message
    with pytest.raises(BrokerError) as backwards:
        await broker.get_historical_candles("TCS", "NSE", Timeframe.D1, NOW, utc(2024, 1, 1))
    assert backwards.value.code is ErrorCode.VALIDATION_ERROR
    assert status_for(ErrorCode.INSTRUMENT_NOT_FOUND) == 404
    assert status_for(ErrorCode.VALIDATION_ERROR) == 422


class NoHistoryBroker(Broker):
    """A broker implementing only the abstract methods: no history API."""

    name = "nohistory"

    async def authenticate(self) -> bool:
        return True

    async def is_session_valid(self) -> bool:
        return True

    async def place_order(self, order: Any) -> str:
        raise NotImplementedError

    async def modify_order(self, broker_order_id: str, **changes: Any) -> None:
        raise NotImplementedError

    async def cancel_order(self, broker_order_id: str) -> None:
        raise NotImplementedError

    async def get_order(self, broker_order_id: str) -> BrokerOrderState:
        raise NotImplementedError

    async def get_orders(self) -> list[BrokerOrderState]:
        return []

    async def get_trades(self) -> list[Any]:
        return []

    async def get_positions(self) -> list[dict[str, Any]]:
        return []

    async def get_balance(self) -> dict[str, Any]:
        return {}

    async def get_market_data(self, symbol: str, exchange: str) -> dict[str, Any]:
        return {}


async def test_brokers_without_history_say_so_with_a_client_error() -> None:
    broker = NoHistoryBroker(BrokerConfigData("cfg", "usr", "nohistory"))
    with pytest.raises(BrokerNotSupported) as info:
        await broker.get_historical_candles("TCS", "NSE", Timeframe.D1, utc(2024, 1, 1), NOW)
    assert info.value.code is ErrorCode.BROKER_NOT_SUPPORTED
    assert "nohistory" in info.value.message and "historical" in info.value.message
    assert 400 <= status_for(info.value.code) < 500


# -- the cache ---------------------------------------------------------------------------------
async def test_second_request_is_served_from_the_cache(
    service: CandleService, fetch: CountingFetch, market: SimulatedMarket
) -> None:
    start, end = utc(2024, 1, 1), utc(2024, 2, 1)
    first = await service.get("paper", fetch, "TCS", "NSE", "1d", start, end)
    assert len(fetch.calls) == 1
    assert first == market.historical_bars("TCS", "NSE", "1d", start, end)
    second = await service.get("paper", fetch, "TCS", "NSE", "1d", start, end)
    assert len(fetch.calls) == 1  # covered: no broker call
    assert second == first
    assert [str(b.close) for b in second] == [str(b.close) for b in first]
    # A sub-range is covered too; another timeframe, symbol or broker is not.
    await service.get("paper", fetch, "TCS", "NSE", "1d", utc(2024, 1, 8), utc(2024, 1, 13))
    assert len(fetch.calls) == 1
    await service.get("paper", fetch, "TCS", "NSE", "1h", start, utc(2024, 1, 3))
    await service.get("paper", fetch, "INFY", "NSE", "1d", start, end)
    await service.get("other", fetch, "TCS", "NSE", "1d", start, end)
    assert len(fetch.calls) == 4
    assert await count_rows(service.db, broker="paper", symbol="TCS", timeframe="1d") == 23


async def test_a_partly_cached_range_fetches_only_the_missing_span(
    service: CandleService, fetch: CountingFetch, market: SimulatedMarket
) -> None:
    await service.get("paper", fetch, "SBIN", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 11))
    assert fetch.calls[-1][3:] == (utc(2024, 1, 1, 3, 45), utc(2024, 1, 10, 10, 0))
    bars = await service.get("paper", fetch, "SBIN", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 20))
    assert len(fetch.calls) == 2
    # Only from Thursday 11th (the first missing session) to Friday 19th's close.
    assert fetch.calls[-1][3:] == (utc(2024, 1, 11, 3, 45), utc(2024, 1, 19, 10, 0))
    assert bars == market.historical_bars("SBIN", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 20))
    # A hole in the middle: only the span around it is fetched again.
    async with service.db() as session, session.begin():
        await session.execute(delete(CandleRow).where(CandleRow.start == utc(2024, 1, 15, 3, 45)))
    again = await service.get(
        "paper", fetch, "SBIN", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 20)
    )
    assert fetch.calls[-1][3:] == (utc(2024, 1, 15, 3, 45), utc(2024, 1, 15, 10, 0))
    assert again == bars


async def test_large_gaps_are_fetched_in_chunks(
    db: async_sessionmaker[AsyncSession], fetch: CountingFetch, market: SimulatedMarket
) -> None:
    chunked = CandleService(db, clock=lambda: NOW, fetch_chunk=100, batch_size=64)
    start, end = utc(2024, 4, 1), utc(2024, 4, 3)  # two sessions of 375 minutes
    seen: list[tuple[str, int, int | None]] = []
    bars = await chunked.get(
        "paper",
        fetch,
        "TCS",
        "NSE",
        "1m",
        start,
        end,
        progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    assert len(bars) == 750 and len(fetch.calls) == 8
    assert bars == market.historical_bars("TCS", "NSE", "1m", start, end)
    assert seen[-1] == ("fetching", 750, 750)
    assert await count_rows(db, timeframe="1m") == 750


async def test_the_forming_bar_is_never_cached(
    service: CandleService, fetch: CountingFetch
) -> None:
    today = await service.get("paper", fetch, "TCS", "NSE", "5m", utc(2025, 6, 4), utc(2025, 6, 5))
    assert today[-1].end == NOW  # 13:25-13:30 IST just completed; nothing after it
    assert await service.get("paper", fetch, "TCS", "NSE", "1d", utc(2025, 6, 4), NOW) == []
    async with service.db() as session:
        latest = (await session.execute(select(func.max(CandleRow.start)))).scalar_one()
    assert latest == NOW - timedelta(minutes=5)
    calls = len(fetch.calls)
    await service.get("paper", fetch, "TCS", "NSE", "5m", utc(2025, 6, 4), utc(2025, 6, 5))
    assert len(fetch.calls) == calls  # complete windows are all cached: covered


async def test_cache_only_reads_never_fetch(
    service: CandleService, fetch: CountingFetch, market: SimulatedMarket
) -> None:
    assert await service.cached("paper", "TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 2, 1)) == []
    await service.get("paper", fetch, "TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 15))
    cached = await service.cached("paper", "TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 2, 1))
    assert cached == market.historical_bars("TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 1, 15))
    assert len(fetch.calls) == 1


async def test_bad_queries_are_validation_errors(service: CandleService) -> None:
    for args in (
        ("TCS", "NASDAQ", "1d", utc(2024, 1, 1), NOW),
        ("TCS", "NSE", "2d", utc(2024, 1, 1), NOW),
        ("TCS", "NSE", "1d", NOW, utc(2024, 1, 1)),
        ("TCS", "NSE", "1m", utc(2000, 1, 1), NOW),  # far more than MAX_QUERY_BARS
    ):
        with pytest.raises(DomainError) as info:
            await service.get("paper", None, *args)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.VALIDATION_ERROR, args


# -- CSV ---------------------------------------------------------------------------------------
async def test_csv_round_trip_into_a_fresh_database(
    service: CandleService, fetch: CountingFetch, tmp_path: Path
) -> None:
    wanted = [
        ("TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 3, 1)),
        ("TCS", "NSE", "15m", utc(2024, 2, 1), utc(2024, 2, 6)),
        ("BTCUSDT", "CRYPTO", "1h", utc(2024, 2, 1), utc(2024, 2, 4)),
    ]
    originals: list[list[Bar]] = []
    files: list[Path] = []
    for n, (symbol, exchange, timeframe, start, end) in enumerate(wanted):
        path = tmp_path / f"export-{n}.csv"
        written = await service.export_csv(
            path, "paper", symbol, exchange, timeframe, start, end, fetch=fetch
        )
        originals.append(await service.cached("paper", symbol, exchange, timeframe, start, end))
        assert written == len(originals[-1]) > 0
        files.append(path)
    header, first = path.read_text().splitlines()[:2]
    assert header == ",".join(CSV_COLUMNS)
    assert first.startswith("BTCUSDT,CRYPTO,1h,2024-02-01T00:00:00+00:00,")

    fresh_engine, fresh_db = await open_db(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    fresh = CandleService(fresh_db, clock=lambda: NOW)
    async with service.db() as session, session.begin():
        await session.execute(delete(CandleRow))
    try:
        for target in (fresh, service):  # a new SQLite file, and this database emptied
            for path in files:
                await target.import_csv(path, "paper")
            for path in files:  # re-importing changes nothing
                await target.import_csv(path, "paper")
            for (symbol, exchange, timeframe, start, end), original in zip(
                wanted, originals, strict=True
            ):
                got = await target.cached("paper", symbol, exchange, timeframe, start, end)
                assert got == original
            assert await count_rows(target.db) == sum(len(o) for o in originals)
    finally:
        await fresh_engine.dispose()


async def test_import_accepts_offsets_and_replaces_stored_bars(service: CandleService) -> None:
    text = (
        "Symbol, Exchange ,timeframe,start,open,high,low,close,volume\n"
        "tcs,nse,1d,2024-01-02T09:15:00+05:30,100.05,101,99.5,100.5,1000\n"
        "\n"
        "TCS,NSE,1h,2024-01-02T15:15:00+05:30,100,100,100,100,0\n"
    )
    assert await service.import_csv(io.StringIO(text), "Paper") == 2
    bars = await service.cached("paper", "TCS", "NSE", "1d", utc(2024, 1, 2), utc(2024, 1, 3))
    assert [(b.start, b.end, b.open, b.high, b.volume) for b in bars] == [
        (utc(2024, 1, 2, 3, 45), utc(2024, 1, 2, 10, 0), Decimal("100.05"), Decimal(101), 1000)
    ]
    last_hour = await service.cached("paper", "TCS", "NSE", "1h", utc(2024, 1, 2), utc(2024, 1, 3))
    assert last_hour[0].end == utc(2024, 1, 2, 10, 0)  # the short 15:15-15:30 bar
    changed = text.replace("100.5,1000", "100.75,2000")
    await service.import_csv(io.StringIO(changed), "paper")
    bars = await service.cached("paper", "TCS", "NSE", "1d", utc(2024, 1, 2), utc(2024, 1, 3))
    assert (bars[0].close, bars[0].volume) == (Decimal("100.75"), 2000)
    assert await count_rows(service.db) == 2


GOOD = "TCS,NSE,1d,2024-01-02T03:45:00+00:00,100,101,99,100.5,1000"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("TCS,NSE,1d,2024-13-02T03:45:00+00:00,100,101,99,100.5,1000", "not an ISO-8601"),
        ("TCS,NSE,1d,2024-01-03T03:45:00,100,101,99,100.5,1000", "no UTC offset"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,98,99,100.5,1000", "high 98 is below low 99"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,101,99,100.5,-1", "must not be negative"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,101,99,100.5,1.5", "not a whole number"),
        ("TCS,NSE,2d,2024-01-03T03:45:00+00:00,100,101,99,100.5,1000", "unknown timeframe '2d'"),
        ("TCS,NYSE,1d,2024-01-03T03:45:00+00:00,100,101,99,100.5,1000", "unknown exchange"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,abc,101,99,100.5,1000", "open 'abc' is not a"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,101,99,NaN,1000", "close 'NaN' is not a"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,101,0,100.5,1000", "must be positive"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,102,101,99,100.5,1000", "open 102 is outside"),
        ("TCS,NSE,5m,2024-01-03T03:47:00+00:00,100,101,99,100.5,1000", "not the start of a 5m"),
        ("TCS,NSE,1d,2024-01-06T03:45:00+00:00,100,101,99,100.5,1000", "not the start of a 1d"),
        ("TCS,NSE,1d,2025-06-04T03:45:00+00:00,100,101,99,100.5,1000", "not complete yet"),
        ("TCS,NSE,1d,2024-01-03T03:45:00+00:00,100,101,99,100.5", "expected 9 fields"),
        (GOOD.replace("1000", "7"), "repeats the bar of line 2"),
    ],
)
async def test_a_bad_line_is_reported_with_its_number_and_nothing_is_written(
    service: CandleService, bad: str, message: str
) -> None:
    other = "INFY,NSE,1d,2024-01-02T03:45:00+00:00,1500,1510,1490,1505,10"
    text = "\n".join([",".join(CSV_COLUMNS), GOOD, other, bad, other.replace("INFY", "SBIN")])
    with pytest.raises(CandleCsvError) as info:
        await service.import_csv(io.StringIO(text + "\n"), "paper")
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    assert [line for line, _ in info.value.errors] == [4]
    assert message in info.value.errors[0][1], info.value.errors
    assert "line 4" in info.value.message and "nothing imported" in info.value.message
    assert await count_rows(service.db) == 0


async def test_bad_headers_and_many_bad_lines(service: CandleService) -> None:
    with pytest.raises(CandleCsvError, match="missing columns volume; unknown columns vol"):
        await service.import_csv(
            io.StringIO("symbol,exchange,timeframe,start,open,high,low,close,vol\n")
        )
    with pytest.raises(CandleCsvError, match="empty"):
        await service.import_csv(io.StringIO(""))
    rows = [",".join(CSV_COLUMNS)] + [GOOD.replace("100,101", "100,1")] * 30
    with pytest.raises(CandleCsvError) as info:
        await service.import_csv(io.StringIO("\n".join(rows)))
    assert info.value.error_count == 30 and len(info.value.errors) == 20
    assert info.value.errors[0][0] == 2 and "and 10 more" in info.value.message
    with pytest.raises(DomainError, match="cannot open"):
        await service.import_csv("/nonexistent/candles.csv")
    assert await count_rows(service.db) == 0


# -- the command line --------------------------------------------------------------------------
def run_cli(args: list[str], database_url: str, data_dir: Path, stdin: str | None = None) -> Any:
    env = {
        "DATABASE_URL": database_url,
        "TRADING_BACKEND_DATA_DIR": str(data_dir),
        "ENVIRONMENT": "test",
        "MARKET_SEED": str(SEED),
        "COLUMNS": "200",
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(data_cli.app, args, env=env, input=stdin)
    finally:
        get_settings.cache_clear()


async def test_cli_export_and_import(
    database_url: str, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    data_dir = tmp_path / "cli-data"
    out = tmp_path / "tcs.csv"
    args = ["export", "--symbol", "tcs", "--from", "2024-01-01", "--to", "2024-01-31"]

    empty = await asyncio.to_thread(
        run_cli, [*args, "--no-fetch", "-o", str(out)], database_url, data_dir
    )
    assert empty.exit_code == 0, empty.output
    assert out.read_text() == ",".join(CSV_COLUMNS) + "\n"

    fetched = await asyncio.to_thread(
        run_cli, [*args, "--output", str(out)], database_url, data_dir
    )
    assert fetched.exit_code == 0, fetched.output
    assert "exported 23 1d candles of NSE:TCS" in fetched.output
    expected = make_market(now=datetime.now(UTC)).historical_bars(
        "TCS", "NSE", "1d", utc(2024, 1, 1), utc(2024, 2, 1)
    )
    rows = list(csv.DictReader(out.open()))
    assert [(r["start"], r["close"]) for r in rows] == [
        (b.start.isoformat(), format(b.close.normalize(), "f")) for b in expected
    ]

    # To standard output: nothing but the CSV there (logs and progress go to stderr).
    stdout = await asyncio.to_thread(run_cli, [*args, "--no-fetch"], database_url, data_dir)
    assert stdout.exit_code == 0, stdout.output
    assert stdout.stdout == out.read_text()

    async with db() as session, session.begin():
        await session.execute(delete(CandleRow))
    imported = await asyncio.to_thread(run_cli, ["import", str(out)], database_url, data_dir)
    assert imported.exit_code == 0, imported.output
    assert "imported 23 candles into the paper cache" in imported.output
    piped = await asyncio.to_thread(
        run_cli, ["import", "-", "--broker", "backup"], database_url, data_dir, out.read_text()
    )
    assert piped.exit_code == 0, piped.output
    assert (
        await count_rows(db, broker="paper") == 23 and await count_rows(db, broker="backup") == 23
    )

    bad = tmp_path / "bad.csv"
    lines = out.read_text().splitlines()
    fields = lines[5].split(",")
    fields[CSV_COLUMNS.index("close")] = "x"
    lines[5] = ",".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    rejected = await asyncio.to_thread(run_cli, ["import", str(bad)], database_url, data_dir)
    assert rejected.exit_code == 1
    assert "nothing imported" in rejected.output and "line 6: close 'x' is not a number" in (
        rejected.output
    )

    for wrong, text in (
        (["export", "--symbol", "NOPE"], "INSTRUMENT_NOT_FOUND"),
        (["export", "--symbol", "TCS", "--timeframe", "2d"], "unknown timeframe"),
        (["export", "--symbol", "TCS", "--from", "yesterday"], "--from 'yesterday'"),
        (["export", "--symbol", "TCS", "--broker", "zerodha", "--fetch"], "--no-fetch"),
        (["import", str(tmp_path / "missing.csv")], "cannot open"),
    ):
        result = await asyncio.to_thread(run_cli, wrong, database_url, data_dir)
        assert result.exit_code == 1, (wrong, result.output)
        assert text in result.output, (wrong, result.output)
