"""Live portfolio analytics: P&L per user, broker account and strategy, equity snapshots,
and the backtests' metrics on the live equity curve.

Everything is read per user (every query filters by ``user_id``); only active broker
configs count, so a user's figures are the sum of their accounts'. A fill belongs to a
strategy through its order's ``strategy_id``; fills of orders placed by hand form each
account's "manual" part.

Equity of a scope = its capital + net P&L (realised + unrealised - charges). Capital:

* a paper account: the opening capital the paper exchange pinned in its saved state
  (``initial_capital``), else the one its settings give (default 1,000,000): the paper
  account's own cash ledger is exactly capital + realised - charges;
* any other account: ``capital`` in the broker config's settings when the user set it;
  asking a real broker for funds needs a live, logged-in session, too costly and fragile
  for a periodic job, so without it the capital is unknown (``None``): the curve is then
  the net P&L alone and the return-based metrics are left out (a return needs a base);
* a strategy: ``capital`` in its parameters, else its account's;
* a user: the sum of the known capitals of their accounts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.analytics.metrics import (
    EquityPoint,
    compute_report,
    day_tz_for,
    trading_days_for,
)
from trading_backend.analytics.pnl import PnL, pnl_from_fills, total
from trading_backend.domain import DomainError, ErrorCode, Exchange, Fill
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import ZERO, to_decimal
from trading_backend.storage.models import (
    BrokerConfig,
    BrokerStateRow,
    OrderRow,
    PortfolioSnapshotRow,
    StrategyRow,
    TradeRow,
)
from trading_backend.storage.repositories import fill_from_row

log = structlog.get_logger(__name__)

MAX_CURVE_POINTS = 1000
DEFAULT_PAPER_CAPITAL = Decimal("1000000")  # brokers.paper.settings.DEFAULT_CAPITAL


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


def account_scope(config_id: str) -> str:
    return f"account:{config_id}"


def strategy_scope(strategy_id: str) -> str:
    return f"strategy:{strategy_id}"


def downsample(points: Sequence[EquityPoint], limit: int = MAX_CURVE_POINTS) -> list[EquityPoint]:
    """At most ``limit`` points spread evenly over the curve, first and last kept."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def _positive(value: object) -> Decimal | None:
    """A positive amount from loose JSON settings, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = to_decimal(value, "capital")
    except ValueError:
        return None
    return amount if amount > 0 else None


@dataclass(slots=True)
class _Part:
    """One scope's fills and capital (an account, a strategy, an account's manual trades)."""

    scope: str | None
    config_id: str
    strategy_id: str | None
    name: str | None
    capital: Decimal | None
    fills: list[Fill] = field(default_factory=list)


@dataclass(slots=True)
class _UserBook:
    user_id: str
    accounts: dict[str, _Part]
    brokers: dict[str, str]
    strategies: dict[str, _Part]
    manual: dict[str, _Part]

    def all_fills(self) -> list[Fill]:
        return [f for part in self.accounts.values() for f in part.fills]

    @property
    def capital(self) -> Decimal | None:
        known = [p.capital for p in self.accounts.values() if p.capital is not None]
        return sum(known, ZERO) if known else None


@dataclass(frozen=True, slots=True)
class Figures:
    """A scope's live figures."""

    capital: Decimal | None
    pnl: PnL

    @property
    def equity(self) -> Decimal:
        return (self.capital or ZERO) + self.pnl.net

    def as_dict(self) -> dict[str, Any]:
        return {
            "capital": _text(self.capital),
            "equity": str(self.equity),
            "realised_pnl": str(self.pnl.realised),
            "unrealised_pnl": str(self.pnl.unrealised),
            "day_pnl": str(self.pnl.day_pnl),
            "charges": str(self.pnl.charges),
            "net_pnl": str(self.pnl.net),
            "open_positions": self.pnl.open_positions,
            "fills": self.pnl.fills,
        }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


