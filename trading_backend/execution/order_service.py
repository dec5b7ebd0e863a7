"""The order service: the one way an order enters the system.

validate -> risk -> persist PENDING + queue entry (one transaction) -> a worker submits.
Placing again with a client order id already used returns the existing order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import (
    BrokerOrder,
    DomainError,
    ErrorCode,
    IllegalTransition,
    Order,
    OrderStatus,
    OrderType,
)
from trading_backend.domain.orders import BrokerOrder as _BrokerOrder
from trading_backend.execution.ids import new_order_id
from trading_backend.execution.locks import KeyedLocks
from trading_backend.execution.queue import MessageKind, OrderQueue, Outcome, Priority
from trading_backend.execution.recorder import OrderRecorder
from trading_backend.logging import correlation_id
from trading_backend.risk import RiskCheck
from trading_backend.storage.models import BrokerConfig, OrderRow
from trading_backend.storage.repositories import (
    add_audit,
    add_event,
    copy_order_to_row,
    new_order_row,
    order_from_row,
)

log = structlog.get_logger(__name__)


class OrderNotFound(DomainError):
    code = ErrorCode.ORDER_NOT_FOUND


@dataclass(slots=True)
class OrderResult:
    """An order after a request, plus what happened to the request itself."""

    order: Order
    outcome: Outcome | None  # None: still being processed when the wait ended
    created: bool = True


class OrderService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        queue: OrderQueue,
        risk: RiskCheck,
        recorder: OrderRecorder,
        locks: KeyedLocks,
    ) -> None:
        self._db = db
        self._queue = queue
        self._risk = risk
        self._recorder = recorder
        self._locks = locks

    @property
    def locks(self) -> KeyedLocks:
        """The per-order locks every change of an order is committed under."""
        return self._locks

    async def _require_config(self, session: AsyncSession, user_id: str, config_id: str) -> None:
        found = await session.scalar(
            select(BrokerConfig.id).where(
                BrokerConfig.id == config_id,
                BrokerConfig.user_id == user_id,
                BrokerConfig.is_active.is_(True),
            )
        )
        if found is None:
            raise DomainError(f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND)

    async def _existing(self, user_id: str, client_order_id: str) -> Order | None:
        async with self._db() as session:
            row = await session.scalar(
                select(OrderRow).where(
                    OrderRow.user_id == user_id, OrderRow.client_order_id == client_order_id
                )
            )
            return order_from_row(row) if row is not None else None

    async def place(
        self,
        user_id: str,
        config_id: str,
        request: BrokerOrder,
        *,
        priority: Priority = Priority.NORMAL,
        wait: float = 0.0,
        ip: str | None = None,
        strategy_id: str | None = None,
        intentional: bool = False,
        square_off: bool = False,
    ) -> OrderResult:
        """``strategy_id``: the strategy placing the order (kept on the order row, so the
        strategy's orders, fills and positions can be told apart from the user's own).
        ``intentional`` and ``square_off`` go to the risk check (see ``RiskCheck``)."""
        if request.client_order_id:
            existing = await self._existing(user_id, request.client_order_id)
            if existing is not None:
                if existing.config_id != config_id:
                    raise DomainError(
                        "client_order_id already used for another broker account",
                        ErrorCode.CONFLICT,
                    )
                return OrderResult(existing, Outcome(True), created=False)
        order = Order.from_request(new_order_id(), user_id, config_id, request)
        async with self._risk.guard(user_id):
            entry_id = await self._accept(
                user_id,
                config_id,
                request,
                order,
                priority=priority,
                ip=ip,
                strategy_id=strategy_id,
                intentional=intentional,
                square_off=square_off,
            )
        if isinstance(entry_id, OrderResult):
            return entry_id  # a client order id race: the first order won
        self._queue.notify()
        log.info(
            "order_accepted",
            order_id=order.order_id,
            user_id=user_id,
            config_id=config_id,
            symbol=order.symbol,
        )
        outcome = await self._queue.wait_processed(entry_id, wait)
        return OrderResult(await self._after(user_id, order.order_id, outcome), outcome)

    async def _accept(
        self,
        user_id: str,
        config_id: str,
        request: BrokerOrder,
        order: Order,
        *,
        priority: Priority,
        ip: str | None,
        strategy_id: str | None,
        intentional: bool,
        square_off: bool,
    ) -> int | OrderResult:
        """Risk check, then the order, its event, queue entry and audit row in one
        transaction; the reservation is given back when that fails. Returns the queue
        entry id (or the existing order when a client order id race was lost)."""
        await self._risk.check(
            user_id,
            config_id,
            request,
            order_id=order.order_id,
            intentional=intentional,
            square_off=square_off,
        )
        cid = correlation_id.get()
        entry_id: int | None = None
        persisted = False
        try:
            async with self._db() as session, session.begin():
                await self._require_config(session, user_id, config_id)
                row = new_order_row(order, int(priority), cid)
                row.strategy_id = strategy_id
                session.add(row)
                await session.flush()
                add_event(
                    session,
                    row,
                    "ACCEPTED",
                    to_status=OrderStatus.PENDING.value,
                    data={"priority": priority.name},
                )
                entry_id = await self._queue.enqueue(
                    session,
                    kind=MessageKind.PLACE,
                    order_id=order.order_id,
                    priority=priority,
                    payload={"user_id": user_id, "config_id": config_id},
                    correlation_id=cid,
                )
                await add_audit(
                    session,
                    "order.placed",
                    user_id=user_id,
                    target=order.order_id,
                    data={
                        "config_id": config_id,
                        "symbol": order.symbol,
                        "side": order.side.value,
                        "quantity": order.quantity,
                        "order_type": order.order_type.value,
                        **({"strategy_id": strategy_id} if strategy_id else {}),
                    },
                    ip=ip,
                    correlation_id=cid,
                )
            persisted = True
        except IntegrityError:
            if entry_id is not None:
                self._queue.forget(entry_id)
            # Two requests raced with the same client order id: the first one won.
            if request.client_order_id:
                existing = await self._existing(user_id, request.client_order_id)
                if existing is not None:
                    return OrderResult(existing, Outcome(True), created=False)
            raise
        finally:
            if not persisted:  # accepted by risk but never stored: give its room back
                self._risk.release(order.order_id)
        assert entry_id is not None  # stored, so it has its queue entry
        return entry_id

    async def _after(self, user_id: str, order_id: str, outcome: Outcome | None) -> Order:
        """The order once its request was handled: as the worker left it when that worker is
        in this process (no read needed), else from the database."""
        if outcome is not None and outcome.order is not None and outcome.order.user_id == user_id:
            return outcome.order
        return await self.get(user_id, order_id)

    async def get(self, user_id: str, order_id: str) -> Order:
        async with self._db() as session:
            row = await session.scalar(
                select(OrderRow).where(OrderRow.id == order_id, OrderRow.user_id == user_id)
            )
            if row is None:
                raise OrderNotFound(f"order {order_id!r} not found")
            return order_from_row(row)

    async def modify(
        self,
        user_id: str,
        order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
        wait: float = 0.0,
        ip: str | None = None,
    ) -> OrderResult:
        changes: dict[str, Any] = {
            k: v
            for k, v in {
                "quantity": quantity,
                "price": price,
                "trigger_price": trigger_price,
                "order_type": order_type,
            }.items()
            if v is not None
        }
        if not changes:
            raise DomainError("nothing to modify", ErrorCode.INVALID_ORDER)
        cid = correlation_id.get()
        async with self._locks.hold(order_id), self._risk.guard(user_id):
            async with self._db() as session, session.begin():
                row = await self._owned_row(session, user_id, order_id)
                order = order_from_row(row)
                if order.status not in (
                    OrderStatus.PENDING,
                    OrderStatus.OPEN,
                    OrderStatus.PARTIALLY_FILLED,
                ):
                    raise DomainError(
                        f"order in {order.status} cannot be modified",
                        ErrorCode.ORDER_NOT_MODIFIABLE,
                    )
                candidate = order_from_row(row)
                try:
                    candidate.modify(**changes)  # validates the resulting order
                except IllegalTransition as exc:
                    raise DomainError(exc.message, ErrorCode.ORDER_NOT_MODIFIABLE) from None
                # The new terms pass the risk engine like a new order would.
                await self._risk.check_modify(order, candidate)
                wire = {k: (str(v) if v is not None else None) for k, v in changes.items()}
                await add_audit(
                    session,
                    "order.modified",
                    user_id=user_id,
                    target=order_id,
                    data=wire,
                    ip=ip,
                    correlation_id=cid,
                )
                pending = order.status is OrderStatus.PENDING
                if pending:
                    # Not yet at the broker: change it in place, the worker sends the new one.
                    copy_order_to_row(candidate, row)
                    add_event(session, row, "MODIFIED", data=wire, correlation_id=cid)
                else:
                    add_event(session, row, "MODIFY_REQUESTED", data=wire, correlation_id=cid)
                    entry_id = await self._queue.enqueue(
                        session,
                        kind=MessageKind.MODIFY,
                        order_id=order_id,
                        priority=Priority.HIGH,
                        payload=wire,
                        correlation_id=cid,
                    )
        if pending:
            self._recorder._notify(candidate)  # committed: listeners (risk, feed) see it
            return OrderResult(candidate, Outcome(True))
        self._queue.notify()
        outcome = await self._queue.wait_processed(entry_id, wait)
        return OrderResult(await self._after(user_id, order_id, outcome), outcome)

    async def cancel(
        self, user_id: str, order_id: str, *, wait: float = 0.0, ip: str | None = None
    ) -> OrderResult:
        cid = correlation_id.get()
        async with self._locks.hold(order_id):
            async with self._db() as session, session.begin():
                row = await self._owned_row(session, user_id, order_id)
                order = order_from_row(row)
                if order.status.is_final:
                    raise DomainError(
                        f"order is already {order.status}", ErrorCode.ORDER_NOT_CANCELLABLE
                    )
                await add_audit(
                    session,
                    "order.cancelled",
                    user_id=user_id,
                    target=order_id,
                    ip=ip,
                    correlation_id=cid,
                )
                pending = order.status is OrderStatus.PENDING
                if pending:
                    order.transition(OrderStatus.CANCELLED, message="cancelled before submission")
                    copy_order_to_row(order, row)
                    add_event(
                        session,
                        row,
                        "CANCELLED",
                        from_status=OrderStatus.PENDING.value,
                        to_status=OrderStatus.CANCELLED.value,
                        correlation_id=cid,
                    )
                else:
                    add_event(session, row, "CANCEL_REQUESTED", correlation_id=cid)
                    entry_id = await self._queue.enqueue(
                        session,
                        kind=MessageKind.CANCEL,
                        order_id=order_id,
                        priority=Priority.HIGH,
                        correlation_id=cid,
                    )
        if pending:
            self._recorder._notify(order)  # committed: listeners (risk, feed) see it
            return OrderResult(order, Outcome(True))
        self._queue.notify()
        outcome = await self._queue.wait_processed(entry_id, wait)
        return OrderResult(await self._after(user_id, order_id, outcome), outcome)

    @staticmethod
    async def _owned_row(session: AsyncSession, user_id: str, order_id: str) -> OrderRow:
        row = await session.scalar(
            select(OrderRow).where(OrderRow.id == order_id, OrderRow.user_id == user_id)
        )
        if row is None:
            raise OrderNotFound(f"order {order_id!r} not found")
        return row


def request_from_payload(data: dict[str, Any]) -> _BrokerOrder:
    """Build a ``BrokerOrder`` from plain data (API bodies, CLI options)."""
    return _BrokerOrder(**data)
