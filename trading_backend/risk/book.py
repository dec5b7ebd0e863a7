"""The risk engine's books: working orders, positions, reservations, P&L, rate windows.

Pure data with the arithmetic that keeps its aggregates exact (Decimal); the engine
decides when to call what. Nothing here checks a limit.

Per broker account (``AccountBook``) and per instrument (``SymbolBook``):

* the net position (signed quantity, average cost) valued at ``mark`` (the last price,
  or the fill price until a price arrives): ``market_value = quantity * mark``;
* working orders reserved at a price: ``buy_notional`` / ``sell_notional`` are the sums of
  remaining quantity x reservation price per side, with the quantities beside them;
* the instrument's **exposure**, the worst case if every working order on one side fills:
  ``max(|market_value + buy_notional|, |market_value - sell_notional|)``. An order that
  reduces the position lowers the second term, so it never raises exposure unless it
  would flip the position beyond its size.

The account sums exposures (``gross``), counts working orders and *active* instruments
(a position or a working order; what ``max_open_positions`` counts), reserves funds, and
keeps P&L by cash flow: ``day P&L = cash_day + market_value - base_day - charges_day``,
where ``cash_day`` is sells minus buys filled today and ``base_day`` the market value at
the start of the day (the same for the week). A user's figures are the sums over the
user's accounts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from trading_backend.domain.money import ZERO
from trading_backend.risk.limits import RiskLimits, TradingState

DuplicateKey = tuple[str, int, int, Decimal | None]  # instrument key, side sign, qty, price


@dataclass(slots=True, eq=False)
class OpenOrder:
    """A working order's reservation. ``remaining`` units are reserved at ``price``."""

    order_id: str
    user_id: str
    config_id: str
    key: str  # instrument key, "NSE:TCS"
    sign: int  # +1 buy, -1 sell
    remaining: int
    price: Decimal  # reservation price per unit
    own_price: Decimal | None  # the order's price (else trigger price) it was reserved for
    margin_ratio: Decimal  # funds reserved per unit of notional (0 for reducing orders)
    filled: int = 0  # cumulative filled quantity seen (fills are applied as deltas)
    filled_value: Decimal = ZERO  # cumulative filled value seen (quantity x average price)
    charges: Decimal = ZERO  # cumulative charges seen
    rate_stamp: float | None = None  # its slot in the rate windows (undone by release)
    duplicate_key: DuplicateKey | None = None

    @property
    def notional(self) -> Decimal:
        return self.price * self.remaining

    @property
    def reserved_funds(self) -> Decimal:
        return self.price * self.remaining * self.margin_ratio


@dataclass(slots=True, eq=False)
class SymbolBook:
    account: AccountBook
    key: str
    quantity: int = 0  # net, signed
    average_price: Decimal = ZERO
    mark: Decimal = ZERO  # price the position is valued at
    buy_quantity: int = 0  # remaining quantity of working buy orders
    sell_quantity: int = 0
    buy_notional: Decimal = ZERO
    sell_notional: Decimal = ZERO
    open_orders: int = 0
    exposure: Decimal = ZERO

    @property
    def active(self) -> bool:
        return self.quantity != 0 or self.open_orders > 0

    @property
    def market_value(self) -> Decimal:
        return self.quantity * self.mark

    def worst_case(self, buy_notional: Decimal, sell_notional: Decimal) -> Decimal:
        value = self.quantity * self.mark
        long_case = value + buy_notional
        short_case = value - sell_notional
        if long_case < 0:
            long_case = -long_case
        if short_case < 0:
            short_case = -short_case
        return long_case if long_case >= short_case else short_case

    def reduces(self, sign: int, quantity: int) -> bool:
        """Whether an order of ``sign``/``quantity`` only reduces the position, counting
        the working orders already on that side (so together they cannot flip it)."""
        position = self.quantity
        if position == 0 or (position > 0) == (sign > 0):
            return False
        pending = self.sell_quantity if sign < 0 else self.buy_quantity
        return quantity + pending <= abs(position)


