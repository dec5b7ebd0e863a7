"""One paper account at the simulated exchange: its order book, fills, positions and cash.

Why this is separate from ``PaperBroker``: the account is plain synchronous state that
changes only through a few methods (place, modify, cancel, a market tick, expiry), each
returning the ``OrderUpdate``s it caused. The broker wraps it with the asyncio concerns —
locking, persistence, emitting updates — so the accounting can be reasoned about (and
property-tested) without an event loop in the way, and the whole account serialises to
one JSON-friendly dict.

Funds model (margin, not cash settlement — buying does not debit cash):

* cash ledger = initial capital + realised P&L − charges.
* used margin = Σ over open positions |qty| x average price x margin fraction(product)
  + Σ over working orders (the part that would open or increase a position)
  x reference price x margin fraction. The reference price is the limit price (LIMIT,
  SL), else the trigger (SL_M), else the last price (MARKET). Working orders that reduce
  a position block nothing, up to the position's size, taken in order of placement.
* available cash = cash − used margin; buying power = available cash x intraday leverage;
  total balance = cash + unrealised P&L.
* Margin fractions: DELIVERY 1, INTRADAY 1/leverage, MARGIN 0.25, CARRYFORWARD 0.15 (all
  configurable). Derivatives held INTRADAY use the smaller of the INTRADAY and
  CARRYFORWARD fractions; long options always block their full premium.
* An order is rejected with ``InsufficientFunds`` when the margin it newly needs exceeds
  available cash. Risk-reducing orders never need margin. DELIVERY sells beyond the held
  DELIVERY quantity (net of working DELIVERY sells) are rejected: no delivery shorts.

Products: equities and crypto spot take DELIVERY, INTRADAY or MARGIN; derivatives take
INTRADAY or CARRYFORWARD. Stop orders whose trigger is already crossed trigger at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from trading_backend.brokers.base import (
    BrokerError,
    BrokerOrderState,
    BrokerRejected,
    InsufficientFunds,
    OrderUpdate,
)
from trading_backend.brokers.paper.charges import charges_for_fill
from trading_backend.brokers.paper.fill_model import FillRequest
from trading_backend.brokers.paper.market import Quote, SimulatedMarket
from trading_backend.brokers.paper.settings import PaperSettings
from trading_backend.domain import (
    Balance,
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Fill,
    Instrument,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    ProductType,
    Validity,
)
from trading_backend.domain.calendar import last_session_close
from trading_backend.domain.money import ZERO, is_multiple, round_money

__all__ = ["STATE_VERSION", "PaperAccount"]

STATE_VERSION = 1
_AVG_PLACES = Decimal("0.0001")

_EQUITY_PRODUCTS = frozenset({ProductType.DELIVERY, ProductType.INTRADAY, ProductType.MARGIN})
_DERIVATIVE_PRODUCTS = frozenset({ProductType.INTRADAY, ProductType.CARRYFORWARD})

PositionKey = tuple[str, str, str]  # (exchange, symbol, product)


def tidy_price(value: Decimal) -> Decimal:
    """Averages can be non-terminating decimals; report them to four places at most."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        return value.quantize(_AVG_PLACES, ROUND_HALF_UP)
    return value


def _position_key(order: Order | Fill) -> PositionKey:
    return (order.exchange.value, order.symbol, order.product_type.value)


@dataclass(slots=True)
class _Entry:
    """An order in the book plus what matching needs to remember about it."""

    order: Order
    lot_size: int
    tick_size: Decimal
    triggered: bool = False
    last_fill_sequence: int = -1  # one fill per order per market update


