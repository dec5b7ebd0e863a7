"""Portfolio analytics: live P&L per broker account and strategy, the equity curve from
periodic snapshots, and the backtests' metrics on it (docs/analytics.md).

* ``GET /api/v1/portfolio/analytics``: the caller's whole portfolio, one account
  (``broker_config_id``) or one strategy (``strategy_id``); ``from``/``to`` bound the
  curve and the metrics (the totals are always as of now). Another user's ids are 404s
  exactly like unknown ones.
* ``POST /api/v1/portfolio/snapshots``: record the caller's snapshot now (the periodic
  job records everyone's every PORTFOLIO_SNAPSHOT_SECONDS).

Money is sent as decimal strings: exact, like the metrics' ``to_dict``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.api.deps import RuntimeDep, UserDep
from trading_backend.api.schemas import ErrorOut
from trading_backend.domain import DomainError, ErrorCode

router = APIRouter(prefix="/api/v1/portfolio", tags=["portfolio"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"


class FiguresOut(BaseModel):
    capital: str | None = Field(description="the base of the equity; null when unknown")
    equity: str = Field(description="capital + net P&L")
    realised_pnl: str = Field(description="average-cost realised P&L, before charges")
    unrealised_pnl: str
    day_pnl: str = Field(description="today's (IST) P&L net of today's charges")
    charges: str
    net_pnl: str = Field(description="realised + unrealised - charges")
    open_positions: int
    fills: int


class AccountOut(FiguresOut):
    broker_config_id: str
    name: str | None
    broker: str


class StrategyPartOut(FiguresOut):
    strategy_id: str | None = Field(description="null: the account's manual orders")
    name: str | None
    broker_config_id: str
    manual: bool


class CurvePointOut(BaseModel):
    timestamp: datetime
    equity: str


class AnalyticsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    user_id: str
    scope: str = Field(description="user:<id>, account:<config id> or strategy:<id>")
    broker_config_id: str | None
    strategy_id: str | None
    as_of: datetime
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    totals: FiguresOut
    accounts: list[AccountOut]
    strategies: list[StrategyPartOut]
    equity_curve: list[CurvePointOut] = Field(description="at most 1,000 points")
    equity_curve_points: int = Field(description="points before downsampling")
    trading_days_per_year: int
    day_timezone: str
    metrics: dict[str, str | bool | int | float | None] = Field(
        description="PerformanceReport.to_dict(): money as strings, null where undefined"
    )


class SnapshotOut(BaseModel):
    taken_at: datetime
    rows: int = Field(description="scopes recorded (those with at least one fill)")


def _utc(value: datetime | None, name: str) -> datetime | None:
    """Times without an offset are UTC; one that UTC cannot represent is a 422."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise DomainError(f"{name!r} is out of range", ErrorCode.VALIDATION_ERROR) from None


@router.get("/analytics", response_model=AnalyticsOut, responses=ERRORS)
async def analytics(
    user: UserDep,
    runtime: RuntimeDep,
    broker_config_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="one account"),
    ] = None,
    strategy_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="one strategy"),
    ] = None,
    from_: Annotated[
        datetime | None, Query(alias="from", description="curve start (ISO 8601, UTC if naive)")
    ] = None,
    to: Annotated[datetime | None, Query(description="curve end (ISO 8601, UTC if naive)")] = None,
    risk_free_rate: Annotated[
        float,
        Query(gt=-1.0, le=1.0, allow_inf_nan=False, description="annual, e.g. 0.065"),
    ] = 0.0,
) -> dict[str, Any]:
    """Totals, per-account and per-strategy P&L, the equity curve and its metrics."""
    return await runtime.portfolio.analytics(
        user.id,
        config_id=broker_config_id,
        strategy_id=strategy_id,
        start=_utc(from_, "from"),
        end=_utc(to, "to"),
        risk_free_rate=risk_free_rate,
    )


@router.post("/snapshots", status_code=201, response_model=SnapshotOut, responses=ERRORS)
async def take_snapshot(user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Record the caller's portfolio now (every scope with a fill)."""
    taken_at = runtime.portfolio.now()
    rows = await runtime.portfolio.snapshot(user.id, at=taken_at)
    return {"taken_at": taken_at, "rows": rows}
