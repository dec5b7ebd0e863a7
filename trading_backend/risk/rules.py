"""Pre-trade rules: each a small object with a ``name`` and ``check(ctx) -> Violation | None``.

The engine builds one ``CheckContext`` per order (the order, its instrument, the books it
touches, the limits that apply) and runs ``DEFAULT_RULES`` in order; the first violation
rejects the order. Rules only read: the engine reserves after every rule has passed. Cheap
structural rules come first, then state, prices, per-order limits, and the rules that
look at the books.

Aggregate limits are checked per user (sums over the user's broker accounts) with the
user's limits, and also per account when the account has limits of its own (tighter than
the user's; otherwise the user check implies the account one).

Also here: the trading calendar (sessions and exchange holidays) used by
``session_open``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Protocol

from trading_backend.domain import (
    BrokerOrder,
    ErrorCode,
    Exchange,
    Instrument,
    OrderType,
)
from trading_backend.domain.calendar import IST
from trading_backend.risk.book import AccountBook, SymbolBook, UserBook, prune_window
from trading_backend.risk.limits import RiskLimits, TradingState

HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Violation:
    """Why an order was refused: the rule, the limit it hit and the order's value."""

    rule: str
    limit: object
    value: object
    message: str
    code: ErrorCode = ErrorCode.RISK_REJECTED
    scope: str | None = None  # "account" or "user" for aggregate limits


# -- trading calendar ------------------------------------------------------------------

# Regular sessions, local IST times, weekdays only. None: always open (crypto).
SESSIONS: dict[Exchange, tuple[time, time] | None] = {
    Exchange.NSE: (time(9, 15), time(15, 30)),
    Exchange.BSE: (time(9, 15), time(15, 30)),
    Exchange.NFO: (time(9, 15), time(15, 30)),
    Exchange.BFO: (time(9, 15), time(15, 30)),
    Exchange.CDS: (time(9, 0), time(17, 0)),
    Exchange.MCX: (time(9, 0), time(23, 30)),
    Exchange.NCDEX: (time(9, 0), time(17, 0)),  # agricultural contracts
    Exchange.CRYPTO: None,
}

# NSE trading holidays 2026 (equity, equity derivatives and currency derivatives), from
# NSE's annual holiday circular of December 2025 plus 15 January, added by NSE's circular
# of 12 January 2026 (Maharashtra municipal corporation elections). BSE observes the same
# days. DATA TO UPDATE YEARLY: add the next year's list when the exchanges publish it
# (usually in December), and any day declared later.
NSE_HOLIDAYS_2026: frozenset[date] = frozenset(
    {
        date(2026, 1, 15),  # Municipal Corporation elections in Maharashtra
        date(2026, 1, 26),  # Republic Day
        date(2026, 3, 3),  # Holi
        date(2026, 3, 26),  # Shri Ram Navami
        date(2026, 3, 31),  # Shri Mahavir Jayanti
        date(2026, 4, 3),  # Good Friday
        date(2026, 4, 14),  # Dr. Baba Saheb Ambedkar Jayanti
        date(2026, 5, 1),  # Maharashtra Day
        date(2026, 5, 28),  # Bakri Id
        date(2026, 6, 26),  # Muharram
        date(2026, 9, 14),  # Ganesh Chaturthi
        date(2026, 10, 2),  # Mahatma Gandhi Jayanti
        date(2026, 10, 20),  # Dussehra
        date(2026, 11, 10),  # Diwali Balipratipada
        date(2026, 11, 24),  # Prakash Gurpurb Sri Guru Nanak Dev
        date(2026, 12, 25),  # Christmas
    }
)

# Exchange -> closed days. MCX is not listed: on most equity holidays it closes only its
# morning session (the evening session from 17:00 trades), which this table cannot say;
# give the calendar ``special_sessions`` for that if needed.
HOLIDAYS: dict[Exchange, frozenset[date]] = {
    Exchange.NSE: NSE_HOLIDAYS_2026,
    Exchange.NFO: NSE_HOLIDAYS_2026,
    Exchange.CDS: NSE_HOLIDAYS_2026,
    Exchange.BSE: NSE_HOLIDAYS_2026,
    Exchange.BFO: NSE_HOLIDAYS_2026,
}

