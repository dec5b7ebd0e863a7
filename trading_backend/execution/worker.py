"""Order workers: take queue entries and carry them out at the broker.

At most once: a worker moves an order PENDING -> SUBMITTED in a committed transaction
*before* calling the broker, and only the worker that made that move calls ``place_order``.
An entry redelivered after a crash finds the order no longer PENDING and never resends it;
reconciliation asks the broker what happened instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.brokers.base import BrokerError, BrokerOrderState, BrokerTimeout
from trading_backend.brokers.sessions import BrokerSession, BrokerSessionManager
from trading_backend.domain import (
    DomainError,
    ErrorCode,
    Fill,
    Order,
    OrderStatus,
    OrderType,
)
from trading_backend.execution.locks import KeyedLocks
from trading_backend.execution.queue import MessageKind, OrderQueue, Outcome, QueueMessage
from trading_backend.execution.recorder import OrderRecorder
from trading_backend.logging import correlation_id
from trading_backend.storage.models import OrderRow
from trading_backend.storage.repositories import add_event, copy_order_to_row, order_from_row

log = structlog.get_logger(__name__)

# -- metrics (issue #7): what a worker process shows on its metrics port (METRICS_PORT)
ENTRIES_EXECUTED = Counter(
    "trading_backend_orders_executed_total",
    "Queue entries a worker carried out, by kind (place, cancel, modify) and outcome: ok, "
    "refused (finished without success: broker rejection, order gone...) or error (raised; "
    "the entry was released for another attempt)",
    ["kind", "outcome"],
)
BROKER_CALL_SECONDS = Histogram(
    "trading_backend_broker_call_seconds",
    "Seconds a worker's order call to the broker took (timeouts and errors included)",
    ["operation"],
)
# -- end metrics

RECONCILE_STATUSES = (
    OrderStatus.SUBMITTED.value,
    OrderStatus.UNKNOWN.value,
    OrderStatus.OPEN.value,
    OrderStatus.PARTIALLY_FILLED.value,
)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class OrderWorker:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        queue: OrderQueue,
        sessions: BrokerSessionManager,
        recorder: OrderRecorder,
        locks: KeyedLocks,
        *,
        worker_id: str | None = None,
        concurrency: int = 4,
        broker_timeout: float = 10.0,
    ) -> None:
        self._db = db
        self._queue = queue
        self._sessions = sessions
        self._recorder = recorder
        self._locks = locks
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = max(1, concurrency)
        self.broker_timeout = broker_timeout
        self.processed = 0
        self.in_flight = 0  # entries being carried out right now (graceful shutdown waits)

    # -- loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        log.info("worker_started", worker_id=self.worker_id)
        while stop is None or not stop.is_set():
            handled = await self.run_once()
            if handled == 0:
                await self._queue.wait_for_work(timeout=1.0)

    async def run_once(self) -> int:
        """Claim one batch and carry it out; returns how many entries were handled."""
        messages = await self._queue.claim(self.worker_id, self.concurrency)
        if not messages:
            return 0
        # Entries for one order run in queue order; different orders run concurrently.
        groups: dict[str, list[QueueMessage]] = defaultdict(list)
        for message in messages:
            groups[message.order_id].append(message)
        await asyncio.gather(*(self._run_group(group) for group in groups.values()))
        return len(messages)

    async def drain(self) -> int:
        """Process until the queue is empty (tests, the CLI and graceful shutdown)."""
        total = 0
        while handled := await self.run_once():
            total += handled
        return total

    async def _run_group(self, messages: list[QueueMessage]) -> None:
        for message in messages:
            await self._handle(message)

    async def _handle(self, message: QueueMessage) -> None:
        token = correlation_id.set(message.correlation_id)
        self.in_flight += 1
        try:
            outcome = await self.process(message)
        except Exception as exc:
            log.exception("queue_entry_failed", entry_id=message.entry_id, kind=message.kind)
            ENTRIES_EXECUTED.labels(message.kind, "error").inc()
            await self._queue.release(message, f"{type(exc).__name__}: {exc}")
        else:
            await self._queue.ack(message, outcome)
            ENTRIES_EXECUTED.labels(message.kind, "ok" if outcome.ok else "refused").inc()
            self.processed += 1
        finally:
            self.in_flight -= 1
            correlation_id.reset(token)

    async def process(self, message: QueueMessage) -> Outcome:
        if message.kind == MessageKind.PLACE:
            return await self._place(message.order_id, message.payload)
        if message.kind == MessageKind.CANCEL:
            return await self._cancel(message.order_id)
        if message.kind == MessageKind.MODIFY:
            return await self._modify(message.order_id, message.payload)
        log.error("unknown_queue_entry", kind=message.kind)
        return Outcome(False, ErrorCode.SYSTEM_ERROR.value, f"unknown entry kind {message.kind}")

    # -- helpers -----------------------------------------------------------------------------
    async def _load(self, order_id: str) -> Order | None:
        async with self._db() as session:
            row = await session.get(OrderRow, order_id)
            return order_from_row(row) if row is not None else None

    async def _transition(
        self,
        order_id: str,
        expected: tuple[OrderStatus, ...],
        new: OrderStatus,
        event_type: str,
        *,
        error_code: str | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Order | None:
        """Move the order to ``new`` if it is still in one of ``expected``; else do nothing."""
        async with self._locks.hold(order_id):
            async with self._db() as session, session.begin():
                row = await session.get(OrderRow, order_id)
                if row is None:
                    return None
                order = order_from_row(row)
                if order.status not in expected:
                    return None
                before = order.status
                order.transition(new, error_code=error_code, message=message)
                copy_order_to_row(order, row)
                add_event(
                    session,
                    row,
                    event_type,
                    from_status=before.value,
                    to_status=new.value,
                    data=data
                    or ({"error_code": error_code, "message": message} if error_code else {}),
                    correlation_id=correlation_id.get(),
                )
        self._recorder._notify(order)
        return order

    async def _session_for(self, order: Order) -> BrokerSession:
        return await self._sessions.open(order.user_id, order.config_id)

    # -- place -------------------------------------------------------------------------------
    async def _place(self, order_id: str, payload: dict[str, Any]) -> Outcome:
        user_id, config_id = payload.get("user_id"), payload.get("config_id")
        if not (user_id and config_id):  # an entry written without them: look them up
            found = await self._load(order_id)
            if found is None:
                return Outcome(False, ErrorCode.ORDER_NOT_FOUND.value, "order vanished")
            user_id, config_id = found.user_id, found.config_id
        try:
            session = await self._sessions.open(str(user_id), str(config_id))
        except DomainError as exc:
            rejected = await self._transition(
                order_id,
                (OrderStatus.PENDING,),
                OrderStatus.REJECTED,
                "REJECTED",
                error_code=exc.code.value,
                message=exc.message,
            )
            if rejected is None:
                return await self._already_handled(order_id)
            return Outcome(False, exc.code.value, exc.message, order=rejected)
        # The point of no return, committed before the broker is called: only the worker
        # that moves the order out of PENDING ever sends it.
        submitted = await self._transition(
            order_id,
            (OrderStatus.PENDING,),
            OrderStatus.SUBMITTED,
            "SUBMITTED",
            data={"worker_id": self.worker_id, "session_id": session.session_id},
        )
        if submitted is None:
            return await self._already_handled(order_id)
        request = submitted.to_request()
        request.client_order_id = submitted.order_id  # the broker-side tag we reconcile by
        try:
            with BROKER_CALL_SECONDS.labels("place").time():
                broker_order_id = await asyncio.wait_for(
                    session.broker.place_order(request), self.broker_timeout
                )
        except (BrokerTimeout, TimeoutError) as exc:
            return await self._fate_unknown(session, order_id, exc)
        except BrokerError as exc:
            if exc.code is ErrorCode.AUTH_ERROR:
                self._sessions.record_error(session, exc)
            rejected = await self._transition(
                order_id,
                (OrderStatus.SUBMITTED,),
                OrderStatus.REJECTED,
                "REJECTED",
                error_code=exc.code.value,
                message=exc.message,
            )
            return Outcome(False, exc.code.value, exc.message, order=rejected)
        except Exception as exc:  # an adapter bug: the fate is unknown
            log.exception("place_order_crashed", order_id=order_id)
            return await self._fate_unknown(session, order_id, exc)
        session.touch()
        final = await self._acknowledge(order_id, broker_order_id)
        if final is not None and final.status is OrderStatus.REJECTED:
            return Outcome(False, final.error_code, final.message, order=final)
        return Outcome(True, order=final)

    async def _already_handled(self, order_id: str) -> Outcome:
        """Cancelled while queued, or redelivered after a crash: never send twice."""
        order = await self._load(order_id)
        if order is None:
            return Outcome(False, ErrorCode.ORDER_NOT_FOUND.value, "order vanished")
        return Outcome(
            order.status not in (OrderStatus.REJECTED, OrderStatus.CANCELLED),
            order.error_code,
            f"order already {order.status.value}",
        )

    async def _acknowledge(self, order_id: str, broker_order_id: str) -> Order | None:
        """Record the broker's order id and SUBMITTED -> OPEN, unless updates got there first."""
        async with self._locks.hold(order_id):
            async with self._db() as session, session.begin():
                row = await session.get(OrderRow, order_id)
                if row is None:
                    return None
                order = order_from_row(row)
                before = order.status
                if order.broker_order_id is None:
                    order.broker_order_id = broker_order_id
                if order.status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN):
                    order.transition(OrderStatus.OPEN)
                if order.status is before and row.broker_order_id == broker_order_id:
                    return order
                copy_order_to_row(order, row)
                add_event(
                    session,
                    row,
                    "ACKNOWLEDGED",
                    from_status=before.value,
                    to_status=order.status.value,
                    data={"broker_order_id": broker_order_id},
                    correlation_id=correlation_id.get(),
                )
        self._recorder._notify(order)
        return order

    async def _fate_unknown(
        self, session: BrokerSession, order_id: str, error: BaseException
    ) -> Outcome:
        log.warning("order_fate_unknown", order_id=order_id, error=type(error).__name__)
        self._sessions.record_error(session, Exception(str(error)))
        await self._transition(
            order_id,
            (OrderStatus.SUBMITTED,),
            OrderStatus.UNKNOWN,
            "UNKNOWN",
            error_code=ErrorCode.TIMEOUT.value,
            message="no answer from the broker; reconciling, not resending",
        )
        try:
            await self.reconcile_order(order_id)
        except Exception:
            log.exception("reconcile_after_timeout_failed", order_id=order_id)
        order = await self._load(order_id)
        ok = order is not None and order.status not in (
            OrderStatus.UNKNOWN,
            OrderStatus.REJECTED,
        )
        return Outcome(
            ok, None if ok else ErrorCode.TIMEOUT.value, None if ok else "order fate unknown"
        )

    # -- cancel and modify ------------------------------------------------------------------
    async def _working_order(
        self, order_id: str, action: str
    ) -> tuple[Order | None, Outcome | None]:
        order = await self._load(order_id)
        if order is None:
            return None, Outcome(False, ErrorCode.ORDER_NOT_FOUND.value, "order vanished")
        code = (
            ErrorCode.ORDER_NOT_CANCELLABLE
            if action == "cancel"
            else ErrorCode.ORDER_NOT_MODIFIABLE
        )
        if order.status.is_final:
            return None, Outcome(False, code.value, f"order already {order.status.value}")
        if order.broker_order_id is None:
            return None, Outcome(
                False, code.value, "the broker has not acknowledged the order yet; try again"
            )
        return order, None

    async def _cancel(self, order_id: str) -> Outcome:
        order, refusal = await self._working_order(order_id, "cancel")
        if order is None:
            await self._record_refusal(order_id, "CANCEL_REJECTED", refusal)
            return refusal  # type: ignore[return-value]
        assert order.broker_order_id is not None
        session = await self._session_for(order)
        try:
            with BROKER_CALL_SECONDS.labels("cancel").time():
                await session.broker.cancel_order(order.broker_order_id)
        except BrokerError as exc:
            outcome = Outcome(False, exc.code.value, exc.message)
            await self._record_refusal(order_id, "CANCEL_REJECTED", outcome)
            await self._refresh_from_broker(session, order)
            return outcome
        session.touch()
        await self._refresh_from_broker(session, order)
        return Outcome(True)

    async def _modify(self, order_id: str, payload: dict[str, Any]) -> Outcome:
        order, refusal = await self._working_order(order_id, "modify")
        if order is None:
            await self._record_refusal(order_id, "MODIFY_REJECTED", refusal)
            return refusal  # type: ignore[return-value]
        assert order.broker_order_id is not None
        changes: dict[str, Any] = {}
        if payload.get("quantity") is not None:
            changes["quantity"] = int(payload["quantity"])
        for key in ("price", "trigger_price"):
            if payload.get(key) is not None:
                changes[key] = Decimal(payload[key])
        if payload.get("order_type") is not None:
            changes["order_type"] = OrderType(payload["order_type"])
        session = await self._session_for(order)
        try:
            with BROKER_CALL_SECONDS.labels("modify").time():
                await session.broker.modify_order(order.broker_order_id, **changes)
        except BrokerError as exc:
            outcome = Outcome(False, exc.code.value, exc.message)
            await self._record_refusal(order_id, "MODIFY_REJECTED", outcome)
            await self._refresh_from_broker(session, order)
            return outcome
        session.touch()
        mirrored: Order | None = None
        async with self._locks.hold(order_id):
            async with self._db() as db, db.begin():
                row = await db.get(OrderRow, order_id)
                if row is not None:
                    current = order_from_row(row)
                    try:
                        current.modify(**changes)
                    except DomainError as exc:
                        log.warning("modify_not_mirrored", order_id=order_id, error=exc.message)
                    else:
                        copy_order_to_row(current, row)
                        add_event(
                            db,
                            row,
                            "MODIFIED",
                            data={k: str(v) for k, v in changes.items()},
                            correlation_id=correlation_id.get(),
                        )
                        mirrored = current
        if mirrored is not None:
            self._recorder._notify(mirrored)  # committed: listeners (risk, feed) see it
        await self._refresh_from_broker(session, order)
        return Outcome(True)

    async def _record_refusal(
        self, order_id: str, event_type: str, outcome: Outcome | None
    ) -> None:
        if outcome is None:
            return
        async with self._db() as session, session.begin():
            row = await session.get(OrderRow, order_id)
            if row is not None:
                add_event(
                    session,
                    row,
                    event_type,
                    data={"error_code": outcome.error_code, "message": outcome.message},
                    correlation_id=correlation_id.get(),
                )

    async def _refresh_from_broker(self, session: BrokerSession, order: Order) -> None:
        if order.broker_order_id is None:
            return
        try:
            state = await session.broker.get_order(order.broker_order_id)
        except BrokerError:
            return
        fills = [
            f
            for f in await session.broker.get_trades()
            if f.broker_order_id == state.broker_order_id
        ]
        await self._recorder.apply(order.order_id, state, fills, event_type="BROKER_SYNC")

    # -- reconciliation ---------------------------------------------------------------------
    async def reconcile_order(self, order_id: str) -> None:
        order = await self._load(order_id)
        if order is None or order.status.is_final or order.status is OrderStatus.PENDING:
            return
        session = await self._session_for(order)
        state: BrokerOrderState | None
        if order.broker_order_id:
            state = await session.broker.get_order(order.broker_order_id)
        else:
            state = await session.broker.find_order_by_client_id(order.order_id)
        if state is None:
            if order.status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN):
                await self._transition(
                    order_id,
                    (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN),
                    OrderStatus.REJECTED,
                    "RECONCILED",
                    error_code=ErrorCode.BROKER_UNAVAILABLE.value,
                    message="the broker has no such order: it never arrived; not resent",
                )
            return
        fills: list[Fill] = [
            f
            for f in await session.broker.get_trades()
            if f.broker_order_id == state.broker_order_id
        ]
        await self._recorder.apply(order_id, state, fills, event_type="RECONCILED")

    async def reconcile_all(self) -> int:
        """Bring every order that may still move in line with its broker (start-up)."""
        async with self._db() as session:
            order_ids = (
                await session.scalars(
                    select(OrderRow.id).where(OrderRow.status.in_(RECONCILE_STATUSES))
                )
            ).all()
        for order_id in order_ids:
            try:
                await self.reconcile_order(order_id)
            except DomainError as exc:
                log.warning("reconcile_failed", order_id=order_id, error=exc.message)
            except Exception:
                log.exception("reconcile_crashed", order_id=order_id)
        if order_ids:
            log.info("reconciled_orders", count=len(order_ids))
        return len(order_ids)
