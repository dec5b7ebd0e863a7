"""Pure domain model: instruments, orders and their state machine, fills, positions, money.

Nothing in this package performs I/O or imports other parts of ``trading_backend``;
every other layer depends on it, never the reverse.
"""

from trading_backend.domain.balances import Balance
from trading_backend.domain.bars import Bar, Timeframe
from trading_backend.domain.enums import (
    Exchange,
    InstrumentType,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)
from trading_backend.domain.errors import DomainError, ErrorCode, IllegalTransition, InvalidOrder
from trading_backend.domain.fills import Fill
from trading_backend.domain.instruments import Instrument
from trading_backend.domain.orders import BrokerOrder, Order
from trading_backend.domain.positions import Position

__all__ = [
    "Balance",
    "Bar",
    "BrokerOrder",
    "DomainError",
    "ErrorCode",
    "Exchange",
    "Fill",
    "IllegalTransition",
    "Instrument",
    "InstrumentType",
    "InvalidOrder",
    "Order",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "Position",
    "ProductType",
    "Timeframe",
    "Validity",
]
