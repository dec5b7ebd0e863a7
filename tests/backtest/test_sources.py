"""Bar sources: CSV files and the candle cache (with the paper broker's history as the
fetch) give the engine the same bars, and so the same result, as memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.backtest.synthetic import daily_bars
from trading_backend.backtest import (
    Backtest,
    CandleSource,
    CsvSource,
    InMemorySource,
    paper_history,
)
from trading_backend.domain import DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.candles import CandleCsvError, CandleService, write_csv
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.models import CandleRow

CONFIG = {
    "strategy": "sma_crossover",
    "params": {
        "symbol": "INFY",
        "timeframe": "1d",
        "fast_period": 5,
        "slow_period": 20,
        "quantity": 5,
    },
}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    await upgrade_database(engine)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def fills(result) -> list[tuple[object, ...]]:
    return [(f.timestamp, f.side, f.price, f.quantity) for f in result.fills]


async def test_csv_files_replay_like_memory(tmp_path: Path) -> None:
    bars = daily_bars(200, seed=8)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    with first.open("w") as handle:
        write_csv(handle, bars[:120])
    with second.open("w") as handle:
        write_csv(handle, bars[120:])
    from_csv = await Backtest(CONFIG, CsvSource(first, second)).run()
    from_memory = await Backtest(CONFIG, InMemorySource(bars)).run()
    assert len(from_csv.fills) > 2
    assert fills(from_csv) == fills(from_memory)
    assert from_csv.equity_values == from_memory.equity_values
    # A range keeps only the bars that start in it.
    start, end = bars[50].start, bars[150].start
    ranged = await Backtest({**CONFIG, "start": start, "end": end}, CsvSource(first, second)).run()
    assert ranged.bars_processed == 100


async def test_a_bad_csv_file_is_refused_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "symbol,exchange,timeframe,start,open,high,low,close,volume\n"
        "INFY,NSE,1d,2024-01-02T03:45:00+00:00,100,99,98,100,10\n"
    )
    with pytest.raises(CandleCsvError) as caught:
        await Backtest(CONFIG, CsvSource(path)).run()
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert caught.value.errors == [(2, "open 100 is outside low 98 .. high 99")]
    assert "line 2" in caught.value.message


async def test_the_candle_cache_serves_and_fills_the_backtest(
    db: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime(2025, 6, 2, tzinfo=UTC)
    service = CandleService(db, clock=lambda: now)
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    cfg = {**CONFIG, "start": start, "end": end}
    history = paper_history(seed=42)
    fetched = await Backtest(cfg, CandleSource(service, "paper", history)).run()
    assert fetched.error is None and fetched.bars_processed > 200
    async with db() as session:
        stored = await session.scalar(select(func.count()).select_from(CandleRow))
    assert stored == fetched.bars_processed
    # Served from the table alone, the same bars give the same result.
    cached = await Backtest(cfg, CandleSource(service, "paper")).run()
    assert fills(cached) == fills(fetched)
    assert cached.equity_values == fetched.equity_values
    # And they are the paper broker's synthetic history.
    expected = await history("INFY", "NSE", Timeframe.D1, start, end)
    direct = await Backtest(cfg, InMemorySource(expected)).run()
    assert direct.equity_values == fetched.equity_values


async def test_an_empty_cache_is_an_instrument_without_bars(
    db: async_sessionmaker[AsyncSession],
) -> None:
    service = CandleService(db)
    end = datetime.now(UTC)
    source = CandleSource(service, "paper", default_span=timedelta(days=30))
    with pytest.raises(DomainError) as caught:
        await Backtest({**CONFIG, "end": end}, source).run()
    assert caught.value.code is ErrorCode.INSTRUMENT_NOT_FOUND


async def test_the_paper_history_knows_only_listed_instruments() -> None:
    fetch = paper_history()
    with pytest.raises(DomainError) as caught:
        await fetch(
            "NOPE",
            Exchange.NSE.value,
            Timeframe.D1,
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 2, 1, tzinfo=UTC),
        )
    assert caught.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