@dataclass(slots=True, eq=False)
class AccountBook:
    """One broker account (a user's broker config)."""

    user: UserBook
    config_id: str
    limits: RiskLimits  # effective: the user's limits tightened by the account's own
    separate_limits: bool = False  # account limits differ from the user's: check both
    override: RiskLimits | None = None
    symbols: dict[str, SymbolBook] = field(default_factory=dict)
    holders: dict[str, dict[str, SymbolBook]] = field(default_factory=dict)  # engine's index
    open_orders: int = 0
    active_symbols: int = 0
    gross: Decimal = ZERO
    market_value: Decimal = ZERO
    reserved_funds: Decimal = ZERO
    available_funds: Decimal | None = None  # None: not fed, funds are not checked
    cash_day: Decimal = ZERO
    cash_week: Decimal = ZERO
    charges_day: Decimal = ZERO
    charges_week: Decimal = ZERO
    base_day: Decimal = ZERO
    base_week: Decimal = ZERO
    rate: deque[float] = field(default_factory=deque)
    state: TradingState = TradingState.ACTIVE
    reason: str = ""

    def symbol(self, key: str) -> SymbolBook:
        book = self.symbols.get(key)
        if book is None:
            book = self.symbols[key] = SymbolBook(self, key)
        return book

    # -- P&L ---------------------------------------------------------------------------

    @property
    def day_pnl(self) -> Decimal:
        return self.cash_day + self.market_value - self.base_day - self.charges_day

    @property
    def week_pnl(self) -> Decimal:
        return self.cash_week + self.market_value - self.base_week - self.charges_week

    def roll_day(self) -> None:
        self.base_day = self.market_value
        self.cash_day = ZERO
        self.charges_day = ZERO

    def roll_week(self) -> None:
        self.base_week = self.market_value
        self.cash_week = ZERO
        self.charges_week = ZERO

    def add_charges(self, amount: Decimal) -> None:
        self.charges_day += amount
        self.charges_week += amount

    # -- keeping aggregates exact ------------------------------------------------------

    def _settle(self, book: SymbolBook, was_active: bool) -> None:
        """Recompute ``book``'s exposure and the account's sums after a change."""
        exposure = book.worst_case(book.buy_notional, book.sell_notional)
        self.gross += exposure - book.exposure
        book.exposure = exposure
        active = book.active
        if active != was_active:
            self.active_symbols += 1 if active else -1
        held = self.holders.get(book.key)
        if book.quantity != 0:
            if held is None:
                held = self.holders[book.key] = {}
            held[self.config_id] = book
        elif held is not None:
            held.pop(self.config_id, None)
            if not held:
                del self.holders[book.key]
        if not active and book.buy_notional == 0 and book.sell_notional == 0:
            del self.symbols[book.key]

    def add_order(self, order: OpenOrder) -> None:
        book = self.symbol(order.key)
        was_active = book.active
        if order.sign > 0:
            book.buy_quantity += order.remaining
            book.buy_notional += order.notional
        else:
            book.sell_quantity += order.remaining
            book.sell_notional += order.notional
        book.open_orders += 1
        self.open_orders += 1
        self.reserved_funds += order.reserved_funds
        self._settle(book, was_active)

    def reduce_order(self, order: OpenOrder, quantity: int, *, close: bool) -> None:
        """Take ``quantity`` units off ``order``'s reservation; ``close`` ends the order
        (its count goes too). The order's ``remaining`` is updated here."""
        book = self.symbol(order.key)
        was_active = book.active
        notional = order.price * quantity
        if order.sign > 0:
            book.buy_quantity -= quantity
            book.buy_notional -= notional
        else:
            book.sell_quantity -= quantity
            book.sell_notional -= notional
        self.reserved_funds -= notional * order.margin_ratio
        order.remaining -= quantity
        if close:
            book.open_orders -= 1
            self.open_orders -= 1
        self._settle(book, was_active)

    def reprice_order(self, order: OpenOrder, price: Decimal, remaining: int) -> None:
        """A modification: the order now reserves ``remaining`` units at ``price``."""
        book = self.symbol(order.key)
        was_active = book.active
        before = order.notional
        funds_before = order.reserved_funds
        order.price = price
        delta_quantity = remaining - order.remaining
        order.remaining = remaining
        delta = order.notional - before
        if order.sign > 0:
            book.buy_quantity += delta_quantity
            book.buy_notional += delta
        else:
            book.sell_quantity += delta_quantity
            book.sell_notional += delta
        self.reserved_funds += order.reserved_funds - funds_before
        self._settle(book, was_active)

    def apply_fill(
        self, key: str, sign: int, quantity: int, price: Decimal, mark: Decimal | None
    ) -> None:
        """A fill of ``quantity`` at ``price`` (its reservation is taken off separately).
        ``mark`` is the instrument's last price, if known, to value the position at."""
        book = self.symbol(key)
        was_active = book.active
        value = price * quantity
        self.cash_day -= sign * value
        self.cash_week -= sign * value
        position = book.quantity
        before_value = position * book.mark
        if position == 0 or (position > 0) == (sign > 0):
            size = abs(position)
            book.average_price = (book.average_price * size + value) / (size + quantity)
        elif quantity > abs(position):
            book.average_price = price  # flipped: the remainder opened at this price
        elif quantity == abs(position):
            book.average_price = ZERO
        book.quantity = position + sign * quantity
        if mark is not None:
            book.mark = mark
        elif position == 0:
            book.mark = price
        self.market_value += book.quantity * book.mark - before_value
        self._settle(book, was_active)

    def set_position(self, key: str, quantity: int, average_price: Decimal, mark: Decimal) -> None:
        """Replace the position (start-up); P&L so far is unchanged (the bases move)."""
        book = self.symbol(key)
        was_active = book.active
        before = book.quantity * book.mark
        book.quantity = quantity
        book.average_price = average_price if quantity else ZERO
        book.mark = mark
        delta = quantity * mark - before
        self.market_value += delta
        self.base_day += delta
        self.base_week += delta
        self._settle(book, was_active)

    def reprice(self, book: SymbolBook, price: Decimal) -> None:
        """A new last price for a held instrument (the hot path of ``on_price``)."""
        quantity = book.quantity
        self.market_value += quantity * (price - book.mark)
        book.mark = price
        exposure = book.worst_case(book.buy_notional, book.sell_notional)
        self.gross += exposure - book.exposure
        book.exposure = exposure