_NEVER = float("inf")


class TradingCalendar:
    """When each exchange accepts orders: ``sessions`` (local IST times on weekdays),
    minus ``holidays``, with ``special_sessions`` overriding a given day (a Saturday
    budget session, Muhurat trading, an evening-only MCX day; None closes the day).

    ``is_open`` is O(1) for repeated calls: it caches the window (open or closed) that
    contains the last time asked about, per exchange."""

    def __init__(
        self,
        sessions: Mapping[Exchange, tuple[time, time] | None] = SESSIONS,
        holidays: Mapping[Exchange, frozenset[date]] = HOLIDAYS,
        special_sessions: Mapping[Exchange, Mapping[date, tuple[time, time] | None]] | None = None,
    ) -> None:
        self.sessions = dict(sessions)
        self.holidays = {exchange: frozenset(days) for exchange, days in holidays.items()}
        self.special_sessions = {
            exchange: dict(days) for exchange, days in (special_sessions or {}).items()
        }
        self._cache: dict[Exchange, tuple[float, float, bool]] = {}

    @classmethod
    def always_open(cls) -> TradingCalendar:
        """Every exchange open around the clock (tests, simulations)."""
        return cls(sessions={exchange: None for exchange in Exchange}, holidays={})

    def hours(self, exchange: Exchange, day: date) -> tuple[time, time] | None:
        """The session hours of ``exchange`` on local date ``day`` (None: closed)."""
        special = self.special_sessions.get(exchange)
        if special is not None and day in special:
            return special[day]
        hours = self.sessions.get(exchange)
        if hours is None:
            return (time(0), time(0)) if exchange in self.sessions else None
        if day.weekday() >= 5 or day in self.holidays.get(exchange, ()):
            return None
        return hours

    def is_trading_day(self, exchange: Exchange, day: date) -> bool:
        return self.hours(exchange, day) is not None

    def is_open(self, exchange: Exchange, now: datetime, stamp: float | None = None) -> bool:
        if stamp is None:
            stamp = now.timestamp()
        cached = self._cache.get(exchange)
        if cached is not None and cached[0] <= stamp < cached[1]:
            return cached[2]
        window = self._window(exchange, now)
        self._cache[exchange] = window
        return window[2]

    def _window(self, exchange: Exchange, now: datetime) -> tuple[float, float, bool]:
        if exchange in self.sessions and self.sessions[exchange] is None:
            special = self.special_sessions.get(exchange)
            if not special:
                return (-_NEVER, _NEVER, True)
        local = now.astimezone(IST)
        day = local.date()
        start = datetime.combine(day, time(0), IST)
        end = start + timedelta(days=1)
        hours = self.hours(exchange, day)
        if hours is None:
            return (start.timestamp(), end.timestamp(), False)
        opens = datetime.combine(day, hours[0], IST)
        closes = datetime.combine(day, hours[1], IST) if hours[1] != time(0) else end
        if local < opens:
            return (start.timestamp(), opens.timestamp(), False)
        if local < closes:
            return (opens.timestamp(), closes.timestamp(), True)
        return (closes.timestamp(), end.timestamp(), False)

    def describe(self, exchange: Exchange) -> str:
        hours = self.sessions.get(exchange)
        if hours is None:
            return "always open" if exchange in self.sessions else "no session"
        return f"{hours[0]:%H:%M}-{hours[1]:%H:%M} IST on trading days"


# -- the context a rule sees -------------------------------------------------------------


@dataclass(slots=True, eq=False)
class InstrumentInfo:
    """An instrument with what the rules need precomputed."""

    instrument: Instrument
    key: str
    lot_size: int
    tick_size: Decimal
    freeze_quantity: int | None
    tradable: bool
    expiry: date | None