class PortfolioService:
    """Reads trades and snapshots, prices positions from the market view, and records
    snapshots. ``market`` needs ``quote(symbol, exchange)`` with ``ltp`` and ``close``
    (``KeyError`` for an instrument it cannot price)."""

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        market: Any,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = db
        self._market = market
        self._clock = clock or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self._clock()

    # -- reading -----------------------------------------------------------------------------
    def _prices(self, symbol: str, exchange: Exchange) -> tuple[Decimal | None, Decimal | None]:
        try:
            quote = self._market.quote(symbol, exchange)
        except KeyError:
            return None, None
        return quote.ltp, quote.close

    async def _load(self, session: AsyncSession, user_id: str) -> _UserBook:
        configs = (
            await session.scalars(
                select(BrokerConfig)
                .where(BrokerConfig.user_id == user_id, BrokerConfig.is_active.is_(True))
                .order_by(BrokerConfig.created_at, BrokerConfig.id)
            )
        ).all()
        paper_keys = [f"paper:{c.id}" for c in configs if c.broker == "paper"]
        pinned: dict[str, Any] = {}
        if paper_keys:
            rows = await session.scalars(
                select(BrokerStateRow).where(BrokerStateRow.key.in_(paper_keys))
            )
            pinned = {row.key: row.state for row in rows.all()}
        accounts: dict[str, _Part] = {}
        for config in configs:
            accounts[config.id] = _Part(
                account_scope(config.id),
                config.id,
                None,
                config.name,
                self._capital(config, pinned.get(f"paper:{config.id}")),
            )
        strategies: dict[str, _Part] = {}
        for row in (
            await session.scalars(
                select(StrategyRow)
                .where(StrategyRow.user_id == user_id)
                .order_by(StrategyRow.created_at, StrategyRow.id)
            )
        ).all():
            account = accounts.get(row.config_id)
            if account is None:
                continue
            own = _positive((row.params or {}).get("capital"))
            strategies[row.id] = _Part(
                strategy_scope(row.id),
                row.config_id,
                row.id,
                row.name,
                own if own is not None else account.capital,
            )
        manual: dict[str, _Part] = {}
        if accounts:
            trades = await session.execute(
                select(TradeRow, OrderRow.strategy_id)
                .join(OrderRow, OrderRow.id == TradeRow.order_id)
                .where(TradeRow.user_id == user_id, TradeRow.config_id.in_(list(accounts)))
                .order_by(TradeRow.executed_at, TradeRow.id)
            )
            for trade, strategy_id in trades.all():
                fill = fill_from_row(trade)
                account = accounts[trade.config_id]
                account.fills.append(fill)
                part = strategies.get(strategy_id) if strategy_id else None
                if part is None:
                    part = manual.get(trade.config_id)
                    if part is None:
                        part = manual[trade.config_id] = _Part(
                            None, trade.config_id, None, None, account.capital
                        )
                part.fills.append(fill)
        return _UserBook(user_id, accounts, {c.id: c.broker for c in configs}, strategies, manual)

    @staticmethod
    def _capital(config: BrokerConfig, state: dict[str, Any] | None) -> Decimal | None:
        settings = config.settings or {}
        if config.broker == "paper":
            pinned = _positive((state or {}).get("initial_capital"))
            if pinned is not None:
                return pinned
            return _positive(settings.get("initial_capital")) or DEFAULT_PAPER_CAPITAL
        return _positive(settings.get("capital"))

    def _figures(self, part: _Part, day_start: datetime) -> Figures:
        return Figures(part.capital, pnl_from_fills(part.fills, self._prices, day_start))

    def _day_start(self, now: datetime) -> datetime:
        """00:00 IST of ``now``'s IST day: the risk engine's loss-limit day."""
        return datetime.combine(now.astimezone(IST).date(), time(0), IST)

    # -- snapshots -----------------------------------------------------------------------------
    async def _user_ids(self, session: AsyncSession) -> list[str]:
        """Users with at least one trade on an active account: nobody else has a curve."""
        rows = await session.scalars(
            select(TradeRow.user_id)
            .join(BrokerConfig, BrokerConfig.id == TradeRow.config_id)
            .where(BrokerConfig.is_active.is_(True))
            .distinct()
        )
        return sorted(rows.all())

    async def snapshot(self, user_id: str | None = None, *, at: datetime | None = None) -> int:
        """Record the equity and P&L of every scope (of ``user_id``, or of every user) that
        has traded; returns the number of rows written. Scopes without a fill are skipped:
        their equity is their capital, a flat line nobody needs stored."""
        taken_at = (at or self.now()).astimezone(UTC)
        day_start = self._day_start(taken_at)
        written = 0
        async with self._db() as session:
            users = [user_id] if user_id is not None else await self._user_ids(session)
            for uid in users:
                book = await self._load(session, uid)
                rows = self._snapshot_rows(book, taken_at, day_start)
                session.add_all(rows)
                written += len(rows)
            try:
                await session.commit()
            except IntegrityError:
                # Another process recorded the same moment (two on-demand requests in the
                # same microsecond): that snapshot stands.
                await session.rollback()
                log.warning("portfolio_snapshot_duplicate", taken_at=taken_at.isoformat())
                return 0
        return written

    def _snapshot_rows(
        self, book: _UserBook, taken_at: datetime, day_start: datetime
    ) -> list[PortfolioSnapshotRow]:
        rows: list[PortfolioSnapshotRow] = []
        user_parts: list[PnL] = []
        for part in [*book.accounts.values(), *book.strategies.values()]:
            if not part.fills:
                continue
            figures = self._figures(part, day_start)
            if part.strategy_id is None:
                user_parts.append(figures.pnl)
            assert part.scope is not None
            rows.append(self._row(book.user_id, part, part.scope, figures, taken_at))
        if user_parts:
            figures = Figures(book.capital, total(user_parts))
            whole = _Part(user_scope(book.user_id), "", None, None, book.capital)
            rows.append(self._row(book.user_id, whole, user_scope(book.user_id), figures, taken_at))
        return rows

    @staticmethod
    def _row(
        user_id: str, part: _Part, scope: str, figures: Figures, taken_at: datetime
    ) -> PortfolioSnapshotRow:
        return PortfolioSnapshotRow(
            user_id=user_id,
            config_id=part.config_id or None,
            strategy_id=part.strategy_id,
            scope=scope,
            taken_at=taken_at,
            capital=figures.capital,
            equity=figures.equity,
            realised=figures.pnl.realised,
            unrealised=figures.pnl.unrealised,
            charges=figures.pnl.charges,
        )

    async def run_snapshots(self, every: float) -> None:
        """The periodic job: a snapshot of everyone every ``every`` seconds, forever."""
        while True:
            await asyncio.sleep(every)
            try:
                count = await self.snapshot()
                log.debug("portfolio_snapshot_taken", rows=count)
            except Exception:
                log.exception("portfolio_snapshot_failed")

    # -- analytics -------------------------------------------------------------------------------
    async def analytics(
        self,
        user_id: str,
        *,
        config_id: str | None = None,
        strategy_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        risk_free_rate: float = 0.0,
    ) -> dict[str, Any]:
        """Totals, the breakdown, the equity curve and the metrics of one of the user's
        scopes: the user (no ids), one account, or one strategy (and its account, if
        given, must be the strategy's). Unknown or another user's ids are NOT_FOUND."""
        now = self.now()
        if start is not None and end is not None and start > end:
            raise DomainError("'from' must not be after 'to'", ErrorCode.VALIDATION_ERROR)
        day_start = self._day_start(now)
        async with self._db() as session:
            book = await self._load(session, user_id)
            if config_id is not None and config_id not in book.accounts:
                raise DomainError(
                    f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND
                )
            if strategy_id is not None:
                found = book.strategies.get(strategy_id)
                if found is None or (config_id is not None and found.config_id != config_id):
                    raise DomainError(f"strategy {strategy_id!r} not found", ErrorCode.NOT_FOUND)
            scope, capital, fills, accounts, strategies = self._select(book, config_id, strategy_id)
            snapshots = await self._snapshots(session, user_id, scope, start, end)
        figures = {part_key: self._figures(part, day_start) for part_key, part in accounts}
        strategy_figures = [(part, self._figures(part, day_start)) for part in strategies]
        if strategy_id is not None:
            totals = strategy_figures[0][1]
        else:
            totals = Figures(capital, total(f.pnl for f in figures.values()))
        points = [EquityPoint(row.taken_at, row.equity) for row in snapshots]
        if (end is None or end >= now) and (start is None or start <= now):
            if not points or points[-1].timestamp < now:
                points.append(EquityPoint(now, totals.equity))
        window = [
            f
            for f in fills
            if (start is None or f.timestamp >= start) and (end is None or f.timestamp <= end)
        ]
        exchange = _basis(window or fills)
        report = compute_report(
            points if capital is not None else [],
            window,
            trading_days_per_year=trading_days_for(exchange),
            day_tz=day_tz_for(exchange),
            risk_free_rate=risk_free_rate,
        )
        return {
            "user_id": user_id,
            "scope": scope,
            "broker_config_id": config_id,
            "strategy_id": strategy_id,
            "as_of": now,
            "from": start,
            "to": end,
            "totals": totals.as_dict(),
            "accounts": [
                {
                    "broker_config_id": part.config_id,
                    "name": part.name,
                    "broker": book.brokers[part.config_id],
                    **figures[key].as_dict(),
                }
                for key, part in accounts
            ],
            "strategies": [
                {
                    "strategy_id": part.strategy_id,
                    "name": part.name,
                    "broker_config_id": part.config_id,
                    "manual": part.strategy_id is None,
                    **fig.as_dict(),
                }
                for part, fig in strategy_figures
            ],
            "equity_curve": [
                {"timestamp": p.timestamp, "equity": str(p.equity)} for p in downsample(points)
            ],
            "equity_curve_points": len(points),
            "trading_days_per_year": trading_days_for(exchange),
            "day_timezone": "UTC" if exchange is Exchange.CRYPTO else "IST",
            "metrics": report.to_dict(),
        }

    @staticmethod
    def _select(
        book: _UserBook, config_id: str | None, strategy_id: str | None
    ) -> tuple[str, Decimal | None, list[Fill], list[tuple[str, _Part]], list[_Part]]:
        """The scope's name, capital, fills, and the accounts and strategies it breaks into."""
        if strategy_id is not None:
            part = book.strategies[strategy_id]
            return strategy_scope(strategy_id), part.capital, part.fills, [], [part]
        if config_id is not None:
            account = book.accounts[config_id]
            parts = [p for p in book.strategies.values() if p.config_id == config_id]
            if config_id in book.manual:
                parts.append(book.manual[config_id])
            return (
                account_scope(config_id),
                account.capital,
                account.fills,
                [(config_id, account)],
                parts,
            )
        parts = [*book.strategies.values(), *book.manual.values()]
        return (
            user_scope(book.user_id),
            book.capital,
            book.all_fills(),
            list(book.accounts.items()),
            parts,
        )

    @staticmethod
    async def _snapshots(
        session: AsyncSession,
        user_id: str,
        scope: str,
        start: datetime | None,
        end: datetime | None,
    ) -> Sequence[PortfolioSnapshotRow]:
        query = select(PortfolioSnapshotRow).where(
            PortfolioSnapshotRow.user_id == user_id, PortfolioSnapshotRow.scope == scope
        )
        if start is not None:
            query = query.where(PortfolioSnapshotRow.taken_at >= start)
        if end is not None:
            query = query.where(PortfolioSnapshotRow.taken_at <= end)
        return (await session.scalars(query.order_by(PortfolioSnapshotRow.taken_at))).all()


def _basis(fills: Sequence[Fill]) -> Exchange:
    """Crypto's 365 days and UTC days when every fill is crypto, else the Indian 252/IST."""
    if fills and all(f.exchange is Exchange.CRYPTO for f in fills):
        return Exchange.CRYPTO
    return Exchange.NSE


__all__ = [
    "MAX_CURVE_POINTS",
    "Figures",
    "PortfolioService",
    "account_scope",
    "downsample",
    "strategy_scope",
    "user_scope",
]
