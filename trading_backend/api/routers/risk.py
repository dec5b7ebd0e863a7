"""Risk: limits (the user's own, administrators' ceilings), status, kill switches, resets.

The engine and what it checks are described in docs/risk.md. Here:

* ``GET/PUT /api/v1/risk/limits``: the caller's limits, for the user or one of their broker
  accounts. A user may only tighten: a PUT that loosens a field beyond the ceiling is a
  422 ``VALIDATION_ERROR`` naming the fields.
* ``GET /api/v1/risk/status``: the trading state (and the scope it comes from) and every
  limit with its current usage, per account.
* ``POST /api/v1/risk/kill-switch``: halt an account, the user, or (SUPER_ADMIN) everyone;
  working orders are cancelled, strategies stopped, positions optionally squared off.
* ``POST /api/v1/risk/reset`` (ADMIN, SUPER_ADMIN for ``global``): back to ACTIVE.
* ``GET/PUT /api/v1/admin/risk/limits/{user_id}``: administrators' ceilings.

Another user's config id is a 404 ``CONFIG_NOT_FOUND``, exactly like one that does not
exist: ownership is checked here, before the service books anything under that id.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from trading_backend.accounts.service import UserInfo
from trading_backend.api.deps import (
    AdminDep,
    AuthDep,
    RuntimeDep,
    UserDep,
    admin_user,
    super_admin_user,
)
from trading_backend.api.schemas import ErrorOut, numbers
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.risk.engine import GLOBAL, Scope
from trading_backend.risk.limits import RiskLimits
from trading_backend.risk.service import CEILING, OWN, PERMISSIVE
from trading_backend.runtime import Runtime
from trading_backend.storage.models import BrokerConfig, RiskLimitRow, RiskStateRow, User
from trading_backend.storage.repositories import UserScopedReader

router = APIRouter(prefix="/api/v1/risk", tags=["risk"])
admin_router = APIRouter(prefix="/api/v1/admin/risk", tags=["admin", "risk"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"  # config and user ids (accounts.service.ID_RE)
USER_PATTERN = r"^[A-Za-z0-9_.@-]+$"  # a user id or a username
SCOPE_PATTERN = r"^[A-Za-z0-9_.:@-]+$"
USAGE_PARTS = ("per_order", "account", "user", "funds", "symbols", "pnl")  # of engine.usage
ConfigQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="one of your broker accounts (omitted: your user-wide limits/all accounts)",
    ),
]

# -- bodies ------------------------------------------------------------------------------
Money = Annotated[Decimal | None, Field(ge=0, max_digits=20, decimal_places=8)]
Count = Annotated[int | None, Field(ge=0, le=1_000_000_000)]


class LimitValuesIn(BaseModel):
    """Risk limits (docs/risk.md). Only the fields given count; ``null`` switches a limit
    off (which loosens it, so a user may send ``null`` only where the ceiling has none).
    Fields left out take the ceiling's value (own limits) or the deployment's default
    (an administrator's ceiling)."""

    model_config = ConfigDict(extra="forbid")
    max_order_value: Money = None
    max_order_quantity: Count = None
    max_open_orders: Count = None
    max_open_positions: Count = None
    max_symbol_exposure: Money = None
    max_gross_exposure: Money = None
    price_band_pct: Annotated[Decimal | None, Field(gt=0, max_digits=12, decimal_places=6)] = None
    order_rate_per_second: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    duplicate_window_seconds: Annotated[
        float | None, Field(gt=0, le=86_400, allow_inf_nan=False)
    ] = None
    daily_loss_limit: Money = None
    weekly_loss_limit: Money = None
    on_loss_breach: Literal["REDUCING", "HALTED"] | None = Field(
        default=None, description="the state a loss-limit breach moves the scope to"
    )
    square_off_on_breach: bool | None = Field(
        default=None, description="close the scope's positions on a loss-limit breach"
    )
    intraday_square_off: str | None = Field(
        default=None,
        max_length=8,
        pattern=r"^\d{2}:\d{2}(:\d{2})?$",
        description="when INTRADAY positions are closed, IST, like 15:15",
    )

    def given(self) -> dict[str, Any]:
        """The fields the caller sent (explicit nulls included), for ``RiskLimits.from_dict``."""
        return self.model_dump(exclude_unset=True)


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="a broker account's own limits (omitted: the user's, across accounts)",
    )
    limits: LimitValuesIn


class KillSwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["account", "user", "global"] = Field(
        description="account (config_id needed), your user, or global (SUPER_ADMIN)"
    )
    config_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=ID_PATTERN)
    flatten: bool = Field(default=False, description="also close the scope's positions at market")
    reason: str | None = Field(default=None, min_length=1, max_length=200)


class ResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: str = Field(
        min_length=1,
        max_length=80,
        pattern=SCOPE_PATTERN,
        description='"global", "user:<user id>", "account:<config id>", or "user" /'
        ' "account" with user_id / config_id',
        examples=["account:demo-paper"],
    )
    config_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=ID_PATTERN)
    user_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=ID_PATTERN)


# -- responses ---------------------------------------------------------------------------
class LimitValuesOut(BaseModel):
    max_order_value: float | None
    max_order_quantity: int | None
    max_open_orders: int | None
    max_open_positions: int | None
    max_symbol_exposure: float | None
    max_gross_exposure: float | None
    price_band_pct: float | None
    order_rate_per_second: int | None
    duplicate_window_seconds: float | None
    daily_loss_limit: float | None
    weekly_loss_limit: float | None
    on_loss_breach: str
    square_off_on_breach: bool
    intraday_square_off: str | None


class LimitsOut(BaseModel):
    user_id: str
    config_id: str | None
    scope: str
    effective: LimitValuesOut = Field(
        description="what the engine applies now (an account: the user's limits tightened"
        " by the account's own)"
    )
    ceiling: LimitValuesOut = Field(
        description="the most the user may set here: for the user, the administrator's ceiling"
        " or the defaults; for an account, the user's limits, tightened by an administrator's"
        " ceiling for the account"
    )
    ceiling_source: Literal["admin", "defaults", "user"]
    own: LimitValuesOut | None = Field(description="the user's own limits for this scope, if set")
    tightened: list[str] = Field(description="fields where the user's own are below the ceiling")


class ScopeStateOut(BaseModel):
    scope: str
    state: str
    reason: str
    since: datetime | None
    kill_switch: bool = Field(description="set by a kill switch (not by a loss limit)")
    set_by: str | None


class UsageOut(BaseModel):
    limit: float | int | None
    value: float | int
    symbol: str | None = None


class EffectiveStateOut(BaseModel):
    effective: str
    scope: str = Field(description="where the effective state is set")
    reason: str
    global_: str = Field(alias="global")
    user: str
    account: str


class AccountStatusOut(BaseModel):
    config_id: str
    name: str
    state: EffectiveStateOut
    account_state: ScopeStateOut
    per_order: dict[str, float | int | None]
    account: dict[str, UsageOut] = Field(description="the account's usage of each limit")
    user: dict[str, UsageOut] = Field(description="the user's usage, summed over accounts")
    funds: dict[str, float | None]
    symbols: dict[str, dict[str, float | int | None]]
    pnl: dict[str, float]


class StatusOut(BaseModel):
    user_id: str
    global_state: ScopeStateOut
    user_state: ScopeStateOut
    accounts: list[AccountStatusOut]


class KillSwitchOut(BaseModel):
    scope: str
    state: str
    cancelled_orders: int = Field(description="working orders asked to cancel")
    stopped_strategies: int
    square_off_orders: list[str] = Field(description="ids of the orders closing positions")


class ResetOut(BaseModel):
    scope: str
    state: str
    previous_state: str
    reset_by: str


# -- helpers -----------------------------------------------------------------------------
def _values(limits: RiskLimits) -> dict[str, Any]:
    out: dict[str, Any] = numbers(limits.to_dict())
    return out


async def _own_config(runtime: Runtime, user_id: str, config_id: str | None) -> BrokerConfig | None:
    """The user's active config, or a 404 exactly like an unknown id (None if not asked)."""
    if config_id is None:
        return None
    async with runtime.db() as session:
        config = await UserScopedReader(session, user_id).config(config_id)
    if config is None:
        raise DomainError(f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND)
    return config


async def _profile(runtime: Runtime, user_id: str, config_id: str | None) -> dict[str, Any]:
    """The scope's effective limits, its ceiling and the user's own, from the stored rows
    combined as ``RiskService.set_limits`` checks them. The user's ceiling is the
    administrator's row over the defaults; an account's is the user's limits, tightened
    by the administrator's row for that account. Own limits are parsed over the ceiling,
    so ``tightened`` names the fields where they are stricter than it."""
    scope = Scope.for_account(config_id) if config_id else Scope.for_user(user_id)
    async with runtime.db() as session:
        rows = {
            row.kind: row
            for row in (
                await session.scalars(select(RiskLimitRow).where(RiskLimitRow.scope == str(scope)))
            ).all()
        }
    ceiling_row, own_row = rows.get(CEILING), rows.get(OWN)
    source: str
    if config_id is None:
        defaults = runtime.risk_engine.default_limits
        ceiling = (
            RiskLimits.from_dict(ceiling_row.limits, base=defaults)
            if ceiling_row is not None
            else defaults
        )
        source = "admin" if ceiling_row is not None else "defaults"
    else:
        ceiling = runtime.risk_service.limits(user_id)
        if ceiling_row is not None:
            ceiling = ceiling.tightened(RiskLimits.from_dict(ceiling_row.limits, base=PERMISSIVE))
        source = "admin" if ceiling_row is not None else "user"
    own = RiskLimits.from_dict(own_row.limits, base=ceiling) if own_row is not None else None
    tightened = (
        [name for name in RiskLimits.KINDS if getattr(own, name) != getattr(ceiling, name)]
        if own is not None
        else []
    )
    return {
        "user_id": user_id,
        "config_id": config_id,
        "scope": str(scope),
        "effective": _values(runtime.risk_service.limits(user_id, config_id)),
        "ceiling": _values(ceiling),
        "ceiling_source": source,
        "own": _values(own) if own is not None else None,
        "tightened": tightened,
    }


