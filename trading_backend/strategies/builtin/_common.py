"""Helpers shared by the built-in strategies: order bookkeeping in ``ctx.state``.

Every built-in keeps the orders it is waiting on in ``state["orders"]`` (order id → what the
order is for, plus how much of it has been seen filled), so that a restarted strategy still
knows what its working orders mean. Fill handling is by *delta*: an order update (or the
order returned by ``place_order``) is compared with what was seen before, so the same update
delivered twice, or a fill seen both in ``place_order``'s answer and in ``on_order_update``,
counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from trading_backend.domain import Order, OrderStatus
from trading_backend.domain.calendar import IST

ZERO = Decimal("0")


def dec(value: object) -> Decimal:
    """A Decimal from a state value (stored as a string) or a number."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def ist(moment: datetime) -> datetime:
    return moment.astimezone(IST)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """What changed on one tracked order since the last time it was seen."""

    meta: dict[str, Any]  # what the strategy stored when it placed the order
    order: Order
    fill_quantity: int  # newly filled quantity (0 when only the status changed)
    fill_value: Decimal  # value of the newly filled quantity
    final: bool  # the order can no longer trade (and is forgotten)

    @property
    def fill_price(self) -> Decimal:
        return self.fill_value / self.fill_quantity if self.fill_quantity else ZERO

    @property
    def status(self) -> OrderStatus:
        return self.order.status


def track(state: dict[str, Any], order: Order, **meta: Any) -> None:
    """Remember ``order`` (placed by the strategy) with JSON-serialisable ``meta``."""
    orders = state.setdefault("orders", {})
    orders[order.order_id] = {"seen_qty": 0, "seen_value": "0", **meta}


def tracked(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    orders: dict[str, dict[str, Any]] = state.setdefault("orders", {})
    return orders


def observe(state: dict[str, Any], order: Order) -> OrderEvent | None:
    """Update the bookkeeping for ``order``; ``None`` when it is not (or no longer) tracked."""
    orders = tracked(state)
    entry = orders.get(order.order_id)
    if entry is None:
        return None
    seen_qty = int(entry["seen_qty"])
    seen_value = dec(entry["seen_value"])
    value = order.average_price * order.filled_quantity
    qty = max(order.filled_quantity - seen_qty, 0)
    delta_value = value - seen_value if qty else ZERO
    entry["seen_qty"] = max(order.filled_quantity, seen_qty)
    entry["seen_value"] = str(value if qty else seen_value)
    final = order.status.is_final
    meta = {k: v for k, v in entry.items() if k not in ("seen_qty", "seen_value")}
    if final:
        del orders[order.order_id]
    return OrderEvent(meta, order, qty, delta_value, final)


def order_summary(order: Order | None, error: str | None = None) -> dict[str, Any]:
    """A JSON-friendly description of a leg's outcome, for the signal log."""
    if order is None:
        return {"status": "NOT_PLACED", "error": error}
    return {
        "order_id": order.order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "quantity": order.quantity,
        "status": order.status.value,
        "filled_quantity": order.filled_quantity,
        "average_price": str(order.average_price),
        "error": error or order.message or order.error_code,
    }
