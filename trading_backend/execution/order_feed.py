"""Live order updates per user, for WebSocket clients and anything else that listens.

The recorder publishes every committed order change here (``publish`` is registered as a
recorder listener); listeners register for one user and only ever see that user's orders.
Publishing is synchronous and never waits on a slow listener: each callback queues the
update and returns (a WebSocket connection's send queue, for one).

With a distributed event bus (``RedisEventBus``, production mode) the feed spans every
process: ``publish`` delivers to this process's listeners at once and hands the order to
the bus (fire-and-forget, never blocking the recorder); orders published by other processes
(a worker elsewhere executed them) arrive through the bus and are delivered here, each
exactly once. Our own messages, echoed back by Redis, are skipped: they were delivered
when published.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from trading_backend.domain import Order
from trading_backend.execution.events import (
    EVENTS_DROPPED,
    ORDERS,
    Event,
    EventBus,
    order_from_payload,
    order_to_payload,
)

log = structlog.get_logger(__name__)

OrderListener = Callable[[Order], None]


class OrderFeed:
    def __init__(self, bus: EventBus | None = None) -> None:
        """``bus``: where orders go to (and come from) other processes; none, or an
        in-process bus, keeps the feed within this process."""
        self._listeners: dict[str, list[OrderListener]] = {}
        self._bus = bus
        if bus is not None and bus.remote:
            bus.subscribe(ORDERS, self._on_event)

    def subscribe(self, user_id: str, listener: OrderListener) -> Callable[[], None]:
        """Register ``listener`` for ``user_id``'s orders; returns the unsubscribe call."""
        self._listeners.setdefault(user_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(user_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(user_id, None)

        return unsubscribe

    def listeners(self, user_id: str) -> int:
        return len(self._listeners.get(user_id, ()))

    def publish(self, order: Order) -> None:
        self._deliver(order)
        if self._bus is not None and self._bus.remote:
            try:
                payload = order_to_payload(order)
            except Exception:  # a broken order must not break the recorder's commit path
                log.exception("order_event_unencodable", order_id=order.order_id)
                return
            self._bus.publish(ORDERS, payload)

    def _deliver(self, order: Order) -> None:
        for listener in list(self._listeners.get(order.user_id, ())):
            try:
                listener(order)
            except Exception:
                log.exception("order_listener_failed", user_id=order.user_id)

    def _on_event(self, event: Event) -> None:
        """An order event from the bus: deliver other processes' orders to our listeners."""
        assert self._bus is not None
        if event.origin == self._bus.origin:
            return  # ours: delivered in ``publish``
        if event.payload.get("user_id") not in self._listeners:
            return  # nobody here follows that user: not even worth decoding
        try:
            order = order_from_payload(event.payload)
        except ValueError as exc:
            log.warning("order_event_malformed", origin=event.origin, error=str(exc))
            EVENTS_DROPPED.labels(topic=ORDERS, reason="malformed").inc()
            return
        self._deliver(order)