class CheckContext:
    """Everything the rules read for one order. Built by the engine; rules never write to
    the books. ``order_value`` is quantity x the order's price (else its trigger price,
    else the last price); ``notional`` is quantity x ``ref_price``, the price the order
    reserves at: the larger of its own price and the last price (a marketable order
    fills around the last price, where positions are valued)."""

    __slots__ = (
        "account",
        "calendar",
        "config_id",
        "info",
        "intentional",
        "key",
        "last_price",
        "limits",
        "margin_ratio",
        "notional",
        "now",
        "order",
        "order_id",
        "order_type",
        "order_value",
        "price",
        "quantity",
        "reducing",
        "ref_price",
        "separate_limits",
        "sign",
        "square_off",
        "stamp",
        "state",
        "state_reason",
        "state_scope",
        "symbol",
        "today",
        "trigger",
        "user",
        "user_id",
        "user_limits",
    )

    user_id: str
    config_id: str
    order_id: str
    order: BrokerOrder
    key: str
    info: InstrumentInfo | None
    sign: int
    quantity: int
    order_type: OrderType
    price: Decimal | None
    trigger: Decimal | None
    now: datetime
    stamp: float
    today: date
    intentional: bool
    square_off: bool
    limits: RiskLimits
    user_limits: RiskLimits
    separate_limits: bool
    account: AccountBook
    user: UserBook
    symbol: SymbolBook | None
    last_price: Decimal | None
    ref_price: Decimal | None
    notional: Decimal | None
    order_value: Decimal | None
    reducing: bool
    state: TradingState
    state_scope: str
    state_reason: str
    calendar: TradingCalendar
    margin_ratio: Decimal

    def projected_symbol_exposure(self) -> tuple[Decimal, Decimal]:
        """(exposure of this instrument in this account now, and with the order)."""
        notional = self.notional or Decimal(0)
        book = self.symbol
        if book is None:
            return Decimal(0), notional
        if self.sign > 0:
            after = book.worst_case(book.buy_notional + notional, book.sell_notional)
        else:
            after = book.worst_case(book.buy_notional, book.sell_notional + notional)
        return book.exposure, after

    @property
    def required_funds(self) -> Decimal:
        if self.reducing or self.notional is None:
            return Decimal(0)
        return self.notional * self.margin_ratio


class Rule(Protocol):
    name: str

    def check(self, ctx: CheckContext) -> Violation | None: ...


# -- the rules ---------------------------------------------------------------------------


class InstrumentExistsAndTradable:
    """The instrument is known, tradable (an index is not) and not past its expiry."""

    name = "instrument_exists_and_tradable"

    def check(self, ctx: CheckContext) -> Violation | None:
        info = ctx.info
        if info is None:
            return Violation(
                self.name,
                "a known instrument",
                ctx.key,
                f"unknown instrument {ctx.key}",
                code=ErrorCode.INSTRUMENT_NOT_FOUND,
            )
        if not info.tradable:
            kind = info.instrument.instrument_type.value
            return Violation(
                self.name,
                "a tradable instrument",
                kind,
                f"{ctx.key} is an {kind} and cannot be traded",
            )
        if info.expiry is not None and info.expiry < ctx.today:
            return Violation(
                self.name,
                f"expiry on or after {ctx.today.isoformat()}",
                info.expiry.isoformat(),
                f"{ctx.key} expired on {info.expiry.isoformat()}",
            )
        return None


class SessionOpen:
    """The instrument's exchange is in session (weekday hours, not a holiday)."""

    name = "session_open"

    def check(self, ctx: CheckContext) -> Violation | None:
        info = ctx.info
        if info is None:
            return None
        exchange = info.instrument.exchange
        if ctx.calendar.is_open(exchange, ctx.now, ctx.stamp):
            return None
        hours = ctx.calendar.describe(exchange)
        local = ctx.now.astimezone(IST)
        return Violation(
            self.name,
            hours,
            local.isoformat(timespec="seconds"),
            f"{exchange.value} is closed at {local:%Y-%m-%d %H:%M} IST ({hours})",
        )


