"""``trading-backend instruments load|search`` through typer's CliRunner: a file load with
progress and summary, the refusal of a truncated file (table kept), search output."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from trading_backend import cli, instruments_cli
from trading_backend.brokers.angel_one.fake.scrip_master import (
    generate_scrip_master,
    write_scrip_master,
)
from trading_backend.marketdata.instruments import ANGEL_ONE, InstrumentStore
from trading_backend.settings import get_settings
from trading_backend.storage.database import create_engine, session_factory


def run_cli(args: list[str], database_url: str, data_dir: Path, **env: str) -> Any:
    environment = {
        "DATABASE_URL": database_url,
        "TRADING_BACKEND_DATA_DIR": str(data_dir),
        "ENVIRONMENT": "test",
        "COLUMNS": "200",
        **env,
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(instruments_cli.app, args, env=environment)
    finally:
        get_settings.cache_clear()


async def count(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        return await InstrumentStore(session_factory(engine)).count(ANGEL_ONE)
    finally:
        await engine.dispose()


async def test_load_a_file_with_progress_then_search(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rows = generate_scrip_master(2000, today=date.today())
    rows.append({"token": "1", "symbol": "BAD", "instrumenttype": "WEIRD"})
    path = tmp_path / "OpenAPIScripMaster.json"
    write_scrip_master(path, rows)

    loaded = await asyncio.to_thread(
        run_cli, ["load", "--file", str(path), "--all"], database_url, data_dir
    )
    assert loaded.exit_code == 0, loaded.output
    assert "loaded 2000 angel_one instruments (replacing 0)" in loaded.output
    assert "2001 rows read, 1 skipped" in loaded.output
    assert "missing field exch_seg" in loaded.output  # the reasons are listed
    for phase in ("reading the instrument master", "parsing rows", "writing to the database"):
        assert phase in loaded.output
    assert "2000/2000" in loaded.output  # the write bar completed
    assert await count(database_url) == 2000

    found = await asyncio.to_thread(run_cli, ["search", "sbin"], database_url, data_dir)
    assert found.exit_code == 0, found.output
    first = next(line for line in found.output.splitlines() if "SBIN" in line)
    assert "NSE" in first and "3045" in first and "SBIN-EQ" in first

    capped = await asyncio.to_thread(
        run_cli,
        ["load", "--file", str(path), "--capped", "--force"],
        database_url,
        data_dir,
        MAX_EQUITY_INSTRUMENTS="20",
        MAX_DERIVATIVES_INSTRUMENTS="10",
    )
    assert capped.exit_code == 0, capped.output
    assert "(replacing 2000)" in capped.output
    indices = 28
    assert await count(database_url) == indices + 30
    gone = await asyncio.to_thread(run_cli, ["search", "sbin"], database_url, data_dir)
    assert "SBIN" not in gone.output  # not among the first 20 equities any more

    nothing = await asyncio.to_thread(run_cli, ["search", "zzzz"], database_url, data_dir)
    assert nothing.exit_code == 0 and "no angel_one instruments match 'zzzz'" in nothing.output


async def test_a_truncated_file_is_refused_and_the_table_kept(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    path = tmp_path / "OpenAPIScripMaster.json"
    write_scrip_master(path, generate_scrip_master(1000, today=date.today()))
    ok = await asyncio.to_thread(
        run_cli, ["load", "--file", str(path), "--all"], database_url, data_dir
    )
    assert ok.exit_code == 0, ok.output

    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(path.read_bytes()[:50_000])
    refused = await asyncio.to_thread(
        run_cli, ["load", "--file", str(truncated), "--all"], database_url, data_dir
    )
    assert refused.exit_code == 1
    assert "[VALIDATION_ERROR]" in refused.output and "not valid JSON" in refused.output

    partial = tmp_path / "partial.json"
    write_scrip_master(partial, generate_scrip_master(100, today=date.today()))
    small = await asyncio.to_thread(
        run_cli, ["load", "--file", str(partial), "--all"], database_url, data_dir
    )
    assert small.exit_code == 1
    assert "[CONFLICT]" in small.output and "refusing to replace 1000" in small.output
    assert await count(database_url) == 1000

    missing = await asyncio.to_thread(
        run_cli, ["load", "--file", str(tmp_path / "nope.json")], database_url, data_dir
    )
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    other = run_cli(["load", "--broker", "zerodha"], url, tmp_path)
    assert other.exit_code == 1 and "[BROKER_NOT_SUPPORTED]" in other.output
    both = run_cli(["load", "--file", "a.json", "--url", "http://x"], url, tmp_path)
    assert both.exit_code == 1 and "not both" in both.output
    bad_type = run_cli(["search", "SBIN", "--type", "BOND"], url, tmp_path)
    assert bad_type.exit_code == 1 and "[VALIDATION_ERROR]" in bad_type.output


def test_download_by_url(tmp_path: Path, monkeypatch: Any) -> None:
    """``--url`` downloads with httpx (the transport is swapped for a local answer)."""
    path = tmp_path / "OpenAPIScripMaster.json"
    write_scrip_master(path, generate_scrip_master(500, today=date.today()))
    payload = path.read_bytes()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=payload, headers={"content-length": str(len(payload))})

    real_client = httpx.AsyncClient

    def client(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(handler)
        return real_client(*args, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", client)
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    result = run_cli(
        ["load", "--all"], url, tmp_path, ANGEL_ONE_SCRIP_MASTER_URL="https://mirror.test/f.json"
    )
    assert result.exit_code == 0, result.output
    assert seen == ["https://mirror.test/f.json"]
    assert "loaded 500 angel_one instruments" in result.output
    assert "from https://mirror.test/f.json" in result.output


def test_the_group_is_registered_in_the_main_cli() -> None:
    names = {group.name for group in cli.app.registered_groups}
    assert "instruments" in names
