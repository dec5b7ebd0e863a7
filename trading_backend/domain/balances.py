"""Account funds as brokers report them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal

from trading_backend.domain.money import ZERO


@dataclass(frozen=True, slots=True)
class Balance:
    available_cash: Decimal  # free to block for new orders
    buying_power: Decimal  # what available cash can buy at intraday leverage
    used_margin: Decimal  # blocked by open positions and working orders
    total_balance: Decimal  # cash ledger plus unrealised P&L
    realised_pnl: Decimal = ZERO
    unrealised_pnl: Decimal = ZERO
    charges: Decimal = ZERO
    currency: str = "INR"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