class PaperAccount:
    """The book and ledger of one paper account (see the module docstring)."""

    def __init__(
        self,
        config_id: str,
        user_id: str,
        settings: PaperSettings,
        market: SimulatedMarket,
    ) -> None:
        self.config_id = config_id
        self.user_id = user_id
        self.settings = settings
        self.market = market
        self.fill_model = settings.fill_model()
        self.initial_capital = settings.initial_capital
        self.cash = settings.initial_capital
        self.orders: dict[str, _Entry] = {}
        self._working: dict[str, _Entry] = {}  # the working subset, in placement order
        self.fills: list[Fill] = []
        self.charges_detail: dict[str, dict[str, str]] = {}
        self.positions: dict[PositionKey, Position] = {}
        self.order_counter = 0
        self.trade_counter = 0
        # Orders changed since the owner last took them (``take_dirty``): what a save must
        # write, including a stop's silent trigger (every method that changes an order adds it).
        self.dirty: set[str] = set()
        self._by_client_id: dict[str, str] = {}  # client_order_id -> order id

    # -- lookups ---------------------------------------------------------------------------
    def entry(self, broker_order_id: str) -> _Entry:
        entry = self.orders.get(broker_order_id)
        if entry is None:
            raise BrokerRejected(
                f"no paper order {broker_order_id!r}",
                ErrorCode.ORDER_NOT_FOUND,
                broker_order_id=broker_order_id,
            )
        return entry

    def _instrument(self, symbol: str, exchange: Exchange | str) -> Instrument:
        instrument = self.market.get_instrument(symbol, exchange)
        if instrument is None:
            raise BrokerRejected(
                f"unknown instrument {exchange}:{symbol}",
                ErrorCode.INSTRUMENT_NOT_FOUND,
                symbol=symbol,
                exchange=str(exchange),
            )
        return instrument

    def _quote(self, symbol: str, exchange: Exchange | str) -> Quote | None:
        try:
            return self.market.quote(symbol, exchange)
        except KeyError:
            return None

    def _last_price(self, symbol: str, exchange: Exchange, fallback: Decimal) -> Decimal:
        quote = self._quote(symbol, exchange)
        return quote.ltp if quote is not None else fallback

    def working(self) -> list[_Entry]:
        return list(self._working.values())

    def by_client_id(self, client_order_id: str) -> _Entry | None:
        order_id = self._by_client_id.get(client_order_id)
        return self.orders.get(order_id) if order_id is not None else None

    def take_dirty(self) -> set[str]:
        """The ids of orders changed since the last call (and forget them)."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def _track(self, entry: _Entry) -> None:
        """Keep the working index in step with the entry's status."""
        if entry.order.status.is_working:
            self._working[entry.order.order_id] = entry
        else:
            self._working.pop(entry.order.order_id, None)

    # -- margin ----------------------------------------------------------------------------
    def _fraction(
        self, symbol: str, exchange: Exchange, product: ProductType, long: bool
    ) -> Decimal:
        instrument = self.market.get_instrument(symbol, exchange)
        if instrument is not None and instrument.is_option and long:
            return Decimal(1)
        fraction = self.settings.margin_fraction(product)
        if instrument is not None and instrument.is_derivative and product is ProductType.INTRADAY:
            fraction = min(fraction, self.settings.margin_fraction(ProductType.CARRYFORWARD))
        return fraction

    def _reference_price(self, order: Order) -> Decimal:
        if order.price is not None:
            return order.price
        if order.trigger_price is not None:
            return order.trigger_price
        return self._last_price(order.symbol, order.exchange, order.average_price)

    def positions_margin(self) -> Decimal:
        total = ZERO
        for position in self.positions.values():
            if position.quantity:
                fraction = self._fraction(
                    position.symbol, position.exchange, position.product_type, position.quantity > 0
                )
                total += abs(position.quantity) * position.average_price * fraction
        return total

    def order_margins(self, orders: Iterable[Order]) -> dict[str, Decimal]:
        """Margin each working order blocks, in placement order (see the module docstring)."""
        projected: dict[PositionKey, int] = {}
        margins: dict[str, Decimal] = {}
        for order in orders:
            key = _position_key(order)
            if key not in projected:
                position = self.positions.get(key)
                projected[key] = position.quantity if position is not None else 0
            held = projected[key]
            remaining = order.remaining_quantity
            opening = remaining
            if held * order.side.sign < 0:
                reducing = min(remaining, abs(held))
                projected[key] = held + reducing * order.side.sign
                opening = remaining - reducing
            fraction = self._fraction(
                order.symbol, order.exchange, order.product_type, order.side is OrderSide.BUY
            )
            margins[order.order_id] = opening * self._reference_price(order) * fraction
        return margins

    def used_margin(self) -> Decimal:
        working = [e.order for e in self.working()]
        return self.positions_margin() + sum(self.order_margins(working).values(), ZERO)

    def _check_funds(self, candidate: Order, previous: Order | None = None) -> None:
        """Raise ``InsufficientFunds`` if ``candidate`` (new, or replacing ``previous``)
        needs more new margin than is available."""
        orders = [e.order for e in self.working()]
        if previous is not None:
            orders = [candidate if o is previous else o for o in orders]
        else:
            orders.append(candidate)
        margins = self.order_margins(orders)
        required = margins[candidate.order_id]
        if required <= 0:
            return
        if previous is not None:
            before = self.order_margins([e.order for e in self.working()])[previous.order_id]
            if required <= before:
                return
        used_by_others = self.positions_margin() + sum(
            (m for oid, m in margins.items() if oid != candidate.order_id), ZERO
        )
        available = self.cash - used_by_others
        if required > available:
            raise InsufficientFunds(
                f"insufficient funds: the order needs margin of {round_money(required)}"
                f" but only {round_money(available)} is available",
                required=str(round_money(required)),
                available=str(round_money(available)),
            )

    def _check_delivery_sell(self, candidate: Order, previous: Order | None = None) -> None:
        if (
            candidate.product_type is not ProductType.DELIVERY
            or candidate.side is not OrderSide.SELL
        ):
            return
        key = _position_key(candidate)
        position = self.positions.get(key)
        held = max(position.quantity, 0) if position is not None else 0
        committed = sum(
            e.order.remaining_quantity
            for e in self.working()
            if e.order is not previous
            and e.order.side is OrderSide.SELL
            and _position_key(e.order) == key
        )
        if candidate.remaining_quantity > held - committed:
            raise BrokerRejected(
                f"short selling is not allowed for DELIVERY: {candidate.symbol} holding is"
                f" {held}, {committed} already on working sell orders, asked to sell"
                f" {candidate.remaining_quantity}",
                ErrorCode.INVALID_ORDER,
                held=held,
                committed=committed,
            )

    # -- validation ------------------------------------------------------------------------
    @staticmethod
    def _check_product(instrument: Instrument, product: ProductType) -> None:
        allowed = _DERIVATIVE_PRODUCTS if instrument.is_derivative else _EQUITY_PRODUCTS
        if product not in allowed:
            names = ", ".join(sorted(p.value for p in allowed))
            raise BrokerRejected(
                f"{product.value} is not available for {instrument.instrument_type.value}"
                f" {instrument.symbol}; use one of {names}",
                ErrorCode.INVALID_ORDER,
                field="product_type",
            )

    @staticmethod
    def _check_lot_and_tick(
        instrument: Instrument,
        quantity: int,
        price: Decimal | None,
        trigger_price: Decimal | None,
    ) -> None:
        if quantity % instrument.lot_size:
            raise BrokerRejected(
                f"quantity {quantity} of {instrument.symbol} must be a multiple of the lot"
                f" size {instrument.lot_size}",
                ErrorCode.INVALID_ORDER,
                field="quantity",
            )
        for name, value in (("price", price), ("trigger_price", trigger_price)):
            if value is not None and not is_multiple(value, instrument.tick_size):
                raise BrokerRejected(
                    f"{name} {value} of {instrument.symbol} is not a multiple of the tick"
                    f" size {instrument.tick_size}",
                    ErrorCode.INVALID_ORDER,
                    field=name,
                )

    # -- order lifecycle ---------------------------------------------------------------------
    def _update(self, entry: _Entry, fills: list[Fill] | None = None) -> OrderUpdate:
        return OrderUpdate(self.config_id, self.order_state(entry), list(fills or []))

    def order_state(self, entry: _Entry) -> BrokerOrderState:
        order = entry.order
        return BrokerOrderState(
            broker_order_id=order.order_id,
            status=order.status,
            symbol=order.symbol,
            exchange=order.exchange.value,
            side=order.side.value,
            order_type=order.order_type,
            product_type=order.product_type.value,
            quantity=order.quantity,
            filled_quantity=order.filled_quantity,
            average_price=tidy_price(order.average_price),
            price=order.price,
            trigger_price=order.trigger_price,
            client_order_id=order.client_order_id,
            message=order.message,
            error_code=order.error_code,
            updated_at=order.updated_at,
        )

    def place(self, request: BrokerOrder) -> tuple[str, list[OrderUpdate]]:
        """Validate, accept and try to fill at once; raises ``BrokerError`` on rejection.

        Like every mutating method here, a rejection is raised before anything changes.
        An order whose ``client_order_id`` is already in the book is not placed again: its
        id is returned with no updates. A worker that took over a dead worker's queue
        entry may repeat a placement that did happen; this keeps it at most once.
        """
        if request.client_order_id:
            existing = self.by_client_id(request.client_order_id)
            if existing is not None:
                return existing.order.order_id, []
        instrument = self._instrument(request.symbol, request.exchange)
        if not instrument.tradable:
            raise BrokerRejected(
                f"{instrument.key} is an index: it has a price but cannot be traded",
                ErrorCode.INVALID_ORDER,
                symbol=instrument.symbol,
            )
        order = Order.from_request(
            f"PAPER-{self.order_counter + 1}", self.user_id, self.config_id, request
        )
        order.symbol = instrument.symbol
        self._check_product(instrument, order.product_type)
        self._check_lot_and_tick(instrument, order.quantity, order.price, order.trigger_price)
        self._check_delivery_sell(order)
        self._check_funds(order)
        self.order_counter += 1
        order.broker_order_id = order.order_id
        order.status = OrderStatus.OPEN
        entry = _Entry(order, instrument.lot_size, instrument.tick_size)
        self.orders[order.order_id] = entry
        if order.client_order_id:
            self._by_client_id[order.client_order_id] = order.order_id
        self._track(entry)
        self.dirty.add(order.order_id)
        updates = [self._update(entry)]
        quote = self._quote(order.symbol, order.exchange)
        if quote is not None:
            updates += self._match(entry, quote, resting=False)
        return order.order_id, updates

    def modify(
        self,
        broker_order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
    ) -> list[OrderUpdate]:
        entry = self.entry(broker_order_id)
        order = entry.order
        if not order.status.is_working:
            raise BrokerRejected(
                f"order {broker_order_id} is {order.status.value} and cannot be modified",
                ErrorCode.ORDER_NOT_MODIFIABLE,
                broker_order_id=broker_order_id,
                status=order.status.value,
            )
        if order_type is not None and not isinstance(order_type, OrderType):
            try:
                order_type = OrderType(str(order_type).upper())
            except ValueError:
                raise BrokerRejected(
                    f"unknown order_type {order_type!r}", ErrorCode.INVALID_ORDER
                ) from None
        candidate = replace(order)
        try:
            candidate.modify(
                quantity=quantity, price=price, trigger_price=trigger_price, order_type=order_type
            )
        except DomainError as exc:
            raise BrokerRejected(exc.message, ErrorCode.INVALID_ORDER, **exc.details) from None
        instrument = self.market.get_instrument(order.symbol, order.exchange)
        if instrument is not None:
            self._check_lot_and_tick(
                instrument, candidate.quantity, candidate.price, candidate.trigger_price
            )
        self._check_delivery_sell(candidate, previous=order)
        self._check_funds(candidate, previous=order)
        was_stop = order.order_type in (OrderType.SL, OrderType.SL_M)
        order.modify(
            quantity=quantity, price=price, trigger_price=trigger_price, order_type=order_type
        )
        if order.order_type in (OrderType.SL, OrderType.SL_M) and not was_stop:
            entry.triggered = False
        self.dirty.add(order.order_id)
        updates = [self._update(entry)]
        quote = self._quote(order.symbol, order.exchange)
        if quote is not None:
            updates += self._match(entry, quote, resting=False)
        return updates

    def cancel(self, broker_order_id: str) -> list[OrderUpdate]:
        entry = self.entry(broker_order_id)
        if not entry.order.status.is_working:
            raise BrokerRejected(
                f"order {broker_order_id} is {entry.order.status.value} and cannot be cancelled",
                ErrorCode.ORDER_NOT_CANCELLABLE,
                broker_order_id=broker_order_id,
                status=entry.order.status.value,
            )
        entry.order.transition(OrderStatus.CANCELLED, message="cancelled by the user")
        self._track(entry)
        self.dirty.add(entry.order.order_id)
        return [self._update(entry)]

    def expire_day_orders(self, now: datetime | None = None) -> list[OrderUpdate]:
        """Expire working DAY orders. With ``now``, only those placed before their
        exchange's most recent session close (so a restart after a close catches up);
        without it, all of them (the caller says the session just closed)."""
        updates: list[OrderUpdate] = []
        for entry in self.working():
            if entry.order.validity is Validity.DAY and (
                now is None
                or entry.order.created_at < last_session_close(entry.order.exchange, now)
            ):
                entry.order.transition(
                    OrderStatus.EXPIRED, message="day order expired at the session close"
                )
                self._track(entry)
                self.dirty.add(entry.order.order_id)
                updates.append(self._update(entry))
        return updates

    def on_quotes(self, quotes: Iterable[Quote]) -> tuple[list[OrderUpdate], bool]:
        """Re-check resting orders against a market update. Returns the updates and
        whether the account changed (and so needs saving)."""
        working = self.working()
        if not working:
            return [], False
        by_key = {q.key: q for q in quotes}
        updates: list[OrderUpdate] = []
        changed = False
        for entry in working:
            quote = by_key.get(f"{entry.order.exchange.value}:{entry.order.symbol}")
            if quote is None or not entry.order.status.is_working:
                continue
            was_triggered = entry.triggered
            new = self._match(entry, quote, resting=True)
            changed = changed or bool(new) or entry.triggered != was_triggered
            updates += new
        return updates, changed

    def would_change(self, quotes: Iterable[Quote]) -> bool:
        """Whether ``on_quotes(quotes)`` would change anything (fill, trigger, cancel an
        IOC remainder), without changing anything: the cheap test that spares a market
        tick the database transaction of an account it leaves alone."""
        if not self._working:
            return False
        by_key = {q.key: q for q in quotes}
        for entry in self._working.values():
            order = entry.order
            quote = by_key.get(f"{order.exchange.value}:{order.symbol}")
            if quote is None or entry.last_fill_sequence == quote.sequence:
                continue
            decision = self.fill_model.evaluate(self._fill_request(entry), quote)
            if (
                (decision.quantity > 0 and decision.price is not None)
                or decision.cancel_remaining
                or decision.triggered != entry.triggered
            ):
                return True
        return False

    @staticmethod
    def _fill_request(entry: _Entry) -> FillRequest:
        order = entry.order
        return FillRequest(
            side=order.side,
            order_type=order.order_type,
            remaining_quantity=order.remaining_quantity,
            limit_price=order.price,
            trigger_price=order.trigger_price,
            triggered=entry.triggered,
            validity=order.validity,
            lot_size=entry.lot_size,
            tick_size=entry.tick_size,
        )

    def _match(self, entry: _Entry, quote: Quote, *, resting: bool) -> list[OrderUpdate]:
        order = entry.order
        if entry.last_fill_sequence == quote.sequence:
            return []  # this order already took its share of this update's volume
        decision = self.fill_model.evaluate(self._fill_request(entry), quote)
        if decision.triggered != entry.triggered:
            self.dirty.add(order.order_id)
        entry.triggered = decision.triggered
        updates: list[OrderUpdate] = []
        if decision.quantity > 0 and decision.price is not None:
            entry.last_fill_sequence = quote.sequence
            maker = resting and order.order_type is OrderType.LIMIT
            fill = self._execute(entry, decision.quantity, decision.price, quote, maker)
            updates.append(self._update(entry, [fill]))
            self.dirty.add(order.order_id)
        if decision.cancel_remaining and order.status.is_working:
            order.transition(
                OrderStatus.CANCELLED,
                message=f"IOC: {order.remaining_quantity} unfilled, cancelled",
            )
            updates.append(self._update(entry))
            self.dirty.add(order.order_id)
        self._track(entry)
        return updates

    def _execute(
        self, entry: _Entry, quantity: int, price: Decimal, quote: Quote, maker: bool
    ) -> Fill:
        order = entry.order
        instrument = self.market.get_instrument(order.symbol, order.exchange)
        if instrument is None:  # pragma: no cover - matching needs a quote, hence the instrument
            raise BrokerError(f"instrument {order.exchange}:{order.symbol} vanished")
        breakdown = charges_for_fill(
            instrument,
            order.product_type,
            order.side,
            quantity,
            price,
            self.settings.charges,
            is_maker=maker,
        )
        self.trade_counter += 1
        fill = Fill(
            trade_id=f"PT-{self.config_id}-{self.trade_counter}",
            broker_order_id=order.order_id,
            symbol=order.symbol,
            exchange=order.exchange,
            side=order.side,
            product_type=order.product_type,
            quantity=quantity,
            price=price,
            charges=breakdown.total,
            timestamp=quote.timestamp,
            client_order_id=order.client_order_id,
        )
        order.apply_fill(quantity, price)
        self._book_fill(fill)
        self.charges_detail[fill.trade_id] = {k: str(v) for k, v in breakdown.to_dict().items()}
        return fill

    def _book_fill(self, fill: Fill) -> None:
        key = _position_key(fill)
        position = self.positions.get(key)
        if position is None:
            position = Position(fill.symbol, fill.exchange, fill.product_type)
            self.positions[key] = position
        realised_before = position.realised_pnl
        position.apply(fill)
        self.cash += position.realised_pnl - realised_before - fill.charges
        self.fills.append(fill)

    # -- views -----------------------------------------------------------------------------
    def positions_view(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for position in self.positions.values():
            last = self._last_price(position.symbol, position.exchange, position.average_price)
            unrealised = position.unrealised_pnl(last)
            rows.append(
                {
                    "symbol": position.symbol,
                    "exchange": position.exchange.value,
                    "product_type": position.product_type.value,
                    "quantity": position.quantity,
                    "average_price": tidy_price(position.average_price),
                    "last_price": last,
                    "pnl": round_money(position.total_pnl(last)),
                    "realised_pnl": round_money(position.realised_pnl),
                    "unrealised_pnl": round_money(unrealised),
                    "charges": round_money(position.charges),
                    "buy_quantity": position.buy_quantity,
                    "sell_quantity": position.sell_quantity,
                    "buy_value": position.buy_value,
                    "sell_value": position.sell_value,
                }
            )
        return rows

    def totals(self) -> dict[str, Decimal]:
        """Unrounded account figures (the balance view rounds them)."""
        realised = sum((p.realised_pnl for p in self.positions.values()), ZERO)
        charges = sum((p.charges for p in self.positions.values()), ZERO)
        unrealised = sum(
            (
                p.unrealised_pnl(self._last_price(p.symbol, p.exchange, p.average_price))
                for p in self.positions.values()
            ),
            ZERO,
        )
        used = self.used_margin()
        available = self.cash - used
        return {
            "cash": self.cash,
            "used_margin": used,
            "available_cash": available,
            "buying_power": available * self.settings.intraday_leverage,
            "total_balance": self.cash + unrealised,
            "realised_pnl": realised,
            "unrealised_pnl": unrealised,
            "charges": charges,
        }

    def balance_view(self) -> dict[str, Any]:
        t = self.totals()
        balance = Balance(
            available_cash=round_money(t["available_cash"]),
            buying_power=round_money(t["buying_power"]),
            used_margin=round_money(t["used_margin"]),
            total_balance=round_money(t["total_balance"]),
            realised_pnl=round_money(t["realised_pnl"]),
            unrealised_pnl=round_money(t["unrealised_pnl"]),
            charges=round_money(t["charges"]),
            currency=self.settings.currency,
        )
        data = balance.to_dict()
        data["cash"] = round_money(t["cash"])
        data["initial_capital"] = self.initial_capital
        return data

    def market_data(self, symbol: str, exchange: str) -> dict[str, Any]:
        instrument = self._instrument(symbol, exchange)
        quote = self.market.quote(instrument.symbol, instrument.exchange)
        return {
            "symbol": quote.symbol,
            "exchange": quote.exchange.value,
            "ltp": quote.ltp,
            "change": quote.change,
            "change_percent": quote.change_percent,
            "open": quote.open,
            "high": quote.high,
            "low": quote.low,
            "close": quote.close,
            "volume": quote.volume,
            "bid": quote.bid,
            "ask": quote.ask,
            "timestamp": quote.timestamp.isoformat(),
        }

    # -- persistence -----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The whole account as JSON-serialisable data (Decimals as strings)."""
        return {
            "version": STATE_VERSION,
            "config_id": self.config_id,
            "initial_capital": str(self.initial_capital),
            "cash": str(self.cash),
            "order_counter": self.order_counter,
            "trade_counter": self.trade_counter,
            "orders": [_order_to_dict(e) for e in self.orders.values()],
            "fills": [_fill_to_dict(f) for f in self.fills],
            "charges_detail": {k: dict(v) for k, v in self.charges_detail.items()},
            "positions": [_position_to_dict(p) for p in self.positions.values()],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace this account's contents with a saved ``to_state()``."""
        try:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported state version {state.get('version')!r}")
            orders = {o["order_id"]: _entry_from_dict(o) for o in state.get("orders", [])}
            fills = [_fill_from_dict(f) for f in state.get("fills", [])]
            positions = [_position_from_dict(p) for p in state.get("positions", [])]
            self.initial_capital = Decimal(state["initial_capital"])
            self.cash = Decimal(state["cash"])
            self.order_counter = int(state["order_counter"])
            self.trade_counter = int(state["trade_counter"])
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise BrokerError(
                f"saved paper account state for {self.config_id} is unreadable: {exc}"
            ) from exc
        self.orders = orders
        self._working = {oid: e for oid, e in orders.items() if e.order.status.is_working}
        self._by_client_id = {
            e.order.client_order_id: oid for oid, e in orders.items() if e.order.client_order_id
        }
        self.dirty = set()
        self.fills = fills
        self.charges_detail = {k: dict(v) for k, v in dict(state.get("charges_detail", {})).items()}
        self.positions = {(p.exchange.value, p.symbol, p.product_type.value): p for p in positions}

    def merge_state(
        self,
        head: Mapping[str, Any],
        orders: Iterable[Mapping[str, Any]],
        fills: Iterable[Mapping[str, Any]],
        charges_detail: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Bring the account up to date with another process's changes: ``head`` holds the
        whole ledger (cash, counters, positions), ``orders`` and ``fills`` only the records
        changed since this account was last in step. Everything is parsed before anything
        changes, so an unreadable record leaves the account as it was."""
        try:
            entries = [_entry_from_dict(o) for o in orders]
            new_fills = [_fill_from_dict(f) for f in fills]
            positions = [_position_from_dict(p) for p in head.get("positions", [])]
            cash = Decimal(head["cash"])
            order_counter = int(head["order_counter"])
            trade_counter = int(head["trade_counter"])
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise BrokerError(
                f"saved paper account state for {self.config_id} is unreadable: {exc}"
            ) from exc
        for entry in entries:
            order_id = entry.order.order_id
            previous = self.orders.get(order_id)
            if previous is not None:  # the same market update must not fill it twice here
                entry.last_fill_sequence = previous.last_fill_sequence
            self.orders[order_id] = entry  # an existing key keeps its place (placement order)
            if entry.order.client_order_id:
                self._by_client_id[entry.order.client_order_id] = order_id
            if entry.order.status.is_working:
                self._working[order_id] = entry
            else:
                self._working.pop(order_id, None)
        known = {f.trade_id for f in self.fills}
        self.fills.extend(
            sorted((f for f in new_fills if f.trade_id not in known), key=_trade_sequence)
        )
        self.charges_detail.update({k: dict(v) for k, v in charges_detail.items()})
        self.positions = {(p.exchange.value, p.symbol, p.product_type.value): p for p in positions}
        self.cash = cash
        self.order_counter = order_counter
        self.trade_counter = trade_counter


def _trade_sequence(fill: Fill) -> int:
    tail = fill.trade_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _opt(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _opt_dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _order_to_dict(entry: _Entry) -> dict[str, Any]:
    o = entry.order
    return {
        "order_id": o.order_id,
        "user_id": o.user_id,
        "config_id": o.config_id,
        "symbol": o.symbol,
        "exchange": o.exchange.value,
        "side": o.side.value,
        "order_type": o.order_type.value,
        "product_type": o.product_type.value,
        "quantity": o.quantity,
        "price": _opt(o.price),
        "trigger_price": _opt(o.trigger_price),
        "validity": o.validity.value,
        "tag": o.tag,
        "client_order_id": o.client_order_id,
        "status": o.status.value,
        "filled_quantity": o.filled_quantity,
        "average_price": str(o.average_price),
        "broker_order_id": o.broker_order_id,
        "error_code": o.error_code,
        "message": o.message,
        "created_at": o.created_at.isoformat(),
        "updated_at": o.updated_at.isoformat(),
        "lot_size": entry.lot_size,
        "tick_size": str(entry.tick_size),
        "triggered": entry.triggered,
    }


def _entry_from_dict(data: Mapping[str, Any]) -> _Entry:
    order = Order(
        order_id=data["order_id"],
        user_id=data["user_id"],
        config_id=data["config_id"],
        symbol=data["symbol"],
        exchange=Exchange(data["exchange"]),
        side=OrderSide(data["side"]),
        order_type=OrderType(data["order_type"]),
        product_type=ProductType(data["product_type"]),
        quantity=int(data["quantity"]),
        price=_opt_dec(data.get("price")),
        trigger_price=_opt_dec(data.get("trigger_price")),
        validity=Validity(data["validity"]),
        tag=data.get("tag"),
        client_order_id=data.get("client_order_id"),
        status=OrderStatus(data["status"]),
        filled_quantity=int(data["filled_quantity"]),
        average_price=Decimal(data["average_price"]),
        broker_order_id=data.get("broker_order_id"),
        error_code=data.get("error_code"),
        message=data.get("message"),
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )
    # last_fill_sequence is not restored: a restarted market numbers its updates afresh.
    return _Entry(order, int(data["lot_size"]), Decimal(data["tick_size"]), bool(data["triggered"]))


def _fill_to_dict(fill: Fill) -> dict[str, Any]:
    return {
        "trade_id": fill.trade_id,
        "broker_order_id": fill.broker_order_id,
        "symbol": fill.symbol,
        "exchange": fill.exchange.value,
        "side": fill.side.value,
        "product_type": fill.product_type.value,
        "quantity": fill.quantity,
        "price": str(fill.price),
        "charges": str(fill.charges),
        "timestamp": fill.timestamp.isoformat(),
        "client_order_id": fill.client_order_id,
    }


def _fill_from_dict(data: Mapping[str, Any]) -> Fill:
    return Fill(
        trade_id=data["trade_id"],
        broker_order_id=data["broker_order_id"],
        symbol=data["symbol"],
        exchange=Exchange(data["exchange"]),
        side=OrderSide(data["side"]),
        product_type=ProductType(data["product_type"]),
        quantity=int(data["quantity"]),
        price=Decimal(data["price"]),
        charges=Decimal(data["charges"]),
        timestamp=datetime.fromisoformat(data["timestamp"]),
        client_order_id=data.get("client_order_id"),
    )


def _position_to_dict(p: Position) -> dict[str, Any]:
    return {
        "symbol": p.symbol,
        "exchange": p.exchange.value,
        "product_type": p.product_type.value,
        "quantity": p.quantity,
        "average_price": str(p.average_price),
        "realised_pnl": str(p.realised_pnl),
        "charges": str(p.charges),
        "buy_quantity": p.buy_quantity,
        "sell_quantity": p.sell_quantity,
        "buy_value": str(p.buy_value),
        "sell_value": str(p.sell_value),
    }


def _position_from_dict(data: Mapping[str, Any]) -> Position:
    return Position(
        symbol=data["symbol"],
        exchange=Exchange(data["exchange"]),
        product_type=ProductType(data["product_type"]),
        quantity=int(data["quantity"]),
        average_price=Decimal(data["average_price"]),
        realised_pnl=Decimal(data["realised_pnl"]),
        charges=Decimal(data["charges"]),
        buy_quantity=int(data["buy_quantity"]),
        sell_quantity=int(data["sell_quantity"]),
        buy_value=Decimal(data["buy_value"]),
        sell_value=Decimal(data["sell_value"]),
    )
