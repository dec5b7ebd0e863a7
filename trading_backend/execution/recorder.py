"""Turns what brokers report (pushed updates, or order-book reads during reconciliation)
into persisted order state: status transitions, trades (each broker trade id once) and
positions, with an order event for every change."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.brokers.base import BrokerOrderState, OrderUpdate
from trading_backend.domain import Fill, IllegalTransition, Order, OrderStatus
from trading_backend.execution.locks import KeyedLocks
from trading_backend.storage.models import OrderRow, TradeRow
from trading_backend.storage.repositories import (
    add_event,
    apply_fill_to_position,
    copy_order_to_row,
    order_from_row,
)

log = structlog.get_logger(__name__)

OrderListener = Callable[[Order], None]


class OrderRecorder:
    def __init__(self, db: async_sessionmaker[AsyncSession], locks: KeyedLocks) -> None:
        self._db = db
        self.locks = locks
        self._listeners: list[OrderListener] = []

    def add_listener(self, listener: OrderListener) -> None:
        """Called with the new order state after every committed change (WebSocket push)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: OrderListener) -> None:
        """Forget a listener added with ``add_listener`` (no error if it is not there)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, order: Order) -> None:
        for listener in self._listeners:
            try:
                listener(order)
            except Exception:
                log.exception("order_listener_failed")

    async def handle_update(self, update: OrderUpdate) -> None:
        """Entry point for pushed broker updates. Our order id travels as the broker-side
        tag, so most updates need no lookup; others are found by broker order id."""
        order_id = update.state.client_order_id or await self._find_order_id(
            update.config_id, update.state
        )
        if order_id is None:
            log.warning(
                "broker_update_for_unknown_order",
                config_id=update.config_id,
                broker_order_id=update.state.broker_order_id,
            )
            return
        await self.apply(order_id, update.state, update.fills, config_id=update.config_id)

    async def _find_order_id(self, config_id: str, state: BrokerOrderState) -> str | None:
        async with self._db() as session:
            if state.client_order_id:
                row = await session.get(OrderRow, state.client_order_id)
                if row is not None and row.config_id == config_id:
                    return row.id
            return await session.scalar(
                select(OrderRow.id).where(
                    OrderRow.config_id == config_id,
                    OrderRow.broker_order_id == state.broker_order_id,
                )
            )

    async def apply(
        self,
        order_id: str,
        state: BrokerOrderState,
        fills: list[Fill],
        *,
        event_type: str = "BROKER_UPDATE",
        config_id: str | None = None,
    ) -> Order | None:
        """Bring our order in line with the broker's view. Idempotent: replaying the same
        state and fills changes nothing."""
        async with self.locks.hold(order_id):
            async with self._db() as session, session.begin():
                row = await session.get(OrderRow, order_id)
                if row is None or (config_id is not None and row.config_id != config_id):
                    log.warning(
                        "broker_update_for_unknown_order",
                        config_id=config_id,
                        broker_order_id=state.broker_order_id,
                    )
                    return None
                order = order_from_row(row)
                before = order.status
                changed = False
                if order.broker_order_id is None and state.broker_order_id:
                    order.broker_order_id = state.broker_order_id
                    changed = True
                for fill in fills:
                    if await self._record_fill(session, row, order, fill):
                        changed = True
                changed |= self._apply_status(order, state)
                if not changed:
                    return order
                copy_order_to_row(order, row)
                add_event(
                    session,
                    row,
                    event_type,
                    from_status=before.value,
                    to_status=order.status.value,
                    data={
                        "broker_order_id": state.broker_order_id,
                        "broker_status": state.status.value,
                        "filled_quantity": order.filled_quantity,
                        "average_price": str(order.average_price),
                        "message": state.message,
                    },
                )
        log.info(
            "order_updated",
            order_id=order_id,
            status=order.status.value,
            filled=order.filled_quantity,
        )
        self._notify(order)
        return order

    async def _record_fill(
        self, session: AsyncSession, row: OrderRow, order: Order, fill: Fill
    ) -> bool:
        exists = await session.scalar(
            select(TradeRow.id).where(
                TradeRow.config_id == row.config_id, TradeRow.trade_id == fill.trade_id
            )
        )
        if exists is not None:
            return False
        if order.status is OrderStatus.PENDING:
            order.transition(OrderStatus.SUBMITTED)
        try:
            order.apply_fill(fill.quantity, fill.price)
        except IllegalTransition as exc:
            # A fill on a locally final order (e.g. cancelled here while filling there):
            # the broker is the source of truth, so the trade is still booked.
            log.error("fill_on_final_order", order_id=order.order_id, error=str(exc))
            order.filled_quantity = min(order.quantity, order.filled_quantity + fill.quantity)
        session.add(
            TradeRow(
                user_id=row.user_id,
                config_id=row.config_id,
                order_id=row.id,
                trade_id=fill.trade_id,
                broker_order_id=fill.broker_order_id,
                symbol=fill.symbol,
                exchange=fill.exchange.value,
                side=fill.side.value,
                product_type=fill.product_type.value,
                quantity=fill.quantity,
                price=fill.price,
                charges=fill.charges,
                executed_at=fill.timestamp,
            )
        )
        await apply_fill_to_position(session, row.user_id, row.config_id, fill)
        add_event(
            session,
            row,
            "FILL",
            data={
                "trade_id": fill.trade_id,
                "quantity": fill.quantity,
                "price": str(fill.price),
                "charges": str(fill.charges),
            },
        )
        return True

    @staticmethod
    def _apply_status(order: Order, state: BrokerOrderState) -> bool:
        """Move to the broker's status where the state machine allows it. Fill-driven
        statuses come from the fills themselves, never from the status field alone."""
        target = state.status
        current = order.status
        if current.is_final or target == current:
            return False
        if target in (OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED):
            if current is OrderStatus.PENDING and target is not OrderStatus.REJECTED:
                order.transition(OrderStatus.SUBMITTED)
            if current is OrderStatus.PARTIALLY_FILLED and target is OrderStatus.REJECTED:
                target = OrderStatus.CANCELLED
            order.transition(target, error_code=state.error_code, message=state.message)
            return True
        if target in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED):
            if current in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN, OrderStatus.PENDING):
                if current is OrderStatus.PENDING:
                    order.transition(OrderStatus.SUBMITTED)
                order.transition(OrderStatus.OPEN)
                return True
        return False
