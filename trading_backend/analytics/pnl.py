"""Live P&L of a set of fills (an account, a strategy, a user): pure arithmetic.

* realised: average-cost, before charges (``domain.Position``: the same figure the
  positions table and the paper broker show);
* unrealised: open quantity x (mark - average cost), the mark being the last price, or
  the instrument's last fill price when the market has no quote for it;
* charges: every fill's;
* day P&L: the risk engine's cash-flow definition (``risk/book.py``), so that the loss
  limits and the analytics agree: ``sells - buys filled today - today's charges + open
  quantity x mark - quantity held at the day's start x reference``, the reference being
  the previous close (else the mark), the day starting at 00:00 IST like the loss limits'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from trading_backend.domain import Exchange, Fill, Position
from trading_backend.domain.money import ZERO

# (symbol, exchange) -> (last price, previous close); None where the market has none.
PriceLookup = Callable[[str, Exchange], tuple[Decimal | None, Decimal | None]]


@dataclass(frozen=True, slots=True)
class PnL:
    realised: Decimal  # before charges
    unrealised: Decimal
    charges: Decimal
    day_pnl: Decimal  # net of today's charges
    open_positions: int
    fills: int

    @property
    def net(self) -> Decimal:
        """Realised plus unrealised, less charges."""
        return self.realised + self.unrealised - self.charges

    def __add__(self, other: PnL) -> PnL:
        return PnL(
            self.realised + other.realised,
            self.unrealised + other.unrealised,
            self.charges + other.charges,
            self.day_pnl + other.day_pnl,
            self.open_positions + other.open_positions,
            self.fills + other.fills,
        )


EMPTY = PnL(ZERO, ZERO, ZERO, ZERO, 0, 0)


def total(parts: Iterable[PnL]) -> PnL:
    result = EMPTY
    for part in parts:
        result = result + part
    return result


def pnl_from_fills(fills: Sequence[Fill], prices: PriceLookup, day_start: datetime) -> PnL:
    """The P&L figures of ``fills`` (any order: they are sorted by time) at ``prices``."""
    positions: dict[tuple[str, str, str], Position] = {}
    last_fill: dict[tuple[str, str, str], Decimal] = {}
    moved_today: dict[tuple[str, str, str], int] = {}
    cash_today = ZERO
    charges_today = ZERO
    for fill in sorted(fills, key=lambda f: f.timestamp):
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        position = positions.get(key)
        if position is None:
            position = positions[key] = Position(fill.symbol, fill.exchange, fill.product_type)
        position.apply(fill)
        last_fill[key] = fill.price
        if fill.timestamp >= day_start:
            signed = fill.quantity * fill.side.sign
            moved_today[key] = moved_today.get(key, 0) + signed
            cash_today -= signed * fill.price
            charges_today += fill.charges
    realised = unrealised = charges = ZERO
    day = cash_today - charges_today
    open_positions = 0
    for key, position in positions.items():
        realised += position.realised_pnl
        charges += position.charges
        last, previous_close = prices(position.symbol, position.exchange)
        mark = last if last is not None else last_fill[key]
        reference = previous_close if previous_close is not None else mark
        if position.quantity:
            open_positions += 1
            unrealised += position.unrealised_pnl(mark)
        held_at_start = position.quantity - moved_today.get(key, 0)
        day += position.quantity * mark - held_at_start * reference
    return PnL(realised, unrealised, charges, day, open_positions, len(fills))
