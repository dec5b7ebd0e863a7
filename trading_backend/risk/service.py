"""The risk engine in the running system: the ``RiskCheck`` port of the order path.

The engine (``risk/engine.py``) is pure and synchronous; this service feeds it and acts on
what it decides:

* start-up: instruments and their last prices, limits (administrator ceilings tightened
  by the user's own), stored trading states, open positions, working orders and the day's
  and week's P&L so far (from the trades) from the database;
* every order: the instrument's last price, then ``check_and_reserve`` in one synchronous
  step (nothing can interleave, so concurrent orders cannot jointly breach a limit);
  ``release`` when the order is not persisted after all;
* every committed order change (recorder listener): ``on_order`` (fills move reservations
  into positions, final states release them), then the order's charges read back from its
  trades (the loss limits count them);
* every modification: ``check_modify``, the new terms checked in place of the old;
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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field  # -- events (issue #7)
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from prometheus_client import Counter
from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import (
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Instrument,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
)
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import ZERO
from trading_backend.risk.engine import GLOBAL, Breach, LoadedPosition, RiskEngine, Scope
from trading_backend.risk.limits import RiskLimits, TradingState, ensure_within_ceiling
from trading_backend.risk.port import RiskRejected
from trading_backend.storage.models import (
    BrokerConfig,
    OrderRow,
    PositionRow,
    RiskLimitRow,
    RiskStateRow,
    TradeRow,
    utcnow,
)
from trading_backend.storage.repositories import add_audit, order_from_row

if TYPE_CHECKING:
    from trading_backend.brokers.paper.market import Quote
    from trading_backend.brokers.sessions import BrokerSessionManager
    from trading_backend.execution.order_service import OrderService
    from trading_backend.marketdata.hub import HubHandle, MarketHub
    from trading_backend.strategies.base import TickView

log = structlog.get_logger(__name__)


class MarketView(Protocol):
    """Where the service takes instruments and prices from: the simulated market in
    paper mode, ``marketdata.live.LiveMarket`` (the broker's instrument master and live
    feed) with a real market-data source. A view may also offer ``async ensure(symbol,
    exchange)`` to price an instrument it has no quote for yet; the check awaits it."""

    def instruments(self) -> list[Instrument]: ...

    def get_instrument(self, symbol: str, exchange: str | Exchange) -> Instrument | None: ...

    def quote(self, symbol: str, exchange: str | Exchange) -> Quote: ...


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
# Square-off orders refused only by the order rate are retried a second later, this often.
SQUARE_OFF_RATE_RETRIES = 60
# Every limit off and the mildest choices: the base of an account's own limits, which
# the engine always tightens with the user's.
PERMISSIVE = RiskLimits(
    max_order_value=None,
    max_order_quantity=None,
    max_open_orders=None,
    max_open_positions=None,
    max_symbol_exposure=None,
    max_gross_exposure=None,
    price_band_pct=None,
    order_rate_per_second=None,
    duplicate_window_seconds=None,
    daily_loss_limit=None,
    weekly_loss_limit=None,
    on_loss_breach=TradingState.REDUCING,
    square_off_on_breach=False,
    intraday_square_off=None,
)


def _stored(limits: RiskLimits, given: Iterable[str]) -> dict[str, Any]:
    """The fields given, parsed and validated, as JSON values (amounts as strings: JSON
    numbers would turn them into floats)."""
    plain = limits.to_dict()
    return {
        name: str(plain[name]) if isinstance(plain[name], Decimal) else plain[name]
        for name in given
    }


def _day_start(now: datetime) -> datetime:
    """00:00 IST of ``now``'s IST day (the loss limits' day)."""
    return datetime.combine(now.astimezone(IST).date(), time(0), IST)


@dataclass(slots=True)
class _PeriodFlows:
    """The trades of this week, summed: per (user, account, exchange, symbol) the quantity
    bought minus sold today and this week; per (user, account) the cash flow and charges
    today and this week; the last trade price per instrument."""

    moved: dict[tuple[str, str, str, str], tuple[int, int]] = field(default_factory=dict)
    cash: dict[tuple[str, str], list[Decimal]] = field(default_factory=dict)
    last_price: dict[tuple[str, str], Decimal] = field(default_factory=dict)


async def _period_flows(session: AsyncSession, now: datetime) -> _PeriodFlows:
    """Sum the week's trades: in the database on PostgreSQL (the risk monitor does this
    every few seconds, so it must not read every trade of the week), row by row on SQLite
    (whose money is text, so its sums would be floats)."""
    day_start, week_start = _day_start(now), _week_start(now)
    flows = _PeriodFlows()
    if session.get_bind().dialect.name == "postgresql":
        sign = case((TradeRow.side == OrderSide.BUY.value, 1), else_=-1)
        today = TradeRow.executed_at >= day_start
        moved = sign * TradeRow.quantity
        cash = -sign * TradeRow.price * TradeRow.quantity
        rows = await session.execute(
            select(
                TradeRow.user_id,
                TradeRow.config_id,
                TradeRow.exchange,
                TradeRow.symbol,
                func.sum(case((today, moved), else_=0)),
                func.sum(moved),
                func.sum(case((today, cash), else_=0)),
                func.sum(cash),
                func.sum(case((today, TradeRow.charges), else_=0)),
                func.sum(TradeRow.charges),
            )
            .where(TradeRow.executed_at >= week_start)
            .group_by(TradeRow.user_id, TradeRow.config_id, TradeRow.exchange, TradeRow.symbol)
        )
        for user, config, exchange, symbol, q_day, q_week, *money in rows.all():
            flows.moved[(user, config, exchange, symbol)] = (int(q_day), int(q_week))
            total = flows.cash.setdefault((user, config), [ZERO] * 4)
            for i, amount in enumerate(money):
                total[i] += Decimal(amount or 0)
        newest = (
            select(func.max(TradeRow.id))
            .where(TradeRow.executed_at >= week_start)
            .group_by(TradeRow.exchange, TradeRow.symbol)
        )
        last = await session.execute(
            select(TradeRow.exchange, TradeRow.symbol, TradeRow.price).where(
                TradeRow.id.in_(newest)
            )
        )
        flows.last_price = {(e, s): p for e, s, p in last.all()}
        return flows
    trades = await session.execute(
        select(
            TradeRow.user_id,
            TradeRow.config_id,
            TradeRow.exchange,
            TradeRow.symbol,
            TradeRow.side,
            TradeRow.quantity,
            TradeRow.price,
            TradeRow.charges,
            TradeRow.executed_at,
        )
        .where(TradeRow.executed_at >= week_start)
        .order_by(TradeRow.executed_at, TradeRow.id)
    )
    for user, config, exchange, symbol, side, quantity, price, charges, at in trades.all():
        signed = quantity if side == OrderSide.BUY.value else -quantity
        key = (user, config, exchange, symbol)
        q_day, q_week = flows.moved.get(key, (0, 0))
        sums = flows.cash.setdefault((user, config), [ZERO] * 4)
        on_day = at >= day_start
        paid = -signed * price
        flows.moved[key] = (q_day + signed if on_day else q_day, q_week + signed)
        sums[1] += paid
        sums[3] += charges
        if on_day:
            sums[0] += paid
            sums[2] += charges
        flows.last_price[(exchange, symbol)] = price
    return flows


def _as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC one (SQLite gives naive UTC back)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _net_by_user(
    rows: Iterable[PositionRow],
) -> dict[tuple[str, str, str, str], tuple[int, Decimal]]:
    """(user, account, exchange, symbol) -> (net quantity, cost): stored positions netted
    across products, as the engine sees them."""
    net: dict[tuple[str, str, str, str], tuple[int, Decimal]] = {}
    for pos in rows:
        key = (pos.user_id, pos.config_id, pos.exchange, pos.symbol)
        quantity, cost = net.get(key, (0, ZERO))
        net[key] = (quantity + pos.quantity, cost + pos.average_price * pos.quantity)
    return net


def _net_positions(rows: Iterable[PositionRow]) -> list[LoadedPosition]:
    """Stored positions netted per account and instrument, flat ones left out."""
    return [
        LoadedPosition(config_id, symbol, exchange, quantity, abs(cost / quantity))
        for (_user, config_id, exchange, symbol), (quantity, cost) in _net_by_user(rows).items()
        if quantity
    ]


async def _working_orders(session: AsyncSession, user_id: str | None = None) -> list[Order]:
    """The working orders (of one user, or everyone's), oldest first."""
    query = select(OrderRow).where(OrderRow.status.in_(_OPEN))
    if user_id is not None:
        query = query.where(OrderRow.user_id == user_id)
    rows = (await session.scalars(query.order_by(OrderRow.created_at, OrderRow.id))).all()
    return [order_from_row(row) for row in rows]


def _week_start(now: datetime) -> datetime:
    """Monday 00:00 IST of ``now``'s IST week."""
    start = _day_start(now)
    return start - timedelta(days=start.weekday())


# -- events (issue #7) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RiskStateChange:
    """A stored trading-state change: ``user_id`` is the user whose trading it affects (an
    account's owner), ``None`` for the global scope (every user)."""

    scope: str
    user_id: str | None
    account: str | None
    old_state: TradingState
    new_state: TradingState
    reason: str
    kill_switch: bool
    at: datetime

    def as_payload(self) -> dict[str, Any]:
        """JSON-friendly, as it travels on the event bus."""
        return {
            "scope": self.scope,
            "user_id": self.user_id,
            "account": self.account,
            "old_state": self.old_state.value,
            "new_state": self.new_state.value,
            "reason": self.reason,
            "kill_switch": self.kill_switch,
            "at": self.at.isoformat(),
        }


# -- end events


class RiskService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        engine: RiskEngine,
        market: MarketView,
        sessions: BrokerSessionManager,
        hub: Callable[[], MarketHub],
        *,
        clock: Callable[[], datetime] | None = None,
        stop_strategies: StopStrategies | None = None,
        order_wait: float = 5.0,
    ) -> None:
        self._db = db
        self.engine = engine
        self._market = market
        self._sessions = sessions
        self._hub = hub
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stop_strategies = stop_strategies
        self.orders: OrderService | None = None  # set by the runtime (it needs us first)
        # How long cancellations and square-off orders are waited for at the broker.
        self.order_wait = order_wait
        self._charged: dict[str, int] = {}  # order id -> filled quantity charges were read at
        self._funded: set[str] = set()
        self._owners: dict[str, str] = {}  # config id -> user id (ids are never reused)
        self._watching: dict[str, HubHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = False
        # -- events (issue #7): told of every stored state change (the runtime publishes
        # them on the event bus for the users' WebSockets); called after the commit.
        self.state_listeners: list[Callable[[RiskStateChange], None]] = []
        # -- end events
        # -- cluster (issue #7): with several processes accepting orders, ``user_lock``
        # (a cluster-wide lock per user, given by the runtime) serialises each user's checks
        # and each check first rebuilds the user's books from the database; only the
        # process holding the risk-monitor lease acts on loss-limit breaches.
        self.user_lock: Callable[[str], AbstractAsyncContextManager[Any]] | None = None
        self.acts_on_breaches = True
        self._local_user_locks: dict[str, asyncio.Lock] = {}
        self.monitoring = asyncio.Event()  # set while this process is the risk monitor
        # -- end cluster

    def now(self) -> datetime:
        return self._clock()

    # -- start-up --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load everything the engine needs from the database: instruments and their last
        prices first (working orders reserve at the larger of their own and the last price,
        exactly as when they were placed), then limits and states, positions, and the
        working orders (whose reducing or opening nature depends on the positions)."""
        if self.started:
            return
        instruments = self._market.instruments()
        self.engine.add_instruments(instruments)
        now = self.now()
        for instrument in instruments:
            last = self._last(instrument.symbol, instrument.exchange)
            if last is not None:
                self.engine.on_price(instrument.symbol, instrument.exchange, last, now)
        async with self._db() as session:
            await self._load_limits(session)
            for state_row in (await session.scalars(select(RiskStateRow))).all():
                self.engine.set_state(state_row.scope, state_row.state, state_row.reason or "")
            net = _net_by_user(
                (await session.scalars(select(PositionRow).where(PositionRow.quantity != 0))).all()
            )
            open_orders = await _working_orders(session)
            # The charges of working orders so far (the engine counts later ones as deltas).
            order_charges = await self._order_charges(session, [o.order_id for o in open_orders])
            flows = await _period_flows(session, now)
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
        for order in open_orders:
            self.engine.load_open_order(order, charges=order_charges.get(order.order_id, ZERO))
            if order.filled_quantity:
                self._charged[order.order_id] = order.filled_quantity
        self._restore_pnl(net, flows)
        self.started = True

    def _restore_pnl(
        self,
        net: dict[tuple[str, str, str, str], tuple[int, Decimal]],
        flows: _PeriodFlows,
    ) -> None:
        """Give the engine each account's P&L so far today and this week, so a restart does
        not reset the loss limits: the cash flow of the period's trades, minus their
        charges, plus the positions at the last price, minus the positions held at the
        period's start valued at the previous close (the day's reference price)."""
        held: dict[tuple[str, str], list[tuple[str, str]]] = {}  # account -> instruments
        for user_id, config_id, exchange, symbol in net.keys() | flows.moved.keys():
            held.setdefault((user_id, config_id), []).append((exchange, symbol))
        for (user_id, config_id), instruments in held.items():
            cash_day, cash_week, charges_day, charges_week = flows.cash.get(
                (user_id, config_id), [ZERO] * 4
            )
            day, week = cash_day - charges_day, cash_week - charges_week
            for exchange, symbol in instruments:
                key = (user_id, config_id, exchange, symbol)
                now_quantity = net.get(key, (0, ZERO))[0]
                moved_today, moved_week = flows.moved.get(key, (0, 0))
                last = self._last(symbol, exchange) or flows.last_price.get((exchange, symbol))
                reference = self._reference(symbol, exchange) or last
                if last is None or reference is None:
                    continue  # an instrument the market no longer lists: no price to use
                value = now_quantity * last
                day += value - (now_quantity - moved_today) * reference
                week += value - (now_quantity - moved_week) * reference
            if day or week:
                self.engine.load_pnl(user_id, config_id, day=day, week=week)

    def _reference(self, symbol: str, exchange: Exchange | str) -> Decimal | None:
        """The instrument's previous close, where the day's P&L of a position held
        overnight starts."""
        try:
            return self._market.quote(symbol, exchange).close
        except KeyError:
            return None

    async def _load_limits(self, session: AsyncSession) -> None:
        rows = (await session.scalars(select(RiskLimitRow))).all()
        self._apply_limits(rows)

    def _apply_limits(
        self,
        rows: Iterable[RiskLimitRow],
        *,
        user_ids: Iterable[str] = (),
        config_ids: Iterable[str] = (),
    ) -> None:
        """Give the engine the stored limits; the users and accounts named that have no
        row any more are set back to the defaults (a cluster's refresh of one user)."""
        missing_users, missing_configs = set(user_ids), set(config_ids)
        by_scope: dict[str, dict[str, RiskLimitRow]] = {}
        for row in rows:
            by_scope.setdefault(row.scope, {})[row.kind] = row
        for scope, kinds in by_scope.items():
            target = Scope.parse(scope)
            user_id = next(iter(kinds.values())).user_id
            if target.kind == "user":
                missing_users.discard(user_id)
                self.engine.set_limits(user_id, None, self._user_limits(kinds))
            elif target.kind == "account":
                missing_configs.discard(cast(str, target.id))
                self.engine.set_limits(user_id, target.id, self._account_override(kinds))
        for user_id in missing_users:
            self.engine.set_limits(user_id, None, self._user_limits({}))
            for config_id in missing_configs:
                self.engine.set_limits(user_id, config_id, None)

    def _user_limits(self, rows: dict[str, RiskLimitRow]) -> RiskLimits:
        """A user's limits: the ceiling (the defaults where the administrator set none)
        tightened by the user's own; a field the user did not give is the ceiling's."""
        ceiling = self._ceiling(rows, self.engine.default_limits)
        own = rows.get(OWN)
        if own is None:
            return ceiling
        return ceiling.tightened(RiskLimits.from_dict(own.limits, base=ceiling))

    @staticmethod
    def _ceiling(rows: dict[str, RiskLimitRow], base: RiskLimits) -> RiskLimits:
        row = rows.get(CEILING)
        return RiskLimits.from_dict(row.limits, base=base) if row is not None else base

    @staticmethod
    def _account_override(rows: dict[str, RiskLimitRow]) -> RiskLimits:
        """An account's own limits as the engine takes them: only the fields given (in the
        account's ceiling or the user's choices for it), everything else as loose as it
        can be, so the user's limits (which the engine tightens them with) fill the rest
        and later changes to them still apply."""
        override = RiskService._ceiling(rows, PERMISSIVE)
        own = rows.get(OWN)
        if own is not None:
            override = override.tightened(RiskLimits.from_dict(own.limits, base=PERMISSIVE))
        return override

    # -- the order path (RiskCheck) --------------------------------------------------------
    async def _prepare(self, symbol: str, exchange: Exchange) -> None:
        """A live market learns instruments (an instrument-master load) and prices (the
        first quote of an instrument nobody watched) after start-up: teach the engine the
        instrument and fetch a price before the synchronous check needs them."""
        if self.engine.instrument(symbol, exchange) is None:
            found = self._market.get_instrument(symbol, exchange)
            if found is not None:
                self.engine.add_instruments([found])
        ensure = getattr(self._market, "ensure", None)
        if ensure is not None:
            await ensure(symbol, exchange)

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
        await self._check(
            user_id,
            config_id,
            order,
            order_id=order_id,
            intentional=intentional,
            square_off=square_off,
        )

    async def _check(
        self,
        user_id: str,
        config_id: str,
        order: BrokerOrder,
        *,
        order_id: str,
        intentional: bool = False,
        square_off: bool = False,
        replacing: Order | None = None,
    ) -> None:
        """``replacing``: a working order whose reservation is lifted for the check (and
        put back right after, in the same synchronous step): ``order`` takes its place."""
        await self._require_owner(user_id, config_id)
        await self._feed_funds(user_id, config_id)
        exchange = Exchange(order.exchange)
        await self._prepare(order.symbol, exchange)
        now = self.now()
        last = self._last(order.symbol, exchange)
        breaches = (
            self.engine.on_price(order.symbol, exchange, last, now) if last is not None else []
        )
        # From here to the end nothing awaits: no other order can see the lifted state.
        lifted = self.engine.open_order(replacing.order_id) if replacing is not None else None
        if lifted is not None:
            self.engine.release(lifted.order_id)
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
            if replacing is not None and lifted is not None:
                self.engine.load_open_order(replacing, charges=lifted.charges)
                restored = self.engine.open_order(replacing.order_id)
                if restored is not None:  # exactly the fills it had seen
                    restored.filled, restored.filled_value = lifted.filled, lifted.filled_value
            if breaches:
                self._spawn(self._handle_breaches(breaches))

    def release(self, order_id: str) -> None:
        self.engine.release(order_id)

    # -- cluster (issue #7) ----------------------------------------------------------------
    def guard(self, user_id: str) -> AbstractAsyncContextManager[None]:
        """See ``RiskCheck.guard``: with a ``user_lock`` (a cluster), the user's lock
        across processes, then the user's books rebuilt from the database."""
        if self.user_lock is None:
            return contextlib.nullcontext()
        return self._guarded(user_id)

    @contextlib.asynccontextmanager
    async def _guarded(self, user_id: str) -> AsyncIterator[None]:
        assert self.user_lock is not None
        # Queue this process's own orders of the user here (cheap) rather than at the
        # cluster lock, which is polled.
        local = self._local_user_locks.get(user_id)
        if local is None:
            local = self._local_user_locks[user_id] = asyncio.Lock()
        async with local, self.user_lock(user_id):
            await self.sync_user(user_id)
            yield

    @property
    def acts_on_breaches(self) -> bool:
        """Whether this process judges the loss limits and acts on breaches (always, but
        in a cluster only the risk monitor's lease holder)."""
        return self.engine.loss_checks

    @acts_on_breaches.setter
    def acts_on_breaches(self, value: bool) -> None:
        self.engine.loss_checks = value

    async def sync_user(self, user_id: str) -> None:
        """Rebuild the engine's picture of one user from the database: trading states
        (the global one, the user's, the user's accounts'), limits, working orders,
        positions, and the orders of the rate and duplicate windows. Every accepted order
        is stored before the user's lock passes on, so this is the whole truth."""
        now = self.now()
        known = self.engine.account_ids(user_id)
        window = max(
            [1.0]
            + [
                self.engine.limits(user_id, c).duplicate_window_seconds or 0.0
                for c in [None, *known]
            ]
        )
        cutoff = now - timedelta(seconds=window)
        # Four small indexed queries: states, limits, positions, orders (working or recent).
        async with self._db() as session:
            account_scopes = select(literal("account:") + BrokerConfig.id).where(
                BrokerConfig.user_id == user_id
            )
            user_scopes = [str(GLOBAL), str(Scope.for_user(user_id))]
            states = (
                await session.scalars(
                    select(RiskStateRow).where(
                        or_(
                            RiskStateRow.scope.in_(user_scopes),
                            RiskStateRow.scope.in_(account_scopes),
                        )
                    )
                )
            ).all()
            limit_rows = (
                await session.scalars(select(RiskLimitRow).where(RiskLimitRow.user_id == user_id))
            ).all()
            position_rows = (
                await session.scalars(
                    select(PositionRow).where(
                        PositionRow.user_id == user_id, PositionRow.quantity != 0
                    )
                )
            ).all()
            orders = [
                order_from_row(row)
                for row in (
                    await session.scalars(
                        select(OrderRow)
                        .where(
                            OrderRow.user_id == user_id,
                            or_(OrderRow.status.in_(_OPEN), OrderRow.created_at >= cutoff),
                        )
                        .order_by(OrderRow.created_at, OrderRow.id)
                    )
                ).all()
            ]
            open_orders = [o for o in orders if not o.status.is_final]
            charges = await self._order_charges(
                session, [o.order_id for o in open_orders if o.filled_quantity]
            )
        recent = [o for o in orders if _as_utc(o.created_at) >= cutoff]
        # Scopes without a row are ACTIVE (a state is stored as a row, reset included).
        for scope in [*user_scopes, *(str(Scope.for_account(c)) for c in known)]:
            self.engine.set_state(scope, TradingState.ACTIVE, "")
        for stored in states:
            self.engine.set_state(stored.scope, stored.state, stored.reason or "")
        self._apply_limits(limit_rows, user_ids=[user_id], config_ids=known)
        self.engine.rebuild_user(
            user_id,
            positions=_net_positions(position_rows),
            open_orders=open_orders,
            recent_orders=recent,
            charges=charges,
        )
        for order in open_orders:
            if order.filled_quantity:
                self._charged[order.order_id] = order.filled_quantity
        for pos in position_rows:
            await self._watch(pos.symbol, Exchange(pos.exchange))

    @staticmethod
    async def _order_charges(session: AsyncSession, order_ids: list[str]) -> dict[str, Decimal]:
        """The charges so far of each of these orders (the sum of their trades')."""
        charges: dict[str, Decimal] = {}
        for start in range(0, len(order_ids), 500):
            chunk = order_ids[start : start + 500]
            for order_id, charge in (
                await session.execute(
                    select(TradeRow.order_id, TradeRow.charges).where(TradeRow.order_id.in_(chunk))
                )
            ).all():
                charges[order_id] = charges.get(order_id, ZERO) + charge
        return charges

    async def resync_all(self) -> list[Breach]:
        """The risk monitor's refresh (a cluster): every user's books, trading states,
        limits and P&L so far rebuilt from the database, as at start-up, then the loss
        limits judged at the last prices. Returns the breaches found (not yet acted on)."""
        now = self.now()
        async with self._db() as session:
            await self._load_limits(session)
            state_rows = (await session.scalars(select(RiskStateRow))).all()
            position_rows = (
                await session.scalars(select(PositionRow).where(PositionRow.quantity != 0))
            ).all()
            open_orders = await _working_orders(session)
            charges = await self._order_charges(session, [o.order_id for o in open_orders])
            flows = await _period_flows(session, now)
        for state_row in state_rows:
            self.engine.set_state(state_row.scope, state_row.state, state_row.reason or "")
        by_user_positions: dict[str, list[PositionRow]] = {}
        for row in position_rows:
            by_user_positions.setdefault(row.user_id, []).append(row)
        by_user_orders: dict[str, list[Order]] = {}
        for order in open_orders:
            by_user_orders.setdefault(order.user_id, []).append(order)
        users = set(self.engine.user_ids()) | set(by_user_positions) | set(by_user_orders)
        users |= {user_id for user_id, _config in flows.cash}
        for user_id in users:
            self.engine.rebuild_user(
                user_id,
                positions=_net_positions(by_user_positions.get(user_id, [])),
                open_orders=by_user_orders.get(user_id, []),
                charges=charges,
                keep_pnl=False,
            )
            for config_id in self.engine.account_ids(user_id):
                self.engine.load_pnl(user_id, config_id, day=ZERO, week=ZERO)
        self._restore_pnl(_net_by_user(position_rows), flows)
        for order in open_orders:
            if order.filled_quantity:
                self._charged[order.order_id] = order.filled_quantity
        breaches: list[Breach] = []
        for exchange, symbol in {(p.exchange, p.symbol) for p in position_rows}:
            await self._watch(symbol, Exchange(exchange))
            last = self._last(symbol, exchange)
            if last is not None:
                breaches += self.engine.on_price(symbol, exchange, last, now)
        return breaches

    async def monitor_round(self) -> None:
        """One refresh of the risk monitor, acting on the breaches it finds."""
        breaches = await self.resync_all()
        if breaches:
            await self._handle_breaches(breaches)

    async def run_monitor(self, every: float) -> None:
        """The cluster's risk monitor (run by the holder of its lease, one process): judge
        the loss limits and act on breaches, refreshing the books from the database every
        ``every`` seconds (fills made by other processes' workers reach the P&L that way;
        prices in between come from the market as they tick)."""
        self.acts_on_breaches = True
        self.monitoring.set()
        try:
            while True:
                try:
                    await self.monitor_round()
                except Exception:  # the next round tries again
                    log.exception("risk_monitor_refresh_failed")
                await asyncio.sleep(every)  # a period, not a synchronisation
        finally:
            self.acts_on_breaches = False
            self.monitoring.clear()

    # -- end cluster

    async def check_modify(self, current: Order, modified: Order) -> None:
        """A modification passes every rule as if its new terms (the unfilled part) were
        the order, in place of its old terms: the old reservation is lifted for the
        check, so a modification is never an extra open order and shrinking an order is
        never refused for the room its old terms took. Nothing changes in the books; the
        reservation follows the order's next update (``on_order``). ``current`` is the
        order as committed (read under its lock): the state the engine last saw."""
        remaining = modified.quantity - modified.filled_quantity
        if remaining <= 0:
            return
        request = BrokerOrder(
            symbol=modified.symbol,
            exchange=modified.exchange,
            side=modified.side,
            order_type=modified.order_type,
            product_type=modified.product_type,
            quantity=remaining,
            price=modified.price,
            trigger_price=modified.trigger_price,
        )
        probe = f"{current.order_id}~modify"
        await self._check(
            current.user_id,
            current.config_id,
            request,
            order_id=probe,
            intentional=True,
            replacing=current,
        )
        self.engine.release(probe)

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
            if order.filled_quantity > self._charged.get(order.order_id, 0):
                self._charged[order.order_id] = order.filled_quantity
                self._spawn(self._feed_charges(order.order_id))
        if order.status.is_final:
            self._charged.pop(order.order_id, None)
            if not self.engine.open_order_ids(order.config_id):
                self._funded.discard(order.config_id)  # the broker's figure is exact again
        if breaches:
            self._spawn(self._handle_breaches(breaches))

    async def _feed_charges(self, order_id: str) -> None:
        """Give the engine an order's charges so far (the sum of its trades'): the loss
        limits count them. Order updates do not carry charges, so they are read back.

        Under the order's lock, which every change of an order is committed under and
        whose listeners run before the lock can pass on: the order read here is then the
        one the engine has seen last, and handing it over again changes nothing but the
        charges."""
        assert self.orders is not None
        async with self.orders.locks.hold(order_id):
            async with self._db() as session:
                row = await session.get(OrderRow, order_id)
                if row is None:
                    return
                charges = sum(
                    (
                        await session.scalars(
                            select(TradeRow.charges).where(TradeRow.order_id == order_id)
                        )
                    ).all(),
                    ZERO,
                )
                order = order_from_row(row)
            if not charges:
                return
            try:
                breaches = self.engine.on_order(order, charges=charges, now=self.now())
            except DomainError:
                log.exception("risk_order_update_failed", order_id=order_id)
                return
        if breaches:
            await self._handle_breaches(breaches)

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
            # Not awaited here: the market (every other subscriber) must not wait for the
            # database and the square-off orders.
            self._spawn(self._handle_breaches(breaches))

    # -- breaches, kill switches, square-off -------------------------------------------------
    async def _handle_breaches(self, breaches: Iterable[Breach]) -> None:
        squared: set[Scope] = set()
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
            # A kill switch (or a stricter breach) may have come in since: never loosen it.
            current = self.engine.state(breach.scope).state
            if current.strictness <= breach.new_state.strictness:
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
            if breach.square_off and breach.scope not in squared:
                squared.add(breach.scope)
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
        old = self.engine.state(scope).state  # -- events (issue #7)
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
            # -- events (issue #7): whose WebSockets hear of it (an account's owner)
            owner = scope.id if scope.kind == "user" else None
            if scope.kind == "account" and scope.id is not None:
                owner = self._owners.get(scope.id) or await session.scalar(
                    select(BrokerConfig.user_id).where(BrokerConfig.id == scope.id)
                )
            # -- end events
        # -- events (issue #7)
        change = RiskStateChange(
            scope=str(scope),
            user_id=owner,
            account=scope.id if scope.kind == "account" else None,
            old_state=old,
            new_state=state,
            reason=reason,
            kill_switch=kill_switch,
            at=self.now(),
        )
        for listener in list(self.state_listeners):
            try:
                listener(change)
            except Exception:
                log.exception("risk_state_listener_failed", scope=str(scope))
        # -- end events

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
        """Cancel every working order of the scope (all asked at once, then waited for, up
        to ``order_wait`` seconds); returns how many were asked."""
        assert self.orders is not None
        orders = self.orders

        async def cancel(user_id: str, order_id: str) -> bool:
            try:
                await orders.cancel(user_id, order_id, wait=self.order_wait)
            except DomainError as exc:  # already final, or the broker refused
                log.info("risk_cancel_skipped", order_id=order_id, reason=exc.message)
                return False
            return True

        asked = await asyncio.gather(
            *(
                cancel(user_id, order_id)
                for user_id, order_id in await self._scope_orders(scope, product)
            )
        )
        return sum(asked)

    async def flatten(
        self, scope: Scope, *, reason: str, product: ProductType | None = None
    ) -> list[str]:
        """Cancel the scope's working orders, then close its positions at market (orders
        marked as square-offs: they pass a HALTED state since they only reduce risk).
        Returns the ids of the square-off orders, each placed and waited for (up to
        ``order_wait`` seconds) at the broker."""
        assert self.orders is not None
        orders = self.orders
        await self.cancel_working(scope, product)

        async def close(pos: PositionRow) -> str | None:
            request = BrokerOrder(
                symbol=pos.symbol,
                exchange=pos.exchange,
                side=OrderSide.SELL if pos.quantity > 0 else OrderSide.BUY,
                order_type=OrderType.MARKET,
                product_type=pos.product_type,
                quantity=abs(pos.quantity),
                tag="risk-squareoff",
            )
            for attempt in range(SQUARE_OFF_RATE_RETRIES + 1):
                try:
                    result = await orders.place(
                        pos.user_id,
                        pos.config_id,
                        request,
                        square_off=True,
                        intentional=True,
                        wait=self.order_wait,
                    )
                except RiskRejected as exc:
                    if exc.details.get("rule") == "order_rate" and (
                        attempt < SQUARE_OFF_RATE_RETRIES
                    ):
                        # More positions than the order rate allows in a second: pace them.
                        await asyncio.sleep(1.0)
                        continue
                    failure: DomainError = exc
                except DomainError as exc:
                    failure = exc
                else:
                    return result.order.order_id
                log.error(
                    "risk_square_off_failed",
                    config_id=pos.config_id,
                    symbol=pos.symbol,
                    error=failure.message,
                    details=failure.details,
                )
                return None
            return None

        placed = await asyncio.gather(
            *(close(pos) for pos in await self._scope_positions(scope, product))
        )
        ids = [order_id for order_id in placed if order_id is not None]
        log.warning("risk_square_off", scope=str(scope), reason=reason, orders=len(ids))
        return ids

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
        """Store a user's own limits (``kind="own"``: checked against the ceiling, tightening
        only) or an administrator's ceiling (``kind="ceiling"``), for the user or for one of
        the user's accounts (``config_id``); the engine applies the result at once. Returns
        the limits that now apply.

        Each call replaces that row with exactly the fields given (``{}`` clears it): a
        field not given follows the ceiling (own limits) or the defaults (a ceiling), also
        when those change later. An account's limits are always within the user's."""
        if kind not in (CEILING, OWN):
            raise DomainError(
                f"kind must be {CEILING!r} or {OWN!r}, got {kind!r}",
                ErrorCode.VALIDATION_ERROR,
                field="kind",
            )
        if "intraday_square_off" in values:
            raise DomainError(
                "intraday_square_off is deployment-wide: set it in RISK_DEFAULT_LIMITS",
                ErrorCode.VALIDATION_ERROR,
                field="intraday_square_off",
            )
        if config_id is not None:
            await self._require_owner(user_id, config_id)
        scope = str(Scope.for_account(config_id) if config_id else Scope.for_user(user_id))
        async with self._db() as session, session.begin():
            rows = {
                r.kind: r
                for r in (
                    await session.scalars(select(RiskLimitRow).where(RiskLimitRow.scope == scope))
                ).all()
            }
            if config_id is None:
                base = self.engine.default_limits
                ceiling = self._ceiling(rows, base)
            else:
                base = self.engine.limits(user_id)
                ceiling = base.tightened(self._ceiling(rows, PERMISSIVE))
            proposed = RiskLimits.from_dict(values, base=ceiling if kind == OWN else base)
            if kind == OWN:
                ensure_within_ceiling(proposed, ceiling)
            row = rows.get(kind)
            if row is None:
                row = RiskLimitRow(scope=scope, kind=kind, user_id=user_id)
                session.add(row)
                rows[kind] = row
            row.limits = _stored(proposed, values)
            row.updated_by = by
            row.updated_at = utcnow()
            await add_audit(
                session,
                "risk.limits_changed",
                user_id=by,
                target=scope,
                data={"kind": kind, "for_user": user_id, **row.limits},
            )
            applied = self._user_limits(rows) if config_id is None else self._account_override(rows)
        self.engine.set_limits(user_id, config_id, applied)  # once stored
        return self.engine.limits(user_id, config_id)

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
