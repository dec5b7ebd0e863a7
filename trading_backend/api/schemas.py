"""Request and response bodies. Requests take exact decimals; responses give amounts as
JSON numbers (the server computes in Decimal and converts only at this edge)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trading_backend.domain import (
    Exchange,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)

Price = Decimal


class UserOut(BaseModel):
    user_id: str
    username: str
    role: str


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker: str = Field(min_length=1, max_length=32, examples=["paper"])
    name: str = Field(min_length=1, max_length=100, examples=["Paper account"])
    config_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="optional id of your choosing (generated otherwise)",
    )
    credentials: dict[str, str] | None = None
    settings: dict[str, Any] | None = None


class ConfigOut(BaseModel):
    config_id: str
    broker: str
    name: str
    settings: dict[str, Any]
    credentials: dict[str, str] = Field(description="masked: secrets are never returned")
    created_at: datetime


class AddSessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_id: str = Field(min_length=1, max_length=64)


class SessionOut(BaseModel):
    session_id: str
    config_id: str
    broker_name: str
    health_status: str
    error_count: int
    created_at: datetime
    last_activity: datetime


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str = Field(min_length=1, max_length=64, examples=["TCS"])
    exchange: Exchange = Exchange.NSE
    side: OrderSide
    order_type: OrderType
    product_type: ProductType = ProductType.DELIVERY
    quantity: int = Field(gt=0, le=10_000_000)
    price: Decimal | None = Field(default=None, gt=0, max_digits=20, decimal_places=8)
    trigger_price: Decimal | None = Field(default=None, gt=0, max_digits=20, decimal_places=8)
    validity: Validity = Validity.DAY
    tag: str | None = Field(default=None, max_length=20)
    client_order_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="your idempotency key: placing again with it returns the first order",
    )


class PlaceOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_id: str = Field(min_length=1, max_length=64)
    order: OrderIn
    priority: Literal["NORMAL", "LOW"] = Field(
        default="NORMAL",
        description="LOW for bulk work that may wait behind ordinary orders; HIGH is kept"
        " for cancels and square-offs",
    )
    intentional: bool = Field(
        default=False,
        description="a repeat of a recent identical order on purpose: skip the risk"
        " engine's duplicate check",
    )


class ModifyOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity: int | None = Field(default=None, gt=0, le=10_000_000)
    price: Decimal | None = Field(default=None, gt=0, max_digits=20, decimal_places=8)
    trigger_price: Decimal | None = Field(default=None, gt=0, max_digits=20, decimal_places=8)
    order_type: OrderType | None = None


class OrderOut(BaseModel):
    order_id: str
    client_order_id: str
    config_id: str
    symbol: str
    exchange: str
    side: str
    order_type: str
    product_type: str
    validity: str
    quantity: int
    price: float | None
    trigger_price: float | None
    tag: str | None
    status: OrderStatus
    filled_quantity: int
    average_price: float
    broker_order_id: str | None
    error_code: str | None
    message: str | None
    created_at: datetime
    updated_at: datetime


class OrderEventOut(BaseModel):
    event_type: str
    from_status: str | None
    to_status: str | None
    data: dict[str, Any]
    correlation_id: str | None
    created_at: datetime


class OrderDetailOut(OrderOut):
    events: list[OrderEventOut]


class TradeOut(BaseModel):
    trade_id: str
    order_id: str
    broker_order_id: str
    config_id: str
    symbol: str
    exchange: str
    side: str
    product_type: str
    quantity: int
    price: float
    charges: float
    executed_at: datetime


class PositionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    symbol: str
    exchange: str
    product_type: str
    quantity: int
    average_price: float
    last_price: float | None = None
    pnl: float
    realised_pnl: float | None = None
    unrealised_pnl: float | None = None


class PositionsOut(BaseModel):
    config_id: str
    positions: list[PositionOut]


class BalanceOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    config_id: str
    available_cash: float
    buying_power: float
    used_margin: float
    total_balance: float


class MarketDataOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    symbol: str
    exchange: str
    ltp: float
    change: float
    change_percent: float | None = None


class MessageOut(BaseModel):
    message: str


class ErrorOut(BaseModel):
    error_code: str
    message: str


def numbers(value: Any) -> Any:
    """Decimals to JSON numbers, recursively (for dict-shaped broker data)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value
