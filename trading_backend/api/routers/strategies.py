"""Strategies: create from a kind (built-in or plugged in), start, stop, inspect.

Every route is scoped to the caller: another user's strategy id is a 404. Parameters are
validated against the kind's model (``GET /api/v1/strategies/kinds`` publishes each
kind's JSON schema).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.api.deps import RuntimeDep, UserDep
from trading_backend.api.schemas import ErrorOut, numbers
from trading_backend.strategies.service import StrategyView

router = APIRouter(prefix="/api/v1/strategies", tags=["strategies"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


class StrategyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    kind: str = Field(min_length=1, max_length=64, description="see GET /api/v1/strategies/kinds")
    config_id: str = Field(min_length=1, max_length=64, description="the broker account it trades")
    params: dict[str, Any] = Field(default_factory=dict, description="validated per kind")


class StrategyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=100)
    params: dict[str, Any] | None = None


class StrategyOut(BaseModel):
    strategy_id: str
    name: str
    kind: str
    config_id: str
    params: dict[str, Any]
    status: str
    state: dict[str, Any]
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None


class KindOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str
    category: str
    params_schema: dict[str, Any]


class LogEntryOut(BaseModel):
    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


class PerformanceOut(BaseModel):
    strategy_id: str
    realised_pnl: float
    unrealised_pnl: float
    charges: float
    net_pnl: float
    trades: int
    round_trips: int
    winning_round_trips: int
    win_rate: float | None
    signals: int
    open_positions: int
    recent_log: list[LogEntryOut]


def _out(view: StrategyView) -> dict[str, Any]:
    return {
        "strategy_id": view.id,
        "name": view.name,
        "kind": view.kind,
        "config_id": view.config_id,
        "params": view.params,
        "status": view.status,
        "state": view.state,
        "error": view.error,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        "started_at": view.started_at,
        "stopped_at": view.stopped_at,
    }


@router.get("/kinds", response_model=list[KindOut])
async def kinds(_: UserDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Every strategy kind this deployment knows, with its parameter schema."""
    return runtime.strategies.kinds()


@router.post("", status_code=201, response_model=StrategyOut, responses=ERRORS)
async def create_strategy(body: StrategyIn, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    view = await runtime.strategies.create(
        user.id, body.name, body.kind, body.config_id, body.params
    )
    return _out(view)


@router.get("", response_model=list[StrategyOut])
async def list_strategies(user: UserDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    return [_out(v) for v in await runtime.strategies.list(user.id)]


@router.get("/{strategy_id}", response_model=StrategyOut, responses=ERRORS)
async def get_strategy(strategy_id: str, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    return _out(await runtime.strategies.get(user.id, strategy_id))


@router.patch("/{strategy_id}", response_model=StrategyOut, responses=ERRORS)
async def update_strategy(
    strategy_id: str, body: StrategyPatch, user: UserDep, runtime: RuntimeDep
) -> dict[str, Any]:
    view = await runtime.strategies.update(user.id, strategy_id, name=body.name, params=body.params)
    return _out(view)


@router.delete("/{strategy_id}", status_code=204, responses=ERRORS)
async def delete_strategy(strategy_id: str, user: UserDep, runtime: RuntimeDep) -> None:
    await runtime.strategies.delete(user.id, strategy_id)


@router.post("/{strategy_id}/start", response_model=StrategyOut, responses=ERRORS)
async def start_strategy(strategy_id: str, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    return _out(await runtime.strategies.start(user.id, strategy_id))


@router.post("/{strategy_id}/stop", response_model=StrategyOut, responses=ERRORS)
async def stop_strategy(strategy_id: str, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    return _out(await runtime.strategies.stop(user.id, strategy_id))


@router.get("/{strategy_id}/performance", response_model=PerformanceOut, responses=ERRORS)
async def performance(
    strategy_id: str,
    user: UserDep,
    runtime: RuntimeDep,
    log_entries: Annotated[int, Query(ge=0, le=500)] = 20,
) -> dict[str, Any]:
    perf = await runtime.strategies.performance(user.id, strategy_id, log_entries=log_entries)
    return numbers(
        {
            "strategy_id": perf.strategy_id,
            "realised_pnl": perf.realised_pnl,
            "unrealised_pnl": perf.unrealised_pnl,
            "charges": perf.charges,
            "net_pnl": perf.net_pnl,
            "trades": perf.trades,
            "round_trips": perf.round_trips,
            "winning_round_trips": perf.winning_round_trips,
            "win_rate": perf.win_rate,
            "signals": perf.signals,
            "open_positions": perf.open_positions,
            "recent_log": [
                {"id": e.id, "kind": e.kind, "data": e.data, "created_at": e.created_at}
                for e in perf.recent_log
            ],
        }
    )


@router.get("/{strategy_id}/logs", response_model=list[LogEntryOut], responses=ERRORS)
async def logs(
    strategy_id: str,
    user: UserDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    kind: Annotated[str | None, Query(max_length=16)] = None,
) -> list[dict[str, Any]]:
    entries = await runtime.strategies.logs(user.id, strategy_id, limit=limit, kind=kind)
    return [
        {"id": e.id, "kind": e.kind, "data": e.data, "created_at": e.created_at} for e in entries
    ]