class LotSizeMultiple:
    name = "lot_size_multiple"

    def check(self, ctx: CheckContext) -> Violation | None:
        info = ctx.info
        if info is None or info.lot_size <= 1 or ctx.quantity % info.lot_size == 0:
            return None
        return Violation(
            self.name,
            info.lot_size,
            ctx.quantity,
            f"quantity {ctx.quantity} is not a multiple of the lot size {info.lot_size}"
            f" of {ctx.key}",
        )


class TickSize:
    """The price and the trigger price are multiples of the instrument's tick."""

    name = "tick_size"

    def check(self, ctx: CheckContext) -> Violation | None:
        info = ctx.info
        if info is None or info.tick_size <= 0:
            return None
        tick = info.tick_size
        for label, value in (("price", ctx.price), ("trigger_price", ctx.trigger)):
            if value is not None and value % tick != 0:
                return Violation(
                    self.name,
                    tick,
                    value,
                    f"{label} {value} is not a multiple of the tick size {tick} of {ctx.key}",
                )
        return None


class FreezeQuantity:
    name = "freeze_quantity"

    def check(self, ctx: CheckContext) -> Violation | None:
        info = ctx.info
        if info is None or info.freeze_quantity is None:
            return None
        if ctx.quantity <= info.freeze_quantity:
            return None
        return Violation(
            self.name,
            info.freeze_quantity,
            ctx.quantity,
            f"quantity {ctx.quantity} exceeds the exchange freeze quantity"
            f" {info.freeze_quantity} of {ctx.key}: split the order",
        )


class MaxOrderQuantity:
    name = "max_order_quantity"

    def check(self, ctx: CheckContext) -> Violation | None:
        limit = ctx.limits.max_order_quantity
        if limit is None or ctx.quantity <= limit:
            return None
        return Violation(
            self.name,
            limit,
            ctx.quantity,
            f"quantity {ctx.quantity} exceeds the maximum order quantity {limit}",
        )


class TradingStateRule:
    """ACTIVE accepts all; REDUCING only orders that reduce a position without flipping
    it; HALTED none. A square-off order must reduce and passes every state."""

    name = "trading_state"

    def check(self, ctx: CheckContext) -> Violation | None:
        if ctx.square_off:
            if ctx.reducing:
                return None
            return Violation(
                self.name,
                "reduce only",
                "opens or flips a position",
                f"a square-off order must reduce the position in {ctx.key} without flipping it",
                scope="order",
            )
        state = ctx.state
        if state is TradingState.ACTIVE:
            return None
        if state is TradingState.REDUCING and ctx.reducing:
            return None
        reason = f" ({ctx.state_reason})" if ctx.state_reason else ""
        if state is TradingState.HALTED:
            message = f"trading is halted for {ctx.state_scope}{reason}"
        else:
            message = (
                f"{ctx.state_scope} is reduce-only{reason}: the order would open or"
                f" increase a position in {ctx.key}, or flip it"
            )
        return Violation(self.name, state.value, "opens risk", message, scope=ctx.state_scope)


class LastPrice:
    """An order without a price of its own (MARKET) needs a last price to be valued."""

    name = "last_price"

    def check(self, ctx: CheckContext) -> Violation | None:
        if ctx.ref_price is not None:
            return None
        return Violation(
            self.name,
            "a last price",
            None,
            f"no last price for {ctx.key}: a {ctx.order_type.value} order cannot be valued",
        )


class PriceBand:
    """A LIMIT or SL order's price within +-``price_band_pct`` of the last price."""

    name = "price_band"

    def check(self, ctx: CheckContext) -> Violation | None:
        band = ctx.limits.price_band_pct
        price = ctx.price
        if band is None or price is None:
            return None
        last = ctx.last_price
        if last is None:
            return Violation(
                self.name,
                band,
                None,
                f"no last price for {ctx.key} to check the ±{band}% price band against",
            )
        deviation = price - last
        if deviation < 0:
            deviation = -deviation
        if deviation * HUNDRED <= band * last:
            return None
        pct = (deviation * HUNDRED / last).quantize(Decimal("0.01"))
        return Violation(
            self.name,
            band,
            pct,
            f"price {price} is {pct}% from the last price {last} of {ctx.key};"
            f" the band is ±{band}%",
        )


