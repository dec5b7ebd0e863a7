"""The in-process risk engine: pre-trade checks with atomic reservations, and the books
kept in step with orders and prices (NautilusTrader's RiskEngine is the design bar).

Synchronous and pure: no I/O, no asyncio, no clock of its own (every call that needs the
time takes ``now``). The integration calls it from one thread (the event loop) and feeds
it events:

* start-up: ``add_instruments``, ``set_limits``, ``set_funds``, ``load_position``,
  ``load_open_order``, optionally ``load_pnl`` and ``on_price`` for the last prices;
* an order request: ``check_and_reserve`` (raises ``RiskRejected`` / ``InsufficientFunds``)
  then, if the order could not be persisted, ``release``;
* every order update: ``on_order`` (fills, modifications, the final state) - the one path
  for fills. ``charges`` is the order's cumulative charges so far;
* every price: ``on_price`` (returns the loss-limit ``Breach`` es it caused);
* operators: ``set_state`` (kill switch / reduce-only per scope), ``usage``.

Reservations: an accepted order reserves its notional (quantity x its price, its trigger
price, or the last price for a MARKET order) on its side of the instrument, its margin
from the account's funds, a slot in the per-user and per-account rate windows, and its
duplicate fingerprint - all after every rule has passed, so a rejected order leaves
nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from trading_backend.domain import (
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Instrument,
    Order,
    OrderSide,
    OrderType,
    ProductType,
)
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import ZERO, to_decimal
from trading_backend.risk.book import (
    AccountBook,
    DuplicateKey,
    OpenOrder,
    ScopeState,
    SymbolBook,
    UserBook,
    prune_window,
)
from trading_backend.risk.freeze import FREEZE_QUANTITIES, FreezeTable, freeze_quantity
from trading_backend.risk.limits import RiskLimits, TradingState
from trading_backend.risk.port import RiskRejected
from trading_backend.risk.rules import (
    DEFAULT_RULES,
    CheckContext,
    InstrumentInfo,
    Rule,
    TradingCalendar,
    Violation,
)

# Margin per unit of notional by product. DELIVERY and CARRYFORWARD (carried overnight)
# block the full value; INTRADAY and MARGIN 20% (5x leverage, the SEBI peak-margin norm
# for equity intraday). Derivatives use the same simple rule for now (no SPAN).
MARGIN_RATIOS: dict[ProductType, Decimal] = {
    ProductType.DELIVERY: Decimal(1),
    ProductType.CARRYFORWARD: Decimal(1),
    ProductType.INTRADAY: Decimal("0.2"),
    ProductType.MARGIN: Decimal("0.2"),
}
DUPLICATE_MEMORY_SECONDS = 60.0  # fingerprints are kept at least this long (or the window)
_MINUS_INFINITY = float("-inf")


class InsufficientFunds(RiskRejected):
    code = ErrorCode.INSUFFICIENT_FUNDS


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a trading state applies: ``global``, ``user:<id>`` or ``account:<config id>``."""

    kind: str
    id: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "global":
            if self.id is not None:
                raise DomainError("the global scope has no id", ErrorCode.VALIDATION_ERROR)
        elif self.kind in ("user", "account"):
            if not self.id:
                raise DomainError(f"a {self.kind} scope needs an id", ErrorCode.VALIDATION_ERROR)
        else:
            raise DomainError(
                f"scope must be global, user:<id> or account:<id>, got {self.kind!r}",
                ErrorCode.VALIDATION_ERROR,
                field="scope",
            )

    def __str__(self) -> str:
        return "global" if self.id is None else f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, value: Scope | str) -> Scope:
        if isinstance(value, Scope):
            return value
        kind, _, ident = value.partition(":")
        return cls(kind, ident or None)

    @classmethod
    def for_user(cls, user_id: str) -> Scope:
        return cls("user", user_id)

    @classmethod
    def for_account(cls, config_id: str) -> Scope:
        return cls("account", config_id)


GLOBAL = Scope("global")


@dataclass(frozen=True, slots=True)
class LoadedPosition:
    """A stored net position, as ``rebuild_user`` takes it."""

    config_id: str
    symbol: str
    exchange: str
    quantity: int
    average_price: Decimal