async def _scope_states(runtime: Runtime, scopes: list[Scope]) -> dict[str, dict[str, Any]]:
    """State, reason and time from the engine (what orders are held to); whether a kill
    switch set it and who, from the stored rows."""
    names = [str(s) for s in scopes]
    async with runtime.db() as session:
        rows = {
            row.scope: row
            for row in (
                await session.scalars(select(RiskStateRow).where(RiskStateRow.scope.in_(names)))
            ).all()
        }
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        current = runtime.risk_engine.state(name)
        row = rows.get(name)
        out[name] = {
            "scope": name,
            "state": current.state.value,
            "reason": current.reason,
            "since": current.since,
            "kill_switch": bool(row.kill_switch) if row is not None else False,
            "set_by": row.updated_by if row is not None else None,
        }
    return out


async def _target_user(runtime: Runtime, admin: UserInfo, user_id: str) -> UserInfo:
    """The user an administrator works on (id or username). Like the user administration,
    only a SUPER_ADMIN manages administrators' ceilings."""
    target = await runtime.accounts.resolve_user(user_id)
    if target is None:
        raise DomainError(f"user {user_id!r} not found", ErrorCode.USER_NOT_FOUND)
    if target.role != "USER" and admin.role != "SUPER_ADMIN":
        raise DomainError(
            "only a SUPER_ADMIN sets the ceilings of administrators", ErrorCode.FORBIDDEN
        )
    return target


def _parse_reset_scope(body: ResetIn) -> Scope:
    """``scope`` either names the scope ("account:<id>") or its kind, with the id in
    ``config_id`` / ``user_id``; anything ambiguous is a 422."""
    if ":" in body.scope or body.scope == "global":
        if body.config_id is not None or body.user_id is not None:
            raise DomainError(
                "give the id either in scope or in config_id/user_id, not both",
                ErrorCode.VALIDATION_ERROR,
                field="scope",
            )
        return Scope.parse(body.scope)
    if body.scope == "account" and body.config_id and body.user_id is None:
        return Scope.for_account(body.config_id)
    if body.scope == "user" and body.user_id and body.config_id is None:
        return Scope.for_user(body.user_id)
    raise DomainError(
        'scope must be "global", "user:<id>", "account:<config id>", "user" with user_id,'
        ' or "account" with config_id',
        ErrorCode.VALIDATION_ERROR,
        field="scope",
    )


# -- the caller's limits and status ------------------------------------------------------
@router.get("/limits", response_model=LimitsOut, responses=ERRORS)
async def get_limits(
    user: UserDep, runtime: RuntimeDep, config_id: ConfigQuery = None
) -> dict[str, Any]:
    """Your effective limits (user-wide, or one account's), the ceiling they are held
    to, and the fields you have tightened."""
    await _own_config(runtime, user.id, config_id)
    return await _profile(runtime, user.id, config_id)


