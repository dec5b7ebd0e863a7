"""The risk engine in the running system: the ``RiskCheck`` port of the order path.

The engine (``risk/engine.py``) is pure and synchronous; this service feeds it and acts on
what it decides:

* start-up: instruments, limits (administrator ceilings tightened by the user's own),
  stored trading states, working orders and open positions from the database;
* every order: the instrument's last price, then ``check_and_reserve`` in one synchronous
  step (nothing can interleave, so concurrent orders cannot jointly breach a limit);
  ``release`` when the order is not persisted after all;
* every committed order change (recorder listener): ``on_order`` (fills move reservations
  into positions, final states release them);
* every price update of a held instrument (market-hub subscriptions, kept in step with the
  positions): ``on_price``, which evaluates the loss limits;
* breaches and kill switches: the state is stored (it survives restarts), audited and
  logged; working orders are cancelled and positions squared off when configured;
* the intraday square-off of INTRADAY positions at ``intraday_square_off`` (15:15 IST).

Funds: the engine is fed the broker's available cash when it first meets an account with an
open session (plus what it already reserves for that account's working orders) and again
whenever the account has no working order left, when the broker's figure is exact. In
between the engine accounts for its own reservations; the broker remains the final judge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import (
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
)
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import ZERO
from trading_backend.risk.engine import GLOBAL, Breach, RiskEngine, Scope
from trading_backend.risk.limits import RiskLimits, TradingState, ensure_within_ceiling
from trading_backend.risk.port import RiskRejected
from trading_backend.storage.models import (
    BrokerConfig,
    OrderRow,
    PositionRow,
    RiskLimitRow,
    RiskStateRow,
    utcnow,
)
from trading_backend.storage.repositories import add_audit, order_from_row

if TYPE_CHECKING:
    from trading_backend.brokers.paper import SimulatedMarket
    from trading_backend.brokers.sessions import BrokerSessionManager
    from trading_backend.execution.order_service import OrderService
    from trading_backend.marketdata.hub import HubHandle, MarketHub
    from trading_backend.strategies.base import TickView

log = structlog.get_logger(__name__)

REJECTIONS = Counter(
    "trading_backend_risk_rejections_total", "Orders refused by the risk engine", ["rule"]
)
BREACHES = Counter(
    "trading_backend_risk_breaches_total", "Loss limits crossed", ["rule", "scope_kind"]
)
_OPEN = [s.value for s in OrderStatus if not s.is_final]
# (user id or None for everyone, config id or None for every account) -> strategies stopped
StopStrategies = Callable[[str | None, str | None], Awaitable[int]]
CEILING, OWN = "ceiling", "own"


class RiskService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        engine: RiskEngine,
        market: SimulatedMarket,
        sessions: BrokerSessionManager,
        hub: Callable[[], MarketHub],
        *,
        clock: Callable[[], datetime] | None = None,
        stop_strategies: StopStrategies | None = None,
    ) -> None:
        self._db = db
        self.engine = engine
        self._market = market
        self._sessions = sessions
        self._hub = hub
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stop_strategies = stop_strategies
        self.orders: OrderService | None = None  # set by the runtime (it needs us first)
        self._funded: set[str] = set()
        self._owners: dict[str, str] = {}  # config id -> user id (ids are never reused)
        self._watching: dict[str, HubHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False

    def now(self) -> datetime:
        return self._clock()

    # -- start-up --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load everything the engine needs from the database."""
        if self.started:
            return
        self.engine.add_instruments(self._market.instruments())
        async with self._db() as session:
            await self._load_limits(session)
            for state_row in (await session.scalars(select(RiskStateRow))).all():
                self.engine.set_state(state_row.scope, state_row.state, state_row.reason or "")
            for order_row in (
                await session.scalars(select(OrderRow).where(OrderRow.status.in_(_OPEN)))
            ).all():
                self.engine.load_open_order(order_from_row(order_row))
            net: dict[tuple[str, str, str, str], tuple[int, Decimal]] = {}
            for pos in (
                await session.scalars(select(PositionRow).where(PositionRow.quantity != 0))
            ).all():
                key = (pos.user_id, pos.config_id, pos.exchange, pos.symbol)
                quantity, cost = net.get(key, (0, ZERO))
                net[key] = (quantity + pos.quantity, cost + pos.average_price * pos.quantity)
        for (user_id, config_id, exchange, symbol), (quantity, cost) in net.items():
            if quantity == 0:
                continue
            self.engine.load_position(
                user_id,
                config_id,
                symbol,
                exchange,
                quantity,
                abs(cost / quantity),
                last_price=self._last(symbol, exchange),
            )
            await self._watch(symbol, Exchange(exchange))
        self.started = True

    async def _load_limits(self, session: AsyncSession) -> None:
        rows = (await session.scalars(select(RiskLimitRow))).all()
        by_scope: dict[str, dict[str, RiskLimitRow]] = {}
        for row in rows:
            by_scope.setdefault(row.scope, {})[row.kind] = row
        for scope, kinds in by_scope.items():
            target = Scope.parse(scope)
            user_id = next(iter(kinds.values())).user_id
            limits = self._effective(kinds.get(CEILING), kinds.get(OWN))
            if target.kind == "user":
                self.engine.set_limits(user_id, None, limits)
            elif target.kind == "account":
                self.engine.set_limits(user_id, target.id, limits)

    def _effective(self, ceiling: RiskLimitRow | None, own: RiskLimitRow | None) -> RiskLimits:
        base = self.engine.default_limits
        top = RiskLimits.from_dict(ceiling.limits, base=base) if ceiling is not None else base
        if own is None:
            return top
        return top.tightened(RiskLimits.from_dict(own.limits, base=top))

    # -- the order path (RiskCheck) --------------------------------------------------------
    def _last(self, symbol: str, exchange: Exchange | str) -> Decimal | None:
        try:
            return self._market.quote(symbol, exchange).ltp
        except KeyError:
            return None

    async def check(
        self,
        user_id: str,
        config_id: str,
        order: BrokerOrder,
        *,
        order_id: str,
        intentional: bool = False,
        square_off: bool = False,
    ) -> None:
        """Accept (and reserve) or raise ``RiskRejected`` naming the rule, the limit and
        the value. The last await is before the synchronous check-and-reserve."""
        await self._require_owner(user_id, config_id)
        await self._feed_funds(user_id, config_id)
        now = self.now()
        exchange = Exchange(order.exchange)
        last = self._last(order.symbol, exchange)
        breaches = (
            self.engine.on_price(order.symbol, exchange, last, now) if last is not None else []
        )
        try:
            self.engine.check_and_reserve(
                user_id,
                config_id,
                order_id,
                order,
                now=now,
                intentional=intentional,
                square_off=square_off,
            )
        except RiskRejected as exc:
            rule = str(exc.details.get("rule", "unknown"))
            REJECTIONS.labels(rule=rule).inc()
            log.info("risk_rejected", user_id=user_id, config_id=config_id, **exc.details)
            self._spawn(self._audit_rejection(user_id, config_id, order, exc))
            raise
        finally:
            if breaches:
                self._spawn(self._handle_breaches(breaches))

    def release(self, order_id: str) -> None:
        self.engine.release(order_id)

    async def _require_owner(self, user_id: str, config_id: str) -> None:
        """Another user's (or no) account is "not found", exactly as on the rest of the
        order path, before the engine books anything under that id."""
        owner = self._owners.get(config_id)
        if owner is None:
            async with self._db() as session:
                owner = await session.scalar(
                    select(BrokerConfig.user_id).where(
                        BrokerConfig.id == config_id, BrokerConfig.is_active.is_(True)
                    )
                )
            if owner is not None:
                self._owners[config_id] = owner
        if owner != user_id:
            raise DomainError(f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND)

    async def _audit_rejection(
        self, user_id: str, config_id: str, order: BrokerOrder, exc: RiskRejected
    ) -> None:
        async with self._db() as session, session.begin():
            await add_audit(
                session,
                "risk.rejected",
                user_id=user_id,
                target=config_id,
                data={
                    "symbol": order.symbol,
                    "side": str(order.side),
                    "quantity": order.quantity,
                    "error_code": exc.code.value,
                    **{k: str(v) for k, v in exc.details.items()},
                },
            )

    async def _feed_funds(self, user_id: str, config_id: str) -> None:
        if config_id in self._funded:
            return
        session = self._sessions.find(user_id, config_id)
        if session is None:
            return  # no session yet: the broker checks funds when it gets the order
        try:
            balance = await session.broker.get_balance()
        except Exception:  # noqa: BLE001 - funds stay unchecked here; the broker checks
            log.warning("risk_funds_unavailable", config_id=config_id)
            return
        if config_id in self._funded:
            return
        available = Decimal(str(balance.get("available_cash", 0)))
        self.engine.set_funds(config_id, available + self.engine.reserved_funds(config_id))
        self._funded.add(config_id)

    # -- events ----------------------------------------------------------------------------
    def on_order(self, order: Order) -> None:
        """Recorder listener: keep the engine's book in step with every order change."""
        if not self.started:
            return
        try:
            breaches = self.engine.on_order(order, now=self.now())
        except DomainError:
            log.exception("risk_order_update_failed", order_id=order.order_id)
            return
        if order.filled_quantity:
            self._spawn(self._watch(order.symbol, order.exchange))
        if order.status.is_final and not self.engine.open_order_ids(order.config_id):
            self._funded.discard(order.config_id)  # the broker's figure is exact again
        if breaches:
            self._spawn(self._handle_breaches(breaches))

    async def _watch(self, symbol: str, exchange: Exchange) -> None:
        key = f"{exchange.value}:{symbol}"
        if key in self._watching:
            return
        from trading_backend.strategies.base import Subscription

        self._watching[key] = await self._hub().subscribe(
            Subscription(symbol, exchange, timeframes=(), ticks=True), on_tick=self._on_tick
        )

    async def _on_tick(self, tick: TickView) -> None:
        breaches = self.engine.on_price(tick.symbol, tick.exchange, tick.ltp, tick.timestamp)
        if breaches:
            await self._handle_breaches(breaches)

    # -- breaches, kill switches, square-off -------------------------------------------------
    async def _handle_breaches(self, breaches: Iterable[Breach]) -> None:
        for breach in breaches:
            BREACHES.labels(rule=breach.rule, scope_kind=breach.scope.kind).inc()
            log.warning(
                "risk_loss_limit_breached",
                scope=str(breach.scope),
                rule=breach.rule,
                limit=str(breach.limit),
                loss=str(breach.value),
                new_state=breach.new_state.value,
            )
            await self._store_state(
                breach.scope, breach.new_state, breach.message, by=None, kill_switch=False
            )
            async with self._db() as session, session.begin():
                await add_audit(
                    session,
                    "risk.breach",
                    user_id=breach.user_id,
                    target=str(breach.scope),
                    data={
                        "rule": breach.rule,
                        "limit": str(breach.limit),
                        "loss": str(breach.value),
                        "state": breach.new_state.value,
                    },
                )
            if breach.square_off:
                await self.flatten(breach.scope, reason=breach.rule)

    async def _store_state(
        self,
        scope: Scope,
        state: TradingState,
        reason: str,
        *,
        by: str | None,
        kill_switch: bool,
    ) -> None:
        self.engine.set_state(scope, state, reason, now=self.now())
        async with self._db() as session, session.begin():
            row = await session.get(RiskStateRow, str(scope))
            if row is None:
                row = RiskStateRow(scope=str(scope))
                session.add(row)
            row.state = state.value
            row.reason = reason
            row.kill_switch = kill_switch
            row.updated_by = by
            row.updated_at = utcnow()

    async def _scope_orders(
        self, scope: Scope, product: ProductType | None = None
    ) -> list[tuple[str, str]]:
        """(user id, order id) of the scope's working orders."""
        query = select(OrderRow.user_id, OrderRow.id).where(OrderRow.status.in_(_OPEN))
        if product is not None:
            query = query.where(OrderRow.product_type == product.value)
        if scope.kind == "user":
            query = query.where(OrderRow.user_id == scope.id)
        elif scope.kind == "account":
            query = query.where(OrderRow.config_id == scope.id)
        async with self._db() as session:
            return [(u, o) for u, o in (await session.execute(query)).all()]

    async def _scope_positions(
        self, scope: Scope, product: ProductType | None = None
    ) -> list[PositionRow]:
        query = select(PositionRow).where(PositionRow.quantity != 0)
        if scope.kind == "user":
            query = query.where(PositionRow.user_id == scope.id)
        elif scope.kind == "account":
            query = query.where(PositionRow.config_id == scope.id)
        if product is not None:
            query = query.where(PositionRow.product_type == product.value)
        async with self._db() as session:
            return list((await session.scalars(query)).all())

    async def cancel_working(self, scope: Scope, product: ProductType | None = None) -> int:
        """Cancel every working order of the scope; returns how many were asked."""
        assert self.orders is not None
        count = 0
        for user_id, order_id in await self._scope_orders(scope, product):
            try:
                await self.orders.cancel(user_id, order_id)
                count += 1
            except DomainError as exc:  # already final, or the broker refused
                log.info("risk_cancel_skipped", order_id=order_id, reason=exc.message)
        return count

    async def flatten(
        self, scope: Scope, *, reason: str, product: ProductType | None = None
    ) -> list[str]:
        """Cancel the scope's working orders, then close its positions at market (orders
        marked as square-offs: they pass a HALTED state since they only reduce risk)."""
        assert self.orders is not None
        await self.cancel_working(scope, product)
        placed: list[str] = []
        for pos in await self._scope_positions(scope, product):
            request = BrokerOrder(
                symbol=pos.symbol,
                exchange=pos.exchange,
                side=OrderSide.SELL if pos.quantity > 0 else OrderSide.BUY,
                order_type=OrderType.MARKET,
                product_type=pos.product_type,
                quantity=abs(pos.quantity),
                tag="risk-squareoff",
            )
            try:
                result = await self.orders.place(
                    pos.user_id, pos.config_id, request, square_off=True
                )
                placed.append(result.order.order_id)
            except DomainError as exc:
                log.error(
                    "risk_square_off_failed",
                    config_id=pos.config_id,
                    symbol=pos.symbol,
                    error=exc.message,
                )
        log.warning("risk_square_off", scope=str(scope), reason=reason, orders=len(placed))
        return placed

    async def kill_switch(
        self, scope: Scope, *, by: str, flatten: bool = False, reason: str = "kill switch"
    ) -> dict[str, Any]:
        """HALT the scope (stored; survives restarts), cancel its working orders, stop the
        strategies in it, and close its positions when ``flatten``."""
        await self._store_state(scope, TradingState.HALTED, reason, by=by, kill_switch=True)
        async with self._db() as session, session.begin():
            await add_audit(
                session,
                "risk.kill_switch",
                user_id=by,
                target=str(scope),
                data={"flatten": flatten, "reason": reason},
            )
        cancelled = await self.cancel_working(scope)
        stopped = await self._stop_scope_strategies(scope)
        squared = await self.flatten(scope, reason=reason) if flatten else []
        log.warning(
            "risk_kill_switch", scope=str(scope), by=by, cancelled=cancelled, stopped=stopped
        )
        return {
            "scope": str(scope),
            "state": TradingState.HALTED.value,
            "cancelled_orders": cancelled,
            "stopped_strategies": stopped,
            "square_off_orders": squared,
        }

    async def _stop_scope_strategies(self, scope: Scope) -> int:
        if self._stop_strategies is None:
            return 0
        if scope.kind == "global":
            return await self._stop_strategies(None, None)
        if scope.kind == "user":
            return await self._stop_strategies(scope.id, None)
        return await self._stop_strategies(None, scope.id)

    async def reset(self, scope: Scope, *, by: str) -> None:
        """Back to ACTIVE (an administrator's decision after a breach or kill switch)."""
        await self._store_state(scope, TradingState.ACTIVE, "", by=by, kill_switch=False)
        async with self._db() as session, session.begin():
            await add_audit(session, "risk.reset", user_id=by, target=str(scope))

    # -- limits -----------------------------------------------------------------------------
    async def set_limits(
        self,
        user_id: str,
        values: dict[str, Any],
        *,
        kind: str,
        by: str,
        config_id: str | None = None,
    ) -> RiskLimits:
        """Store a user's own limits (checked against the ceiling: tightening only) or an
        administrator's ceiling; the engine applies the result at once."""
        scope = str(Scope.for_account(config_id) if config_id else Scope.for_user(user_id))
        async with self._db() as session, session.begin():
            rows = {
                r.kind: r
                for r in (
                    await session.scalars(select(RiskLimitRow).where(RiskLimitRow.scope == scope))
                ).all()
            }
            ceiling_row = rows.get(CEILING)
            base = self.engine.default_limits
            ceiling = (
                RiskLimits.from_dict(ceiling_row.limits, base=base)
                if ceiling_row is not None
                else base
            )
            proposed = RiskLimits.from_dict(values, base=ceiling if kind == OWN else base)
            if kind == OWN:
                ensure_within_ceiling(proposed, ceiling)
            row = rows.get(kind)
            if row is None:
                row = RiskLimitRow(scope=scope, kind=kind, user_id=user_id)
                session.add(row)
                rows[kind] = row
            row.limits = proposed.to_dict()
            row.updated_by = by
            row.updated_at = utcnow()
            await add_audit(
                session,
                "risk.limits_changed",
                user_id=by,
                target=scope,
                data={"kind": kind, "for_user": user_id, **row.limits},
            )
            effective = self._effective(rows.get(CEILING), rows.get(OWN))
        self.engine.set_limits(user_id, config_id, effective)
        return effective

    def limits(self, user_id: str, config_id: str | None = None) -> RiskLimits:
        return self.engine.limits(user_id, config_id)

    def status(self, user_id: str, config_id: str) -> dict[str, Any]:
        return self.engine.usage(user_id, config_id, now=self.now())

    # -- background --------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("risk_task_failed", error=repr(task.exception()))

    async def settle(self) -> None:
        """Wait for the breach handling and audits started so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run_intraday_square_off(self, at: time) -> None:
        """Every weekday at ``at`` IST: close INTRADAY positions of every account."""
        while True:
            now = datetime.now(IST)
            target = datetime.combine(now.date(), at, IST)
            while target <= now or target.weekday() >= 5:
                target = datetime.combine(target.date() + timedelta(days=1), at, IST)
            await asyncio.sleep((target - now).total_seconds())
            await self.intraday_square_off()

    async def intraday_square_off(self) -> list[str]:
        return await self.flatten(
            GLOBAL, reason="intraday_square_off", product=ProductType.INTRADAY
        )

    async def close(self) -> None:
        await self.settle()
        for handle in list(self._watching.values()):
            with contextlib.suppress(Exception):
                await handle.close()
        self._watching.clear()
