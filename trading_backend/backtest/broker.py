"""The backtest's broker: one ``PaperAccount``, unchanged, on the backtest's market.

Why wrap rather than rewrite: the point of the backtester is that fills and charges are
the paper broker's by construction (``PaperAccount`` with its ``FillModel`` and
``charges_for_fill``, lot/tick/funds checks included). This wrapper only adds what a
replay needs around it:

* simulated time: the account stamps orders with the wall clock; the copies handed to
  the strategy and kept for the result carry the replay's time instead (fills already
  carry the quote's, i.e. the price point's, time);
* the working set, kept from the updates, so the engine can skip the matching engine
  entirely while nothing is working;
* the strategy's order updates, queued (``outbox``) and delivered by the engine after
  the callback that caused them, as the live runner does;
* open positions, refreshed after each fill, for the equity; positions over time are
  replayed from the fills when asked (``position_snapshots``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from trading_backend.backtest.market import BacktestMarket
from trading_backend.brokers.base import BrokerOrderState, OrderUpdate
from trading_backend.brokers.paper.exchange import PaperAccount
from trading_backend.brokers.paper.settings import PaperSettings
from trading_backend.domain import BrokerOrder, Exchange, Fill, Order, Position, ProductType

__all__ = ["PositionSnapshot", "SimulatedBroker", "position_snapshots"]

BACKTEST_USER = "backtest"
BACKTEST_ACCOUNT = "backtest"


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class PositionSnapshot:
    """One instrument's position right after a fill changed it."""

    timestamp: datetime
    symbol: str
    exchange: Exchange
    product_type: ProductType
    quantity: int
    average_price: Decimal
    realised_pnl: Decimal
    charges: Decimal


def _as_reported(order: Order, state: BrokerOrderState, now: datetime) -> Order:
    """A copy of the account's order as ``state`` reports it, stamped ``now`` (built directly:
    several times cheaper than ``copy`` or ``dataclasses.replace``)."""
    return Order(
        order_id=order.order_id,
        user_id=order.user_id,
        config_id=order.config_id,
        symbol=order.symbol,
        exchange=order.exchange,
        side=order.side,
        order_type=order.order_type,
        product_type=order.product_type,
        quantity=order.quantity,
        price=order.price,
        trigger_price=order.trigger_price,
        validity=order.validity,
        tag=order.tag,
        client_order_id=order.client_order_id,
        status=state.status,
        filled_quantity=state.filled_quantity,
        average_price=state.average_price,
        broker_order_id=order.broker_order_id,
        error_code=state.error_code,
        message=state.message,
        created_at=order.created_at,
        updated_at=now,
    )


def position_snapshots(fills: Sequence[Fill]) -> list[PositionSnapshot]:
    """Each instrument's position after every fill, replayed from the fills the way the
    paper account books them (``Position.apply``): positions over time, worked out only
    when someone asks for them."""
    positions: dict[tuple[str, str, str], Position] = {}
    snapshots: list[PositionSnapshot] = []
    for fill in fills:
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        position = positions.get(key)
        if position is None:
            position = positions[key] = Position(fill.symbol, fill.exchange, fill.product_type)
        position.apply(fill)
        snapshots.append(
            PositionSnapshot(
                fill.timestamp,
                fill.symbol,
                fill.exchange,
                fill.product_type,
                position.quantity,
                position.average_price,
                position.realised_pnl,
                position.charges,
            )
        )
    return snapshots


class SimulatedBroker:
    def __init__(self, market: BacktestMarket, settings: PaperSettings) -> None:
        self.market = market
        self.account = PaperAccount(BACKTEST_ACCOUNT, BACKTEST_USER, settings, market)  # type: ignore[arg-type]
        self.working: set[str] = set()
        self.outbox: list[Order] = []
        self.orders: dict[str, Order] = {}  # latest view of every order, placement order
        self.open_positions: list[tuple[int, Position]] = []  # (slot, position), quantity != 0
        self._fills_seen = 0
        self.fill_count = 0  # fills so far: the engine notices a change by it

    # -- orders ----------------------------------------------------------------------------
    def place(self, request: BrokerOrder, now: datetime, tag: str | None = None) -> Order:
        """Place at once against the current point; raises the account's ``BrokerError``.
        ``tag`` replaces the request's (the strategy's tag, as live)."""
        order_id, updates = self.account.place(request)
        order = self.account.entry(order_id).order
        order.created_at = order.updated_at = now  # DAY expiry reads created_at
        if tag is not None:
            order.tag = tag
        self._absorb(updates, now)
        return self.view(order_id)

    def cancel(self, order_id: str, now: datetime) -> Order:
        self._absorb(self.account.cancel(order_id), now)
        return self.view(order_id)

    def view(self, order_id: str) -> Order:
        """The latest copy of an order (never the account's own object)."""
        known = self.orders.get(order_id)
        if known is not None:
            return known
        base = self.account.entry(order_id).order
        return _as_reported(
            base, self.account.order_state(self.account.entry(order_id)), base.updated_at
        )

    def working_orders(self) -> list[Order]:
        return [self.view(order_id) for order_id in self.orders if order_id in self.working]

    # -- the market moves ----------------------------------------------------------------------
    def on_point(self, slot: int, now: datetime) -> None:
        """Match the working orders against the slot's new price point."""
        updates, _ = self.account.on_quotes((self.market.quote_at(slot),))
        if updates:
            self._absorb(updates, now)

    def expire_day_orders(self, now: datetime) -> None:
        """Expire DAY orders placed before the latest session close (as the paper broker
        does at each close)."""
        updates = self.account.expire_day_orders(now)
        if updates:
            self._absorb(updates, now)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _absorb(self, updates: list[OrderUpdate], now: datetime) -> None:
        filled = False
        entries = self.account.orders
        orders = self.orders
        outbox = self.outbox
        working = self.working
        for update in updates:
            state = update.state
            order_id = state.broker_order_id
            order = _as_reported(entries[order_id].order, state, now)
            orders[order_id] = order
            outbox.append(order)
            if state.status.is_working:
                working.add(order_id)
            else:
                working.discard(order_id)
            filled = filled or bool(update.fills)
        if filled:
            self._positions_changed()

    def _positions_changed(self) -> None:
        """After fills: count them and refresh the open positions the equity reads."""
        fills = self.account.fills
        self.fill_count += len(fills) - self._fills_seen
        self._fills_seen = len(fills)
        slot_of = self.market.slot_of
        # Updated in place: the engine's loop holds a reference to this list.
        self.open_positions[:] = [
            (slot_of(p.symbol, p.exchange), p)
            for p in self.account.positions.values()
            if p.quantity
        ]

    # -- figures -------------------------------------------------------------------------------
    def equity(self) -> Decimal:
        """Cash plus the open positions marked at their last prices (the paper account's
        total balance, computed without building its views)."""
        value = self.account.cash
        price = self.market.price
        for slot, position in self.open_positions:
            last = price(slot)
            if last is not None:
                value += (last - position.average_price) * position.quantity
        return value

    def net_position(self, slot: int) -> tuple[int, Decimal]:
        """An instrument's net quantity over its products and the cost of it (sum of
        quantity x average price): its value at ``price`` is ``quantity x price - cost``."""
        quantity, cost = 0, Decimal(0)
        for s, position in self.open_positions:
            if s == slot:
                quantity += position.quantity
                cost += position.quantity * position.average_price
        return quantity, cost

    def positions(self) -> list[Position]:
        return [dataclasses.replace(p) for p in self.account.positions.values() if p.quantity]
