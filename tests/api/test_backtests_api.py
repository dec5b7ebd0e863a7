"""POST/GET /api/v1/backtests: validated at once, run in the background, owner-scoped,
rate-limited, and interrupted jobs marked FAILED."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from tests.api.conftest import Account
from trading_backend.backtest.jobs import INTERRUPTED, jobs_for
from trading_backend.runtime import Runtime
from trading_backend.storage.models import BacktestRunRow

CONFIG = {
    "strategy": "sma_crossover",
    "params": {"symbol": "INFY", "timeframe": "1d", "fast_period": 5, "slow_period": 20,
               "quantity": 10},
    "symbols": ["NSE:INFY"],
    "timeframe": "1d",
    "start": "2024-01-01",
    "end": "2024-09-01",
    "data_source": "paper",
}  # fmt: skip


async def test_a_backtest_runs_in_the_background_and_only_its_owner_sees_it(
    client: httpx.AsyncClient, runtime: Runtime, alice: Account, bob: Account
) -> None:
    posted = await client.post("/api/v1/backtests", json=CONFIG, headers=alice.headers)
    assert posted.status_code == 202, posted.text
    job = posted.json()
    assert job["status"] in ("QUEUED", "RUNNING") and job["strategy"] == "sma_crossover"

    await jobs_for(runtime).wait(job["backtest_id"])
    got = await client.get(f"/api/v1/backtests/{job['backtest_id']}", headers=alice.headers)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["status"] == "DONE", body["error"]
    assert (
        body["summary"]["instruments"] == ["NSE:INFY"] and body["summary"]["bars_processed"] > 100
    )
    assert "sharpe" in body["metrics"] and body["metrics"]["trades"] >= 1
    assert 2 <= len(body["equity_curve"]) <= 500
    assert Decimal(body["equity_curve"][0]["equity"]) == Decimal("1000000")
    assert body["fills"] and {f["side"] for f in body["fills"]} <= {"BUY", "SELL"}

    other = await client.get(f"/api/v1/backtests/{job['backtest_id']}", headers=bob.headers)
    assert other.status_code == 404 and other.json()["error_code"] == "NOT_FOUND"
    mine = await client.get("/api/v1/backtests", headers=alice.headers)
    assert [j["backtest_id"] for j in mine.json()] == [job["backtest_id"]]
    assert (await client.get("/api/v1/backtests", headers=bob.headers)).json() == []
    assert (
        await client.delete(f"/api/v1/backtests/{job['backtest_id']}", headers=bob.headers)
    ).status_code == 404
    gone = await client.delete(f"/api/v1/backtests/{job['backtest_id']}", headers=alice.headers)
    assert gone.status_code == 204


async def test_a_bad_config_is_refused_synchronously_with_an_error_code(
    client: httpx.AsyncClient, alice: Account
) -> None:
    cases = [
        {**CONFIG, "params": {**CONFIG["params"], "fast_period": 30}},  # fast >= slow
        {**CONFIG, "strategy": "no_such_kind"},
        {**CONFIG, "csv": "/etc/passwd"},  # no file paths: an unknown field
        {**CONFIG, "start": "2024-09-01", "end": "2024-01-01"},
        {**CONFIG, "data_source": "file"},
        {"params": {}},  # no strategy
        # The strategy asks for 15m bars of INFY while the run would replay daily bars.
        {**CONFIG, "params": {**CONFIG["params"], "timeframe": "15m"}},
        # ... or for another instrument than the one replayed.
        {**CONFIG, "params": {**CONFIG["params"], "symbol": "TCS"}},
    ]
    for body in cases:
        answer = await client.post("/api/v1/backtests", json=body, headers=alice.headers)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error_code"] == "VALIDATION_ERROR"
    assert (await client.get("/api/v1/backtests", headers=alice.headers)).json() == []


async def test_the_strategy_follows_the_runs_symbol_and_timeframe(
    client: httpx.AsyncClient, runtime: Runtime, alice: Account
) -> None:
    """As on the command line: params that do not name the instrument or the timeframe
    take the run's, so the strategy trades what is replayed."""
    body = {**CONFIG, "symbols": ["NSE:TCS"], "params": {"fast_period": 5, "slow_period": 20}}
    posted = await client.post("/api/v1/backtests", json=body, headers=alice.headers)
    assert posted.status_code == 202, posted.text
    await jobs_for(runtime).wait(posted.json()["backtest_id"])
    got = (
        await client.get(f"/api/v1/backtests/{posted.json()['backtest_id']}", headers=alice.headers)
    ).json()
    assert got["status"] == "DONE", got["error"]
    assert got["config"]["params"]["symbol"] == "TCS"
    assert got["config"]["params"]["timeframe"] == "1d"
    assert got["summary"]["instruments"] == ["NSE:TCS"]


async def test_too_many_unfinished_jobs_is_a_429(
    client: httpx.AsyncClient, runtime: Runtime, alice: Account, bob: Account
) -> None:
    jobs = jobs_for(runtime)
    jobs.hold()  # jobs stay QUEUED until released: the limits are seen without racing
    try:
        ids = []
        for _ in range(jobs.max_per_user):
            posted = await client.post("/api/v1/backtests", json=CONFIG, headers=alice.headers)
            assert posted.status_code == 202, posted.text
            ids.append(posted.json()["backtest_id"])
        refused = await client.post("/api/v1/backtests", json=CONFIG, headers=alice.headers)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "RATE_LIMITED"
        assert refused.json()["details"]["limit"] == "per_user"

        jobs.max_running = len(ids) + 1  # one more job fits this process
        posted = await client.post("/api/v1/backtests", json=CONFIG, headers=bob.headers)
        assert posted.status_code == 202, posted.text
        ids.append(posted.json()["backtest_id"])
        full = await client.post("/api/v1/backtests", json=CONFIG, headers=bob.headers)
        assert full.status_code == 429 and full.json()["details"]["limit"] == "per_process"
        queued = await client.get(f"/api/v1/backtests/{ids[0]}", headers=alice.headers)
        assert queued.json()["status"] == "QUEUED"
    finally:
        jobs.release()
    for job_id in ids:
        await jobs.wait(job_id)
    again = await client.post("/api/v1/backtests", json=CONFIG, headers=alice.headers)
    assert again.status_code == 202, again.text
    await jobs.wait(again.json()["backtest_id"])


async def test_a_job_interrupted_by_a_restart_is_failed_at_start_up(
    client: httpx.AsyncClient, runtime: Runtime, alice: Account
) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with runtime.db() as session:
        session.add(
            BacktestRunRow(
                id="bt_old", user_id=alice.user_id, status="RUNNING", strategy="sma_crossover",
                data_source="paper", config=CONFIG, runner="backtests:gone-process",
                created_at=long_ago, started_at=long_ago, heartbeat_at=long_ago,
            )
        )  # fmt: skip
        await session.commit()
    got = await client.get("/api/v1/backtests/bt_old", headers=alice.headers)
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "FAILED" and got.json()["error"] == INTERRUPTED