@router.put("/limits", response_model=LimitsOut, responses=ERRORS)
async def put_limits(body: LimitsIn, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Set your own limits (they replace your previous ones; fields left out take the
    ceiling's value). Tightening only: a field beyond the ceiling is a 422 naming it."""
    await _own_config(runtime, user.id, body.config_id)
    await runtime.risk_service.set_limits(
        user.id, body.limits.given(), kind=OWN, by=user.id, config_id=body.config_id
    )
    return await _profile(runtime, user.id, body.config_id)


@router.get("/status", response_model=StatusOut, responses=ERRORS)
async def status(
    user: UserDep, runtime: RuntimeDep, config_id: ConfigQuery = None
) -> dict[str, Any]:
    """The trading state of each of your accounts (and where it is set: global, user or
    account), every limit with its current usage, funds, per-instrument book and P&L."""
    config = await _own_config(runtime, user.id, config_id)
    if config is not None:
        configs = [config]
    else:
        async with runtime.db() as session:
            configs = list(await UserScopedReader(session, user.id).configs())
    scopes = [GLOBAL, Scope.for_user(user.id), *(Scope.for_account(c.id) for c in configs)]
    states = await _scope_states(runtime, scopes)
    accounts = []
    for each in configs:
        usage = numbers(runtime.risk_service.status(user.id, each.id))
        accounts.append(
            {
                "config_id": each.id,
                "name": each.name,
                "state": usage["state"],
                "account_state": states[str(Scope.for_account(each.id))],
                **{part: usage[part] for part in USAGE_PARTS},
            }
        )
    return {
        "user_id": user.id,
        "global_state": states[str(GLOBAL)],
        "user_state": states[str(Scope.for_user(user.id))],
        "accounts": accounts,
    }


# -- kill switches and resets ------------------------------------------------------------
@router.post("/kill-switch", response_model=KillSwitchOut, responses=ERRORS)
async def kill_switch(body: KillSwitchIn, auth: AuthDep, runtime: RuntimeDep) -> dict[str, Any]:
    """HALT one of your accounts, yourself (every account), or, as SUPER_ADMIN, everyone:
    working orders are cancelled, strategies stopped, positions closed when ``flatten``.
    New orders are refused (RISK_REJECTED, rule trading_state) until an administrator
    resets the scope."""
    user = auth.user
    if body.scope == "account":
        if body.config_id is None:
            raise DomainError(
                "the account kill switch needs config_id",
                ErrorCode.VALIDATION_ERROR,
                field="config_id",
            )
        await _own_config(runtime, user.id, body.config_id)
        scope = Scope.for_account(body.config_id)
    elif body.config_id is not None:
        raise DomainError(
            f"config_id goes only with scope account, not {body.scope}",
            ErrorCode.VALIDATION_ERROR,
            field="config_id",
        )
    elif body.scope == "user":
        scope = Scope.for_user(user.id)
    else:
        # The same gate as the admin routes (role, admin scope of an API key, 2FA), then
        # the role that may stop everybody's trading.
        await super_admin_user(await admin_user(auth, runtime))
        scope = GLOBAL
    reason = body.reason or f"kill switch by {user.username}"
    result: dict[str, Any] = await runtime.risk_service.kill_switch(
        scope, by=user.id, flatten=body.flatten, reason=reason
    )
    return result


@router.post("/reset", response_model=ResetOut, responses=ERRORS)
async def reset(body: ResetIn, admin: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Back to ACTIVE after a kill switch or a loss-limit breach (ADMIN; ``global`` needs
    SUPER_ADMIN). The scope's user or account must exist. A loss still beyond its limit
    halts the scope again on the next price."""
    scope = _parse_reset_scope(body)
    if scope.kind == "global":
        await super_admin_user(admin)
    async with runtime.db() as session:  # deleted configs and disabled users included
        if scope.kind == "account" and await session.get(BrokerConfig, scope.id) is None:
            raise DomainError(f"broker config {scope.id!r} not found", ErrorCode.CONFIG_NOT_FOUND)
        if scope.kind == "user" and await session.get(User, scope.id) is None:
            raise DomainError(f"user {scope.id!r} not found", ErrorCode.USER_NOT_FOUND)
    previous = runtime.risk_engine.state(scope).state
    await runtime.risk_service.reset(scope, by=admin.id)
    return {
        "scope": str(scope),
        "state": runtime.risk_engine.state(scope).state.value,
        "previous_state": previous.value,
        "reset_by": admin.id,
    }


# -- administrators' ceilings ------------------------------------------------------------
AdminUserPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=USER_PATTERN, description="id or username")
]


@admin_router.get("/limits/{user_id}", response_model=LimitsOut, responses=ERRORS)
async def get_user_limits(
    user_id: AdminUserPath, admin: AdminDep, runtime: RuntimeDep, config_id: ConfigQuery = None
) -> dict[str, Any]:
    """A user's (or one of their accounts') ceiling, own and effective limits."""
    target = await _target_user(runtime, admin, user_id)
    await _own_config(runtime, target.id, config_id)
    return await _profile(runtime, target.id, config_id)


@admin_router.put("/limits/{user_id}", response_model=LimitsOut, responses=ERRORS)
async def put_user_limits(
    user_id: AdminUserPath, body: LimitsIn, admin: AdminDep, runtime: RuntimeDep
) -> dict[str, Any]:
    """Set a user's ceiling (replacing the previous one; fields left out take the
    deployment's defaults). It applies at once, tightened by the user's own limits."""
    target = await _target_user(runtime, admin, user_id)
    await _own_config(runtime, target.id, body.config_id)
    await runtime.risk_service.set_limits(
        target.id, body.limits.given(), kind=CEILING, by=admin.id, config_id=body.config_id
    )
    return await _profile(runtime, target.id, body.config_id)
