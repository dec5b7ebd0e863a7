"""Backtests as background jobs: submit a config, poll for status, metrics, curve, trades.

The body is a backtest config as ``parse_config`` takes it plus where the bars come from:
``paper`` (the candle cache, gaps filled from the paper broker's synthetic history) or
``database`` (the candle cache of ``broker`` alone). File paths are never accepted: the
server reads no user-named files. Every route is scoped to the caller: another user's job
is a 404. See ``backtest/jobs.py`` for the job lifecycle and limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.api.deps import RuntimeDep, UserDep
from trading_backend.api.schemas import ErrorOut
from trading_backend.backtest.jobs import JobView, jobs_for

router = APIRouter(prefix="/api/v1/backtests", tags=["backtests"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
    429: {"model": ErrorOut},
}


class BacktestIn(BaseModel):
    """A config as ``parse_config`` takes it (validated by it, errors listed per field)."""

    model_config = ConfigDict(extra="allow")
    strategy: str = Field(min_length=1, max_length=64, description="strategy kind")
    data_source: Literal["paper", "database"] = Field(
        "paper", description="paper: cache + paper history; database: the cache alone"
    )
    broker: str = Field(
        "paper", pattern=r"^[a-z0-9_]{1,32}$", description="whose candle cache (database)"
    )


class BacktestOut(BaseModel):
    backtest_id: str
    status: Literal["QUEUED", "RUNNING", "DONE", "FAILED"]
    strategy: str
    data_source: str
    config: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class BacktestDetailOut(BacktestOut):
    metrics: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    equity_curve: list[dict[str, Any]] = Field(default_factory=list)
    fills: list[dict[str, Any]] = Field(default_factory=list)
    orders: list[dict[str, Any]] = Field(default_factory=list)


SUMMARY_KEYS = (
    "instruments",
    "timeframe",
    "initial_capital",
    "final_equity",
    "total_charges",
    "bars_processed",
    "elapsed_seconds",
    "completed",
)


def _out(view: JobView) -> dict[str, Any]:
    return {
        "backtest_id": view.id,
        "status": view.status,
        "strategy": view.strategy,
        "data_source": view.data_source,
        "config": view.config,
        "error": view.error,
        "created_at": view.created_at,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
    }


def _detail(view: JobView) -> dict[str, Any]:
    result = view.result or {}
    return {
        **_out(view),
        "metrics": result.get("metrics"),
        "summary": {k: result[k] for k in SUMMARY_KEYS if k in result} or None,
        "equity_curve": result.get("equity_curve", []),
        "fills": result.get("fills", []),
        "orders": result.get("orders", []),
    }


@router.post("", status_code=202, response_model=BacktestOut, responses=ERRORS)
async def submit_backtest(body: BacktestIn, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Validate now (422 with the bad fields), run in the background (202: poll GET)."""
    config = body.model_dump(exclude={"data_source", "broker"})
    view = await jobs_for(runtime).submit(user.id, config, body.data_source, body.broker)
    return _out(view)


@router.get("", response_model=list[BacktestOut])
async def list_backtests(
    user: UserDep, runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[dict[str, Any]]:
    """The caller's jobs, newest first (without results: GET one for them)."""
    return [_out(v) for v in await jobs_for(runtime).list(user.id, limit)]


@router.get("/{backtest_id}", response_model=BacktestDetailOut, responses=ERRORS)
async def get_backtest(backtest_id: str, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Status, config, metrics, the equity curve (at most 500 points), fills and orders."""
    return _detail(await jobs_for(runtime).get(user.id, backtest_id))


@router.delete("/{backtest_id}", status_code=204, responses=ERRORS)
async def delete_backtest(backtest_id: str, user: UserDep, runtime: RuntimeDep) -> None:
    """Forget a finished job (409 while it runs)."""
    await jobs_for(runtime).delete(user.id, backtest_id)
