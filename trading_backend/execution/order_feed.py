"""Live order updates per user, for WebSocket clients and anything else that listens.

The recorder publishes every committed order change here (``publish`` is registered as a
recorder listener); listeners register for one user and only ever see that user's orders.
Publishing is synchronous and never waits on a slow listener: each callback queues the
update and returns (a WebSocket connection's send queue, for one).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from trading_backend.domain import Order

log = structlog.get_logger(__name__)

OrderListener = Callable[[Order], None]


class OrderFeed:
    def __init__(self) -> None:
        self._listeners: dict[str, list[OrderListener]] = {}

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
        for listener in list(self._listeners.get(order.user_id, ())):
            try:
                listener(order)
            except Exception:
                log.exception("order_listener_failed", user_id=order.user_id)
