"""Executions (trades)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from trading_backend.domain.enums import Exchange, OrderSide, ProductType
from trading_backend.domain.money import ZERO


@dataclass(frozen=True, slots=True)
class Fill:
    trade_id: (
        str  # the broker's trade id: unique per broker account, so fills are never counted twice
    )
    broker_order_id: str
    symbol: str
    exchange: Exchange
    side: OrderSide
    product_type: ProductType
    quantity: int
    price: Decimal
    charges: Decimal = ZERO
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    client_order_id: str | None = None

    @property
    def value(self) -> Decimal:
        return self.price * self.quantity
