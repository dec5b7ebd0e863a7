"""Strategy management for the API and the CLI: create, list, update, delete, start, stop
and performance, always scoped to the calling user (another user's strategy is NOT_FOUND).
Running them is the ``StrategyRunner``'s job; this service only asks it."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import DomainError, ErrorCode, Fill, Position
from trading_backend.domain.money import ZERO
from trading_backend.storage.models import (
    BrokerConfig,
    StrategyRow,
    StrategySignalRow,
    utcnow,
)
from trading_backend.storage.repositories import add_audit
from trading_backend.strategies.base import StrategyParams
from trading_backend.strategies.context import positions_from_fills, strategy_fills
from trading_backend.strategies.registry import StrategyRegistry
from trading_backend.strategies.runner import RUNNING, STOPPED, StrategyRunner

MAX_NAME_LENGTH = 100


def new_strategy_id() -> str:
    """``stg_`` + 16 hex digits: 20 characters, so the whole id fits a broker order tag."""
    return f"stg_{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class StrategyView:
    id: str
    user_id: str
    config_id: str
    name: str
    kind: str
    params: dict[str, Any]
    status: str
    state: dict[str, Any]
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None

    @classmethod
    def from_row(cls, row: StrategyRow) -> StrategyView:
        return cls(
            id=row.id,
            user_id=row.user_id,
            config_id=row.config_id,
            name=row.name,
            kind=row.kind,
            params=dict(row.params or {}),
            status=row.status,
            state=dict(row.state or {}),
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            stopped_at=row.stopped_at,
        )


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Performance:
    strategy_id: str
    realised_pnl: Decimal  # before charges
    unrealised_pnl: Decimal  # open positions at the current quote's last price
    charges: Decimal
    net_pnl: Decimal  # realised + unrealised - charges
    trades: int  # executions (fills)
    round_trips: int  # closed round trips (flat -> position -> flat, per instrument)
    winning_round_trips: int
    win_rate: float | None  # winning / closed round trips; None before the first one
    signals: int  # signal-log entries of kind "signal"
    open_positions: int
    recent_log: list[LogEntry]


def round_trips(fills: Sequence[Fill]) -> list[Decimal]:
    """Realised P&L (before charges) of each closed round trip, in closing order. A round
    trip runs from flat to flat in one instrument; a fill that flips the position closes
    one trip and opens the next."""
    positions: dict[tuple[str, str, str], Position] = {}
    opened_at: dict[tuple[str, str, str], Decimal] = {}
    results: list[Decimal] = []
    for fill in fills:
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        position = positions.setdefault(
            key, Position(fill.symbol, fill.exchange, fill.product_type)
        )
        before_qty = position.quantity
        if before_qty == 0:
            opened_at[key] = position.realised_pnl
        position.apply(fill)
        after_qty = position.quantity
        crossed = before_qty != 0 and (after_qty == 0 or (after_qty > 0) != (before_qty > 0))
        if crossed:
            results.append(position.realised_pnl - opened_at[key])
            opened_at[key] = position.realised_pnl
    return results


class StrategyService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        registry: StrategyRegistry,
        runner: StrategyRunner,
    ) -> None:
        self._db = db
        self.registry = registry
        self.runner = runner

    # -- helpers -----------------------------------------------------------------------
    def kinds(self) -> list[dict[str, Any]]:
        return self.registry.kinds()

    def _validate_params(self, kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
        cls = self.registry.get(kind)
        model: StrategyParams
        try:
            model = cls.Params.model_validate(params or {})
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise DomainError(
                f"invalid params for {kind!r}: {exc}",
                ErrorCode.VALIDATION_ERROR,
                errors=[{**e, "loc": [str(p) for p in e["loc"]]} for e in errors],
            ) from None
        dumped: dict[str, Any] = model.model_dump(mode="json")
        return dumped

    @staticmethod
    def _clean_name(name: str) -> str:
        cleaned = (name or "").strip()
        if not cleaned or len(cleaned) > MAX_NAME_LENGTH:
            raise DomainError(
                f"name must be 1 to {MAX_NAME_LENGTH} characters", ErrorCode.VALIDATION_ERROR
            )
        return cleaned

    @staticmethod
    async def _owned(session: AsyncSession, user_id: str, strategy_id: str) -> StrategyRow:
        row = await session.scalar(
            select(StrategyRow).where(StrategyRow.id == strategy_id, StrategyRow.user_id == user_id)
        )
        if row is None:
            raise DomainError(f"strategy {strategy_id!r} not found", ErrorCode.NOT_FOUND)
        return row

    @staticmethod
    async def _require_config(session: AsyncSession, user_id: str, config_id: str) -> None:
        found = await session.scalar(
            select(BrokerConfig.id).where(
                BrokerConfig.id == config_id,
                BrokerConfig.user_id == user_id,
                BrokerConfig.is_active.is_(True),
            )
        )
        if found is None:
            raise DomainError(f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND)

    @staticmethod
    async def _name_taken(
        session: AsyncSession, user_id: str, name: str, except_id: str | None = None
    ) -> bool:
        query = select(StrategyRow.id).where(
            StrategyRow.user_id == user_id, StrategyRow.name == name
        )
        if except_id is not None:
            query = query.where(StrategyRow.id != except_id)
        return await session.scalar(query) is not None

    # -- CRUD --------------------------------------------------------------------------
    async def create(
        self,
        user_id: str,
        name: str,
        kind: str,
        config_id: str,
        params: dict[str, Any] | None = None,
    ) -> StrategyView:
        name = self._clean_name(name)
        validated = self._validate_params(kind, params)
        now = utcnow()
        try:
            async with self._db() as session, session.begin():
                await self._require_config(session, user_id, config_id)
                if await self._name_taken(session, user_id, name):
                    raise DomainError(
                        f"a strategy named {name!r} already exists", ErrorCode.CONFLICT
                    )
                row = StrategyRow(
                    id=new_strategy_id(),
                    user_id=user_id,
                    config_id=config_id,
                    name=name,
                    kind=kind,
                    params=validated,
                    status=STOPPED,
                    state={},
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                await add_audit(
                    session,
                    "strategy.created",
                    user_id=user_id,
                    target=row.id,
                    data={"name": name, "kind": kind, "config_id": config_id},
                )
                await session.flush()
                view = StrategyView.from_row(row)
        except IntegrityError:
            raise DomainError(
                f"a strategy named {name!r} already exists", ErrorCode.CONFLICT
            ) from None
        return view

    async def list(self, user_id: str) -> list[StrategyView]:
        async with self._db() as session:
            rows = (
                await session.scalars(
                    select(StrategyRow)
                    .where(StrategyRow.user_id == user_id)
                    .order_by(StrategyRow.created_at, StrategyRow.id)
                )
            ).all()
            return [StrategyView.from_row(row) for row in rows]

    async def get(self, user_id: str, strategy_id: str) -> StrategyView:
        async with self._db() as session:
            return StrategyView.from_row(await self._owned(session, user_id, strategy_id))

    async def update(
        self,
        user_id: str,
        strategy_id: str,
        *,
        name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> StrategyView:
        """Rename or re-parameterise a strategy that is not running (RUNNING: CONFLICT).
        ``params`` replaces the parameters as a whole (validated like ``create``)."""
        async with self._db() as session, session.begin():
            row = await self._owned(session, user_id, strategy_id)
            if row.status == RUNNING or self.runner.is_running(strategy_id):
                raise DomainError("stop the strategy before changing it", ErrorCode.CONFLICT)
            changes: dict[str, Any] = {}
            if name is not None:
                cleaned = self._clean_name(name)
                if await self._name_taken(session, user_id, cleaned, except_id=strategy_id):
                    raise DomainError(
                        f"a strategy named {cleaned!r} already exists", ErrorCode.CONFLICT
                    )
                row.name = changes["name"] = cleaned
            if params is not None:
                row.params = self._validate_params(row.kind, params)
                changes["params"] = row.params
            if changes:
                row.updated_at = utcnow()
                await add_audit(
                    session,
                    "strategy.updated",
                    user_id=user_id,
                    target=strategy_id,
                    data={"fields": sorted(changes)},
                )
            return StrategyView.from_row(row)

    async def delete(self, user_id: str, strategy_id: str) -> None:
        """Delete (stopping it first if running). Its orders and trades stay: they are the
        account's history, still marked with the strategy id."""
        await self.get(user_id, strategy_id)  # NOT_FOUND before anything happens
        if self.runner.is_running(strategy_id):
            await self.runner.stop_strategy(strategy_id, audit_user_id=user_id)
        async with self._db() as session, session.begin():
            row = await self._owned(session, user_id, strategy_id)
            await session.execute(
                delete(StrategySignalRow).where(StrategySignalRow.strategy_id == strategy_id)
            )
            await session.delete(row)
            await add_audit(
                session,
                "strategy.deleted",
                user_id=user_id,
                target=strategy_id,
                data={"name": row.name, "kind": row.kind},
            )

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, user_id: str, strategy_id: str) -> StrategyView:
        """Start (or restart after ERROR). Returns the strategy as it stands after
        ``on_start``: RUNNING, or ERROR with the reason when it failed to start."""
        async with self._db() as session:
            row = await self._owned(session, user_id, strategy_id)
            await self._require_config(session, user_id, row.config_id)
            self._validate_params(row.kind, row.params)  # the kind may have changed
        if not self.runner.is_running(strategy_id):
            await self.runner.start_strategy(strategy_id, audit_user_id=user_id)
        return await self.get(user_id, strategy_id)

    async def stop(self, user_id: str, strategy_id: str) -> StrategyView:
        await self.get(user_id, strategy_id)
        await self.runner.stop_strategy(strategy_id, audit_user_id=user_id)
        return await self.get(user_id, strategy_id)

    # -- reads -------------------------------------------------------------------------
    async def logs(
        self, user_id: str, strategy_id: str, *, limit: int = 50, kind: str | None = None
    ) -> builtins.list[LogEntry]:
        """The newest ``limit`` signal-log entries, newest first."""
        async with self._db() as session:
            await self._owned(session, user_id, strategy_id)
            query = select(StrategySignalRow).where(
                StrategySignalRow.strategy_id == strategy_id,
                StrategySignalRow.user_id == user_id,
            )
            if kind is not None:
                query = query.where(StrategySignalRow.kind == kind)
            rows = (
                await session.scalars(query.order_by(StrategySignalRow.id.desc()).limit(limit))
            ).all()
            return [LogEntry(r.id, r.kind, dict(r.data or {}), r.created_at) for r in rows]

    async def performance(
        self, user_id: str, strategy_id: str, *, log_entries: int = 20
    ) -> Performance:
        async with self._db() as session:
            await self._owned(session, user_id, strategy_id)
            fills = await strategy_fills(session, user_id, strategy_id)
            signals = int(
                await session.scalar(
                    select(func.count())
                    .select_from(StrategySignalRow)
                    .where(
                        StrategySignalRow.strategy_id == strategy_id,
                        StrategySignalRow.user_id == user_id,
                        StrategySignalRow.kind == "signal",
                    )
                )
                or 0
            )
        positions = positions_from_fills(fills)
        unrealised = ZERO
        open_positions = 0
        for position in positions:
            if position.quantity == 0:
                continue
            open_positions += 1
            quote = await self.runner.reader.quote(position.symbol, position.exchange)
            unrealised += position.unrealised_pnl(quote.ltp)
        realised = sum((p.realised_pnl for p in positions), ZERO)
        charges = sum((p.charges for p in positions), ZERO)
        trips = round_trips(fills)
        wins = sum(1 for pnl in trips if pnl > 0)
        return Performance(
            strategy_id=strategy_id,
            realised_pnl=realised,
            unrealised_pnl=unrealised,
            charges=charges,
            net_pnl=realised + unrealised - charges,
            trades=len(fills),
            round_trips=len(trips),
            winning_round_trips=wins,
            win_rate=(wins / len(trips)) if trips else None,
            signals=signals,
            open_positions=open_positions,
            recent_log=await self.logs(user_id, strategy_id, limit=log_entries),
        )