class MaxOrderValue:
    name = "max_order_value"

    def check(self, ctx: CheckContext) -> Violation | None:
        limit = ctx.limits.max_order_value
        value = ctx.order_value
        if limit is None or value is None or value <= limit:
            return None
        return Violation(
            self.name,
            limit,
            value,
            f"order value {value} exceeds the maximum order value {limit}",
        )


class Duplicate:
    """The same user, instrument, side, quantity and price within the window is refused
    unless the order says ``intentional``."""

    name = "duplicate"

    def check(self, ctx: CheckContext) -> Violation | None:
        window = ctx.limits.duplicate_window_seconds
        if window is None or ctx.intentional:
            return None
        seen = ctx.user.duplicates.get((ctx.key, ctx.sign, ctx.quantity, ctx.price))
        if seen is None:
            return None
        elapsed = ctx.stamp - seen[0]
        if elapsed >= window:
            return None
        return Violation(
            self.name,
            window,
            round(elapsed, 3),
            f"the same order ({ctx.order.side} {ctx.quantity} {ctx.key}"
            f" @ {ctx.price or 'MARKET'}) was placed {elapsed:.3f}s ago (order {seen[1]});"
            " repeat it with intentional=true if meant",
        )


class OrderRate:
    """At most ``order_rate_per_second`` orders in any sliding second, per user and per
    broker account."""

    name = "order_rate"

    def check(self, ctx: CheckContext) -> Violation | None:
        if ctx.separate_limits:
            limit = ctx.limits.order_rate_per_second
            if limit is not None:
                count = prune_window(ctx.account.rate, ctx.stamp)
                if count >= limit:
                    return self._violation(limit, count, "account")
        limit = ctx.user_limits.order_rate_per_second
        if limit is not None:
            count = prune_window(ctx.user.rate, ctx.stamp)
            if count >= limit:
                return self._violation(limit, count, "user")
        return None

    def _violation(self, limit: int, count: int, scope: str) -> Violation:
        return Violation(
            self.name,
            limit,
            count + 1,
            f"more than {limit} orders in one second for this {scope}",
            scope=scope,
        )


class MaxOpenOrders:
    name = "max_open_orders"

    def check(self, ctx: CheckContext) -> Violation | None:
        if ctx.separate_limits:
            limit = ctx.limits.max_open_orders
            if limit is not None and ctx.account.open_orders + 1 > limit:
                return self._violation(limit, ctx.account.open_orders + 1, "account")
        limit = ctx.user_limits.max_open_orders
        if limit is not None:
            count = ctx.user.open_orders + 1
            if count > limit:
                return self._violation(limit, count, "user")
        return None

    def _violation(self, limit: int, count: int, scope: str) -> Violation:
        return Violation(
            self.name,
            limit,
            count,
            f"{count} open orders would exceed the {scope}'s maximum of {limit}",
            scope=scope,
        )


class MaxOpenPositions:
    """Counts instruments with a position or a working order; only an order in a new
    instrument (for this account) can break it."""

    name = "max_open_positions"

    def check(self, ctx: CheckContext) -> Violation | None:
        book = ctx.symbol
        if book is not None and book.active:
            return None
        if ctx.separate_limits:
            limit = ctx.limits.max_open_positions
            if limit is not None and ctx.account.active_symbols + 1 > limit:
                return self._violation(limit, ctx.account.active_symbols + 1, "account")
        limit = ctx.user_limits.max_open_positions
        if limit is not None:
            count = ctx.user.active_symbols + 1
            if count > limit:
                return self._violation(limit, count, "user")
        return None

    def _violation(self, limit: int, count: int, scope: str) -> Violation:
        return Violation(
            self.name,
            limit,
            count,
            f"a new position would make {count}, above the {scope}'s maximum of {limit}"
            " open positions",
            scope=scope,
        )