@dataclass(frozen=True, slots=True)
class Breach:
    """A loss limit crossed: the scope moved to ``new_state``. When ``square_off`` the
    integration should close the scope's positions (and cancel its working orders)."""

    scope: Scope
    rule: str  # "daily_loss_limit" or "weekly_loss_limit"
    limit: Decimal
    value: Decimal  # the loss (positive), realised + unrealised - charges
    new_state: TradingState
    square_off: bool
    user_id: str
    config_id: str | None
    at: datetime
    message: str


def reservation_price(own: Decimal | None, last: Decimal | None) -> Decimal | None:
    """What an order reserves per unit: the larger of its own price (else trigger price)
    and the last price. A marketable order fills around the last price, where positions
    are valued; a MARKET order has only the last price."""
    if own is None:
        return last
    if last is None or own >= last:
        return own
    return last


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _key(exchange: Exchange | str, symbol: str) -> str:
    return f"{Exchange(exchange).value}:{symbol.strip().upper()}"


class RiskEngine:
    def __init__(
        self,
        *,
        instruments: Iterable[Instrument] = (),
        default_limits: RiskLimits | None = None,
        calendar: TradingCalendar | None = None,
        rules: Sequence[Rule] = DEFAULT_RULES,
        freeze_table: FreezeTable = FREEZE_QUANTITIES,
        margin_ratios: Mapping[ProductType, Decimal] | None = None,
    ) -> None:
        self.default_limits = default_limits or RiskLimits()
        self.calendar = calendar or TradingCalendar()
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._freeze_table = freeze_table
        self._margin: dict[str, Decimal] = {
            product.value: ratio for product, ratio in (margin_ratios or MARGIN_RATIOS).items()
        }
        self._instruments: dict[str, InstrumentInfo] = {}
        self._prices: dict[str, Decimal] = {}
        self._users: dict[str, UserBook] = {}
        self._accounts: dict[str, AccountBook] = {}
        self._holders: dict[str, dict[str, SymbolBook]] = {}  # positions per instrument
        self._orders: dict[str, OpenOrder] = {}
        self._finished: dict[str, OpenOrder] = {}  # final orders of today (idempotence)
        self._states: dict[str, ScopeState] = {}
        self._global_state = TradingState.ACTIVE
        self._global_reason = ""
        self._pending_funds: dict[str, Decimal] = {}
        self._next_roll = _MINUS_INFINITY
        self._today: date | None = None
        self._week_start: date | None = None
        # Off in the processes of a cluster that do not hold the risk monitor: their P&L
        # figures see only their own fills, so only the monitor judges the loss limits.
        self.loss_checks = True
        self.add_instruments(instruments)

    # -- reference data ------------------------------------------------------------------

    def add_instruments(self, instruments: Iterable[Instrument]) -> None:
        for instrument in instruments:
            self._instruments[instrument.key] = InstrumentInfo(
                instrument=instrument,
                key=instrument.key,
                lot_size=instrument.lot_size,
                tick_size=instrument.tick_size,
                freeze_quantity=freeze_quantity(instrument, self._freeze_table),
                tradable=instrument.tradable,
                expiry=instrument.expiry,
            )

    def instrument(self, symbol: str, exchange: Exchange | str) -> Instrument | None:
        info = self._instruments.get(_key(exchange, symbol))
        return info.instrument if info is not None else None

    def last_price(self, symbol: str, exchange: Exchange | str) -> Decimal | None:
        return self._prices.get(_key(exchange, symbol))

    # -- books ---------------------------------------------------------------------------

    def _user(self, user_id: str) -> UserBook:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = UserBook(user_id, self.default_limits)
            known = self._states.get(str(Scope.for_user(user_id)))
            if known is not None:
                user.state, user.reason = known.state, known.reason
        return user

    def _account(self, user_id: str, config_id: str) -> AccountBook:
        account = self._accounts.get(config_id)
        if account is not None:
            if account.user.user_id != user_id:
                raise DomainError(
                    f"broker account {config_id!r} belongs to another user",
                    ErrorCode.CONFLICT,
                )
            return account
        user = self._user(user_id)
        account = AccountBook(user, config_id, user.limits, holders=self._holders)
        account.available_funds = self._pending_funds.pop(config_id, None)
        known = self._states.get(str(Scope.for_account(config_id)))
        if known is not None:
            account.state, account.reason = known.state, known.reason
        user.accounts[config_id] = account
        self._accounts[config_id] = account
        return account

    def set_limits(self, user_id: str, config_id: str | None, limits: RiskLimits | None) -> None:
        """The user's limits (``config_id`` None; across all the user's accounts) or one
        account's own (tightening the user's; None removes them). Give the final figures:
        the administrator's ceiling already tightened by the user's choices."""
        user = self._user(user_id)
        if config_id is None:
            user.limits = limits or self.default_limits
            accounts = list(user.accounts.values())
        else:
            account = self._account(user_id, config_id)
            account.override = limits
            accounts = [account]
        for account in accounts:
            if account.override is None:
                account.limits, account.separate_limits = user.limits, False
            else:
                account.limits = user.limits.tightened(account.override)
                account.separate_limits = True

    def limits(self, user_id: str, config_id: str | None = None) -> RiskLimits:
        """The limits that apply: the user's, or an account's effective ones."""
        if config_id is None:
            user = self._users.get(user_id)
            return user.limits if user is not None else self.default_limits
        account = self._accounts.get(config_id)
        if account is None:
            return self.limits(user_id)
        return account.limits

    def set_funds(self, config_id: str, available: Decimal) -> None:
        """Funds available for new orders in the account, before the engine's own
        reservations (which it subtracts). Fills of opening orders consume their reserved
        margin from this figure until it is fed again. Until fed, funds are not checked."""
        amount = to_decimal(available, "available")
        account = self._accounts.get(config_id)
        if account is None:
            self._pending_funds[config_id] = amount
        else:
            account.available_funds = amount

    def reserved_funds(self, config_id: str) -> Decimal:
        """Funds the engine holds for the account's working orders (zero if unknown)."""
        account = self._accounts.get(config_id)
        return account.reserved_funds if account is not None else ZERO

    def load_position(
        self,
        user_id: str,
        config_id: str,
        symbol: str,
        exchange: Exchange | str,
        quantity: int,
        average_price: Decimal,
        *,
        last_price: Decimal | None = None,
    ) -> None:
        """Set a position at start-up (net across products). The P&L so far is unchanged;
        give it with ``load_pnl``. Valued at ``last_price``, the known last price, else
        the average price."""
        key = _key(exchange, symbol)
        if last_price is not None:
            self._prices[key] = to_decimal(last_price, "last_price")
        mark = self._prices.get(key, to_decimal(average_price, "average_price"))
        account = self._account(user_id, config_id)
        account.set_position(key, quantity, to_decimal(average_price, "average_price"), mark)

    def load_pnl(
        self, user_id: str, config_id: str, *, day: Decimal, week: Decimal | None = None
    ) -> None:
        """The account's P&L so far today / this week (realised + unrealised - charges),
        after its positions are loaded: the loss limits continue from there."""
        account = self._account(user_id, config_id)
        account.base_day = account.cash_day + account.market_value - account.charges_day - day
        if week is None:
            week = day
        account.base_week = account.cash_week + account.market_value - account.charges_week - week

    def load_open_order(self, order: Order, *, charges: Decimal = ZERO) -> None:
        """Track a working order found at start-up (no checks). Its fills so far are taken
        to be in the loaded positions already."""
        if order.status.is_final or order.order_id in self._orders:
            return
        account = self._account(order.user_id, order.config_id)
        key = _key(order.exchange, order.symbol)
        sign = 1 if order.side is OrderSide.BUY else -1
        remaining = max(order.quantity - order.filled_quantity, 0)
        own = order.price if order.price is not None else order.trigger_price
        price = reservation_price(own, self._prices.get(key)) or ZERO
        book = account.symbols.get(key)
        reducing = book is not None and book.reduces(sign, remaining)
        entry = OpenOrder(
            order_id=order.order_id,
            user_id=order.user_id,
            config_id=order.config_id,
            key=key,
            sign=sign,
            remaining=remaining,
            price=price,
            own_price=own,
            margin_ratio=ZERO if reducing else self._margin.get(order.product_type, Decimal(1)),
            filled=order.filled_quantity,
            filled_value=order.average_price * order.filled_quantity,
            charges=charges,
        )
        account.add_order(entry)
        self._orders[order.order_id] = entry

    def rebuild_user(
        self,
        user_id: str,
        *,
        positions: Iterable[LoadedPosition],
        open_orders: Iterable[Order],
        recent_orders: Iterable[Order] = (),
        charges: Mapping[str, Decimal] | None = None,
        keep_pnl: bool = True,
    ) -> None:
        """Replace everything the engine holds of one user's trading with the given figures
        (the database's): positions, working orders, the order-rate windows and duplicate
        fingerprints (from ``recent_orders``: the user's orders created in the last minute,
        working or not). Limits, trading states and fed funds stay; so does the P&L so far
        when ``keep_pnl`` (the caller restores it otherwise, with ``load_pnl``).

        Why: in a cluster several processes accept orders for the same user, each with its
        own engine. Under the user's cluster-wide lock the process rebuilds the user's
        slice from the database (where every accepted order is stored before the lock is
        let go) and only then checks; so concurrent orders through different processes
        cannot jointly breach a limit."""
        charges = charges or {}
        old = self._users.get(user_id)
        accounts = dict(old.accounts) if old is not None else {}
        pnl = {cid: (a.day_pnl, a.week_pnl) for cid, a in accounts.items()}
        for order_id in [o for o, e in self._orders.items() if e.user_id == user_id]:
            del self._orders[order_id]
        for order_id in [o for o, e in self._finished.items() if e.user_id == user_id]:
            del self._finished[order_id]
        for config_id in accounts:
            for holders in self._holders.values():
                holders.pop(config_id, None)
            del self._accounts[config_id]
        for key in [k for k, holders in self._holders.items() if not holders]:
            del self._holders[key]
        if old is not None:
            del self._users[user_id]
            user = self._user(user_id)
            user.limits, user.state, user.reason = old.limits, old.state, old.reason
            for config_id, previous in accounts.items():
                account = self._account(user_id, config_id)
                account.override = previous.override
                account.limits = previous.limits
                account.separate_limits = previous.separate_limits
                account.available_funds = previous.available_funds
                account.state, account.reason = previous.state, previous.reason
        for position in positions:
            self.load_position(
                user_id,
                position.config_id,
                position.symbol,
                position.exchange,
                position.quantity,
                position.average_price,
            )
        for order in open_orders:
            self.load_open_order(order, charges=charges.get(order.order_id, ZERO))
        user = self._user(user_id)
        for order in sorted(recent_orders, key=lambda o: o.created_at):
            stamp = _aware(order.created_at).timestamp()
            account = self._account(user_id, order.config_id)
            account.rate.append(stamp)
            user.rate.append(stamp)
            if account.limits.duplicate_window_seconds is not None:
                sign = 1 if order.side is OrderSide.BUY else -1
                fingerprint: DuplicateKey = (
                    _key(order.exchange, order.symbol),
                    sign,
                    order.quantity,
                    order.price,
                )
                user.remember(fingerprint, stamp, order.order_id)
        if keep_pnl:
            for config_id, (day, week) in pnl.items():
                self.load_pnl(user_id, config_id, day=day, week=week)

    # -- the check -----------------------------------------------------------------------

    def check_and_reserve(
        self,
        user_id: str,
        config_id: str,
        order_id: str,
        order: BrokerOrder,
        *,
        now: datetime,
        intentional: bool = False,
        square_off: bool = False,
    ) -> None:
        """Run every rule; raise ``RiskRejected`` (``InsufficientFunds`` for funds) on the
        first violation, with ``details`` rule / limit / value / scope. On success reserve
        exposure, funds, a rate slot and the duplicate fingerprint under ``order_id``.

        ``intentional``: skip the duplicate rule. ``square_off``: the order must reduce a
        position without flipping it, and then passes any trading state (even HALTED)."""
        if order_id in self._orders:
            raise DomainError(f"order {order_id!r} is already reserved", ErrorCode.CONFLICT)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        stamp = now.timestamp()
        if stamp >= self._next_roll:
            self._roll(now)
        account = self._account(user_id, config_id)
        user = account.user
        key = f"{order.exchange}:{order.symbol}"
        sign = 1 if order.side is OrderSide.BUY else -1
        quantity = order.quantity
        price = cast(Decimal | None, order.price)
        trigger = cast(Decimal | None, order.trigger_price)
        last = self._prices.get(key)
        own = price if price is not None else trigger
        value_price = own if own is not None else last
        if own is None:
            ref = last
        elif last is None or own >= last:
            ref = own
        else:
            ref = last  # see reservation_price
        book = account.symbols.get(key)

        ctx = CheckContext()
        ctx.user_id = user_id
        ctx.config_id = config_id
        ctx.order_id = order_id
        ctx.order = order
        ctx.key = key
        ctx.info = self._instruments.get(key)
        ctx.sign = sign
        ctx.quantity = quantity
        ctx.order_type = cast(OrderType, order.order_type)
        ctx.price = price
        ctx.trigger = trigger
        ctx.now = now
        ctx.stamp = stamp
        ctx.today = cast(date, self._today)
        ctx.intentional = intentional
        ctx.square_off = square_off
        ctx.limits = account.limits
        ctx.user_limits = user.limits
        ctx.separate_limits = account.separate_limits
        ctx.account = account
        ctx.user = user
        ctx.symbol = book
        ctx.last_price = last
        ctx.ref_price = ref
        ctx.notional = ref * quantity if ref is not None else None
        ctx.order_value = value_price * quantity if value_price is not None else None
        ctx.reducing = book is not None and book.reduces(sign, quantity)
        ctx.calendar = self.calendar
        ctx.margin_ratio = self._margin.get(order.product_type, Decimal(1))
        state, scope, reason = self._global_state, "global", self._global_reason
        if user.state.strictness > state.strictness:
            state, scope, reason = user.state, f"user:{user_id}", user.reason
        if account.state.strictness > state.strictness:
            state, scope, reason = account.state, f"account:{config_id}", account.reason
        ctx.state = state
        ctx.state_scope = scope
        ctx.state_reason = reason

        for rule in self.rules:
            violation = rule.check(ctx)
            if violation is not None:
                raise _rejection(violation, order_id)
        self._reserve(ctx)

    def _reserve(self, ctx: CheckContext) -> None:
        account, user, stamp = ctx.account, ctx.user, ctx.stamp
        window = ctx.limits.duplicate_window_seconds
        duplicate_key: DuplicateKey | None = None
        if window is not None:
            duplicate_key = (ctx.key, ctx.sign, ctx.quantity, ctx.price)
        entry = OpenOrder(
            order_id=ctx.order_id,
            user_id=ctx.user_id,
            config_id=ctx.config_id,
            key=ctx.key,
            sign=ctx.sign,
            remaining=ctx.quantity,
            price=ctx.ref_price if ctx.ref_price is not None else ZERO,
            own_price=ctx.price if ctx.price is not None else ctx.trigger,
            margin_ratio=ZERO if ctx.reducing else ctx.margin_ratio,
            rate_stamp=stamp,
            duplicate_key=duplicate_key,
        )
        account.add_order(entry)
        prune_window(account.rate, stamp)
        account.rate.append(stamp)
        prune_window(user.rate, stamp)
        user.rate.append(stamp)
        if duplicate_key is not None and window is not None:
            user.prune_duplicates(stamp, max(window, DUPLICATE_MEMORY_SECONDS))
            user.remember(duplicate_key, stamp, ctx.order_id)
        self._orders[ctx.order_id] = entry

    def release(self, order_id: str) -> bool:
        """Undo ``check_and_reserve`` for an order that was never persisted: exposure,
        funds, its rate slot and duplicate fingerprint. False if nothing was reserved."""
        entry = self._orders.pop(order_id, None)
        if entry is None:
            return False
        account = self._accounts[entry.config_id]
        account.reduce_order(entry, entry.remaining, close=True)
        if entry.filled:
            self._finished[order_id] = entry
            return True
        if entry.rate_stamp is not None:
            for window in (account.rate, account.user.rate):
                try:
                    window.remove(entry.rate_stamp)
                except ValueError:
                    pass
        if entry.duplicate_key is not None:
            account.user.forget(entry.duplicate_key, order_id)
        return True

    # -- events --------------------------------------------------------------------------

    def on_order(
        self, order: Order, *, charges: Decimal | None = None, now: datetime | None = None
    ) -> list[Breach]:
        """Keep the books in step with an order update (idempotent: fills are the change
        in the cumulative ``filled_quantity`` / ``average_price``; ``charges`` is the
        order's cumulative charges). Fills move quantity from the reservation to the
        position; a final status releases what is left; a changed quantity or price
        (modification) moves the reservation. Returns any loss-limit breaches.

        ``now`` (default: ``order.updated_at``) dates the update for the day's P&L."""
        now = _aware(now or order.updated_at)
        if now.timestamp() >= self._next_roll:
            self._roll(now)
        entry = self._orders.get(order.order_id)
        if entry is None:
            finished = self._finished.get(order.order_id)
            if finished is None:
                if not order.status.is_final:
                    self.load_open_order(order, charges=charges or ZERO)
                return []
            account = self._accounts[finished.config_id]
            if self._progress(finished, account, order, charges):
                return self._evaluate(account, now)
            return []
        account = self._accounts[entry.config_id]
        changed = self._progress(entry, account, order, charges)
        if order.status.is_final:
            account.reduce_order(entry, entry.remaining, close=True)
            del self._orders[order.order_id]
            self._finished[order.order_id] = entry
        else:
            # A modification: a new quantity and/or a new price of the order's own.
            remaining = max(order.quantity - max(order.filled_quantity, entry.filled), 0)
            own = order.price if order.price is not None else order.trigger_price
            price = entry.price
            if own != entry.own_price:
                entry.own_price = own
                price = reservation_price(own, self._prices.get(entry.key)) or entry.price
            if remaining != entry.remaining or price != entry.price:
                account.reprice_order(entry, price, remaining)
        return self._evaluate(account, now) if changed else []

    def _progress(
        self, entry: OpenOrder, account: AccountBook, order: Order, charges: Decimal | None
    ) -> bool:
        changed = False
        filled = order.filled_quantity
        if filled > entry.filled:
            delta = filled - entry.filled
            total = order.average_price * filled
            value = total - entry.filled_value
            if order.average_price <= 0 or value <= 0:
                value = entry.price * delta  # no usable average: assume the reserved price
                total = entry.filled_value + value
            take = min(delta, entry.remaining)
            if take:
                consumed = entry.price * take * entry.margin_ratio
                account.reduce_order(entry, take, close=False)
                if consumed and account.available_funds is not None:
                    account.available_funds -= consumed
            account.apply_fill(
                entry.key, entry.sign, delta, value / delta, self._prices.get(entry.key)
            )
            entry.filled = filled
            entry.filled_value = total
            changed = True
        if charges is not None and charges > entry.charges:
            account.add_charges(charges - entry.charges)
            entry.charges = charges
            changed = True
        return changed

    def on_price(
        self, symbol: str, exchange: Exchange | str, price: Decimal, now: datetime
    ) -> list[Breach]:
        """A new last price: revalue every position in that instrument (only those) and
        evaluate the loss limits of the accounts and users holding it."""
        if not isinstance(price, Decimal):
            price = to_decimal(price, "price")
        now = _aware(now)
        if now.timestamp() >= self._next_roll:
            self._roll(now)
        key = f"{exchange}:{symbol}" if isinstance(exchange, Exchange) else _key(exchange, symbol)
        self._prices[key] = price
        holders = self._holders.get(key)
        if not holders:
            return []
        if not self.loss_checks:
            for book in list(holders.values()):
                book.account.reprice(book, price)
            return []
        breaches: list[Breach] = []
        users: dict[str, UserBook] = {}
        for book in list(holders.values()):
            account = book.account
            account.reprice(book, price)
            if account.separate_limits:
                self._check_account_loss(account, now, breaches)
            users[account.user.user_id] = account.user
        for user in users.values():
            self._check_user_loss(user, now, breaches)
        return breaches

    # -- loss limits ---------------------------------------------------------------------

    def _evaluate(self, account: AccountBook, now: datetime) -> list[Breach]:
        if not self.loss_checks:
            return []
        breaches: list[Breach] = []
        if account.separate_limits:
            self._check_account_loss(account, now, breaches)
        self._check_user_loss(account.user, now, breaches)
        return breaches

    def _check_account_loss(self, account: AccountBook, now: datetime, out: list[Breach]) -> None:
        limits = account.limits
        if limits.daily_loss_limit is None and limits.weekly_loss_limit is None:
            return
        scope = Scope.for_account(account.config_id)
        for rule, limit, pnl in (
            ("daily_loss_limit", limits.daily_loss_limit, account.day_pnl),
            ("weekly_loss_limit", limits.weekly_loss_limit, account.week_pnl),
        ):
            if limit is not None and -pnl > limit:
                breach = self._breach(
                    scope, account, rule, limit, -pnl, limits, now, account.user.user_id
                )
                if breach is not None:
                    out.append(breach)

    def _check_user_loss(self, user: UserBook, now: datetime, out: list[Breach]) -> None:
        limits = user.limits
        if limits.daily_loss_limit is None and limits.weekly_loss_limit is None:
            return
        scope = Scope.for_user(user.user_id)
        if limits.daily_loss_limit is not None:
            loss = -user.day_pnl
            if loss > limits.daily_loss_limit:
                breach = self._breach(
                    scope,
                    user,
                    "daily_loss_limit",
                    limits.daily_loss_limit,
                    loss,
                    limits,
                    now,
                    user.user_id,
                )
                if breach is not None:
                    out.append(breach)
        if limits.weekly_loss_limit is not None:
            loss = -user.week_pnl
            if loss > limits.weekly_loss_limit:
                breach = self._breach(
                    scope,
                    user,
                    "weekly_loss_limit",
                    limits.weekly_loss_limit,
                    loss,
                    limits,
                    now,
                    user.user_id,
                )
                if breach is not None:
                    out.append(breach)

    def _breach(
        self,
        scope: Scope,
        book: AccountBook | UserBook,
        rule: str,
        limit: Decimal,
        loss: Decimal,
        limits: RiskLimits,
        now: datetime,
        user_id: str,
    ) -> Breach | None:
        target = limits.on_loss_breach
        if book.state.strictness >= target.strictness:
            return None  # already there (or stricter): report a breach once
        label = "daily" if rule == "daily_loss_limit" else "weekly"
        reason = f"{label} loss {loss} exceeded the limit {limit}"
        self.set_state(scope, target, reason, now=now)
        return Breach(
            scope=scope,
            rule=rule,
            limit=limit,
            value=loss,
            new_state=target,
            square_off=limits.square_off_on_breach,
            user_id=user_id,
            config_id=scope.id if scope.kind == "account" else None,
            at=now,
            message=f"{scope}: {reason}; now {target.value}",
        )

    # -- trading states ------------------------------------------------------------------

    def state(self, scope: Scope | str) -> ScopeState:
        """The state set on exactly this scope (ACTIVE if never set)."""
        return self._states.get(str(Scope.parse(scope)), ScopeState(TradingState.ACTIVE))

    def effective_state(self, user_id: str, config_id: str) -> tuple[TradingState, Scope]:
        """The strictest of the global, user and account states, and where it is set."""
        best, where = self.state(GLOBAL).state, GLOBAL
        for scope in (Scope.for_user(user_id), Scope.for_account(config_id)):
            state = self.state(scope).state
            if state.strictness > best.strictness:
                best, where = state, scope
        return best, where

    def set_state(
        self,
        scope: Scope | str,
        state: TradingState | str,
        reason: str = "",
        *,
        now: datetime | None = None,
    ) -> None:
        target = Scope.parse(scope)
        new = TradingState(state)
        self._states[str(target)] = ScopeState(new, reason, now)
        if target.kind == "global":
            self._global_state, self._global_reason = new, reason
        elif target.kind == "user":
            user = self._users.get(cast(str, target.id))
            if user is not None:
                user.state, user.reason = new, reason
        else:
            account = self._accounts.get(cast(str, target.id))
            if account is not None:
                account.state, account.reason = new, reason

    # -- time ----------------------------------------------------------------------------

    def _roll(self, now: datetime) -> None:
        """Start a new IST day (and week on Mondays): P&L bases move to the current
        market value; the memory of finished orders is dropped."""
        today = now.astimezone(IST).date()
        week_start = today - timedelta(days=today.weekday())
        if self._today is not None and today > self._today:
            new_week = self._week_start is None or week_start > self._week_start
            for account in self._accounts.values():
                account.roll_day()
                if new_week:
                    account.roll_week()
            self._finished.clear()
        if self._today is None or today > self._today:
            self._today = today
            self._week_start = week_start
        self._next_roll = datetime.combine(
            self._today + timedelta(days=1), time(0), IST
        ).timestamp()

    # -- inspection ----------------------------------------------------------------------

    def open_order(self, order_id: str) -> OpenOrder | None:
        return self._orders.get(order_id)

    def user_ids(self) -> list[str]:
        return list(self._users)

    def account_ids(self, user_id: str) -> list[str]:
        user = self._users.get(user_id)
        return list(user.accounts) if user is not None else []

    def open_order_ids(self, config_id: str | None = None) -> list[str]:
        return [
            order_id
            for order_id, entry in self._orders.items()
            if config_id is None or entry.config_id == config_id
        ]

    def usage(self, user_id: str, config_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Every limit with its current value, for the account and for the user, plus
        the per-instrument book and funds. Values are Decimal / int (JSON at the edge)."""
        account = self._account(user_id, config_id)
        user = account.user
        stamp = _aware(now or datetime.now(UTC)).timestamp()
        state, where = self.effective_state(user_id, config_id)

        def rate(window: Iterable[float]) -> int:
            return sum(1 for s in window if stamp - 1.0 < s <= stamp)

        def aggregates(
            limits: RiskLimits,
            open_orders: int,
            positions: int,
            gross: Decimal,
            symbols: dict[str, Decimal],
            day: Decimal,
            week: Decimal,
            orders_last_second: int,
        ) -> dict[str, dict[str, object]]:
            worst = max(symbols.items(), key=lambda item: item[1], default=(None, ZERO))
            return {
                "max_open_orders": {"limit": limits.max_open_orders, "value": open_orders},
                "max_open_positions": {"limit": limits.max_open_positions, "value": positions},
                "max_symbol_exposure": {
                    "limit": limits.max_symbol_exposure,
                    "value": worst[1],
                    "symbol": worst[0],
                },
                "max_gross_exposure": {"limit": limits.max_gross_exposure, "value": gross},
                "daily_loss_limit": {"limit": limits.daily_loss_limit, "value": -day},
                "weekly_loss_limit": {"limit": limits.weekly_loss_limit, "value": -week},
                "order_rate_per_second": {
                    "limit": limits.order_rate_per_second,
                    "value": orders_last_second,
                },
            }

        account_symbols = {key: book.exposure for key, book in account.symbols.items()}
        user_symbols: dict[str, Decimal] = {}
        for each in user.accounts.values():
            for key, book in each.symbols.items():
                user_symbols[key] = user_symbols.get(key, ZERO) + book.exposure
        limits = account.limits
        free = (
            None
            if account.available_funds is None
            else account.available_funds - account.reserved_funds
        )
        return {
            "user_id": user_id,
            "config_id": config_id,
            "state": {
                "effective": state.value,
                "scope": str(where),
                "reason": self.state(where).reason,
                "global": self.state(GLOBAL).state.value,
                "user": self.state(Scope.for_user(user_id)).state.value,
                "account": self.state(Scope.for_account(config_id)).state.value,
            },
            "per_order": {
                "max_order_value": limits.max_order_value,
                "max_order_quantity": limits.max_order_quantity,
                "price_band_pct": limits.price_band_pct,
                "duplicate_window_seconds": limits.duplicate_window_seconds,
            },
            "account": aggregates(
                limits,
                account.open_orders,
                account.active_symbols,
                account.gross,
                account_symbols,
                account.day_pnl,
                account.week_pnl,
                rate(account.rate),
            ),
            "user": aggregates(
                user.limits,
                user.open_orders,
                user.active_symbols,
                user.gross,
                user_symbols,
                user.day_pnl,
                user.week_pnl,
                rate(user.rate),
            ),
            "funds": {
                "available": account.available_funds,
                "reserved": account.reserved_funds,
                "free": free,
            },
            "symbols": {
                key: {
                    "quantity": book.quantity,
                    "average_price": book.average_price,
                    "last_price": self._prices.get(key),
                    "market_value": book.market_value,
                    "exposure": book.exposure,
                    "open_orders": book.open_orders,
                    "open_buy_quantity": book.buy_quantity,
                    "open_sell_quantity": book.sell_quantity,
                    "reserved_buy": book.buy_notional,
                    "reserved_sell": book.sell_notional,
                }
                for key, book in sorted(account.symbols.items())
            },
            "pnl": {"day": account.day_pnl, "week": account.week_pnl},
        }


def _rejection(violation: Violation, order_id: str) -> RiskRejected:
    details: dict[str, object] = {
        "rule": violation.rule,
        "limit": violation.limit,
        "value": violation.value,
        "order_id": order_id,
    }
    if violation.scope is not None:
        details["scope"] = violation.scope
    if violation.code is ErrorCode.INSUFFICIENT_FUNDS:
        return InsufficientFunds(violation.message, None, **details)
    return RiskRejected(violation.message, violation.code, **details)
