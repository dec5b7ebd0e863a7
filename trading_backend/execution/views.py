"""Plain-dict views of orders and trades, shared by the Python API, REST API and CLI."""

from __future__ import annotations

from typing import Any

from trading_backend.domain import Order
from trading_backend.storage.models import TradeRow


def order_to_dict(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id or order.order_id,
        "config_id": order.config_id,
        "symbol": order.symbol,
        "exchange": order.exchange.value,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "product_type": order.product_type.value,
        "validity": order.validity.value,
        "quantity": order.quantity,
        "price": order.price,
        "trigger_price": order.trigger_price,
        "tag": order.tag,
        "status": order.status.value,
        "filled_quantity": order.filled_quantity,
        "average_price": order.average_price,
        "broker_order_id": order.broker_order_id,
        "error_code": order.error_code,
        "message": order.message,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
    }


def trade_to_dict(row: TradeRow) -> dict[str, Any]:
    return {
        "trade_id": row.trade_id,
        "order_id": row.order_id,
        "broker_order_id": row.broker_order_id,
        "config_id": row.config_id,
        "symbol": row.symbol,
        "exchange": row.exchange,
        "side": row.side,
        "product_type": row.product_type,
        "quantity": row.quantity,
        "price": row.price,
        "charges": row.charges,
        "executed_at": row.executed_at,
    }