class SymbolExposure:
    """Worst-case exposure in the instrument (position at the last price plus working
    orders, one side filling) after the order. An order that does not raise the exposure
    (one that reduces the position) is always allowed."""

    name = "symbol_exposure"

    def check(self, ctx: CheckContext) -> Violation | None:
        before, after = ctx.projected_symbol_exposure()
        if after <= before:
            return None
        if ctx.separate_limits:
            limit = ctx.limits.max_symbol_exposure
            if limit is not None and after > limit:
                return self._violation(ctx, limit, after, "account")
        limit = ctx.user_limits.max_symbol_exposure
        if limit is not None:
            if not ctx.separate_limits and len(ctx.user.accounts) == 1:
                total = after
            else:
                total = ctx.user.symbol_exposure(ctx.key) + after - before
            if total > limit:
                return self._violation(ctx, limit, total, "user")
        return None

    def _violation(
        self, ctx: CheckContext, limit: Decimal, value: Decimal, scope: str
    ) -> Violation:
        return Violation(
            self.name,
            limit,
            value,
            f"exposure in {ctx.key} would be {value}, above the {scope}'s maximum of {limit}",
            scope=scope,
        )


class GrossExposure:
    name = "gross_exposure"

    def check(self, ctx: CheckContext) -> Violation | None:
        before, after = ctx.projected_symbol_exposure()
        delta = after - before
        if delta <= 0:
            return None
        if ctx.separate_limits:
            limit = ctx.limits.max_gross_exposure
            if limit is not None and ctx.account.gross + delta > limit:
                return self._violation(limit, ctx.account.gross + delta, "account")
        limit = ctx.user_limits.max_gross_exposure
        if limit is not None:
            total = ctx.user.gross + delta
            if total > limit:
                return self._violation(limit, total, "user")
        return None

    def _violation(self, limit: Decimal, value: Decimal, scope: str) -> Violation:
        return Violation(
            self.name,
            limit,
            value,
            f"gross exposure would be {value}, above the {scope}'s maximum of {limit}",
            scope=scope,
        )


class Funds:
    """The order's margin against the account's free funds (available as fed, minus what
    working orders reserve). Margin: the full value for DELIVERY and CARRYFORWARD, a
    fraction (default 20%) for INTRADAY and MARGIN; derivatives follow the same simple
    rule for now. Orders that reduce a position need none. Not checked until the
    account's funds are fed (``RiskEngine.set_funds``). Code INSUFFICIENT_FUNDS."""

    name = "funds"

    def check(self, ctx: CheckContext) -> Violation | None:
        available = ctx.account.available_funds
        if available is None:
            return None
        required = ctx.required_funds
        if not required:
            return None
        free = available - ctx.account.reserved_funds
        if required <= free:
            return None
        return Violation(
            self.name,
            free,
            required,
            f"the order needs {required} of margin; {free} is free in this account",
            code=ErrorCode.INSUFFICIENT_FUNDS,
            scope="account",
        )


DEFAULT_RULES: tuple[Rule, ...] = (
    InstrumentExistsAndTradable(),
    LotSizeMultiple(),
    TickSize(),
    FreezeQuantity(),
    MaxOrderQuantity(),
    SessionOpen(),
    TradingStateRule(),
    LastPrice(),
    PriceBand(),
    Funds(),  # before the limits: "not enough money" is the more useful answer
    MaxOrderValue(),
    Duplicate(),
    OrderRate(),
    MaxOpenOrders(),
    MaxOpenPositions(),
    SymbolExposure(),
    GrossExposure(),
)

__all__ = [
    "DEFAULT_RULES",
    "HOLIDAYS",
    "NSE_HOLIDAYS_2026",
    "SESSIONS",
    "CheckContext",
    "Duplicate",
    "FreezeQuantity",
    "Funds",
    "GrossExposure",
    "InstrumentExistsAndTradable",
    "InstrumentInfo",
    "LastPrice",
    "LotSizeMultiple",
    "MaxOpenOrders",
    "MaxOpenPositions",
    "MaxOrderQuantity",
    "MaxOrderValue",
    "OrderRate",
    "PriceBand",
    "Rule",
    "SessionOpen",
    "SymbolExposure",
    "TickSize",
    "TradingCalendar",
    "TradingStateRule",
    "Violation",
]
