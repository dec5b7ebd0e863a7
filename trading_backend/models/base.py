"""Seed import path for the order enums. The implementation lives in ``trading_backend.domain``."""

from trading_backend.domain.enums import (
    Exchange,
    InstrumentType,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)

__all__ = [
    "Exchange",
    "InstrumentType",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "ProductType",
    "Validity",
]
