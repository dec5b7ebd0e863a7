"""Net positions built from fills, average-cost accounting."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from trading_backend.domain.enums import Exchange, OrderSide, ProductType
from trading_backend.domain.fills import Fill
from trading_backend.domain.money import ZERO


@dataclass(slots=True)
class Position:
    symbol: str
    exchange: Exchange
    product_type: ProductType
    quantity: int = 0  # net: positive long, negative short
    average_price: Decimal = ZERO  # average cost of the open quantity
    realised_pnl: Decimal = ZERO  # before charges
    charges: Decimal = ZERO
    buy_quantity: int = 0
    sell_quantity: int = 0
    buy_value: Decimal = ZERO
    sell_value: Decimal = ZERO

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.exchange.value, self.symbol, self.product_type.value)

    def apply(self, fill: Fill) -> None:
        """Apply one fill. Reducing trades realise P&L against the average cost;
        a trade that crosses zero realises the closed part and opens the rest at its price."""
        signed = fill.quantity * fill.side.sign
        if fill.side is OrderSide.BUY:
            self.buy_quantity += fill.quantity
            self.buy_value += fill.value
        else:
            self.sell_quantity += fill.quantity
            self.sell_value += fill.value
        self.charges += fill.charges
        if self.quantity == 0 or (self.quantity > 0) == (signed > 0):
            total = abs(self.quantity) + fill.quantity
            self.average_price = (
                self.average_price * abs(self.quantity) + fill.price * fill.quantity
            ) / total
            self.quantity += signed
            return
        closing = min(abs(self.quantity), fill.quantity)
        direction = 1 if self.quantity > 0 else -1
        self.realised_pnl += (fill.price - self.average_price) * closing * direction
        self.quantity += signed
        if self.quantity == 0:
            self.average_price = ZERO
        elif (self.quantity > 0) != (direction > 0):
            # Flipped through zero: the remainder is a new position at the fill price.
            self.average_price = fill.price

    def unrealised_pnl(self, last_price: Decimal) -> Decimal:
        return (last_price - self.average_price) * self.quantity

    def total_pnl(self, last_price: Decimal) -> Decimal:
        """Realised plus unrealised, net of charges."""
        return self.realised_pnl + self.unrealised_pnl(last_price) - self.charges