@dataclass(slots=True, eq=False)
class UserBook:
    user_id: str
    limits: RiskLimits
    accounts: dict[str, AccountBook] = field(default_factory=dict)
    rate: deque[float] = field(default_factory=deque)
    duplicates: dict[DuplicateKey, tuple[float, str]] = field(default_factory=dict)
    duplicate_order: deque[tuple[float, DuplicateKey]] = field(default_factory=deque)
    state: TradingState = TradingState.ACTIVE
    reason: str = ""

    # sums over the user's accounts (a user has a handful at most)

    @property
    def open_orders(self) -> int:
        return sum(a.open_orders for a in self.accounts.values())

    @property
    def active_symbols(self) -> int:
        return sum(a.active_symbols for a in self.accounts.values())

    @property
    def gross(self) -> Decimal:
        return sum((a.gross for a in self.accounts.values()), ZERO)

    def symbol_exposure(self, key: str) -> Decimal:
        total = ZERO
        for account in self.accounts.values():
            book = account.symbols.get(key)
            if book is not None:
                total += book.exposure
        return total

    @property
    def day_pnl(self) -> Decimal:
        return sum((a.day_pnl for a in self.accounts.values()), ZERO)

    @property
    def week_pnl(self) -> Decimal:
        return sum((a.week_pnl for a in self.accounts.values()), ZERO)

    # duplicates

    def prune_duplicates(self, now: float, window: float) -> None:
        order = self.duplicate_order
        cutoff = now - window
        while order and order[0][0] <= cutoff:
            stamp, key = order.popleft()
            seen = self.duplicates.get(key)
            if seen is not None and seen[0] == stamp:
                del self.duplicates[key]

    def remember(self, key: DuplicateKey, now: float, order_id: str) -> None:
        self.duplicates[key] = (now, order_id)
        self.duplicate_order.append((now, key))

    def forget(self, key: DuplicateKey, order_id: str) -> None:
        seen = self.duplicates.get(key)
        if seen is not None and seen[1] == order_id:
            del self.duplicates[key]


def prune_window(window: deque[float], now: float) -> int:
    """Drop stamps older than one second; the count left in the sliding second."""
    cutoff = now - 1.0
    while window and window[0] <= cutoff:
        window.popleft()
    return len(window)


@dataclass(frozen=True, slots=True)
class ScopeState:
    state: TradingState
    reason: str = ""
    since: datetime | None = None
