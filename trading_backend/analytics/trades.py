"""Closed trades (round trips) matched FIFO from fills, and the statistics over them.

A round trip is one FIFO match of an opening lot against the fill that closes it: buying
10 then 5 and selling 15 gives two round trips (10 and 5), each with its own entry price,
so every price stays exact and no averaged price is invented. A fill that crosses zero
(long 10, sell 15) closes the long and opens a short of 5 at the same price.

Charges are shared out pro rata by quantity: a fill's charges go to the round trips that
use it, the last share taking the remainder, so the charges of all round trips plus those
of lots still open add up exactly to the charges of the fills.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from trading_backend.domain import Exchange, Fill, OrderSide, ProductType
from trading_backend.domain.money import ZERO

LONG = "LONG"
SHORT = "SHORT"


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """A closed trade: ``quantity`` opened at ``entry_price`` and closed at ``exit_price``."""

    symbol: str
    exchange: Exchange
    direction: str  # "LONG" | "SHORT"
    quantity: int
    entry_time: datetime
    entry_price: Decimal
    exit_time: datetime
    exit_price: Decimal
    gross_pnl: Decimal
    charges: Decimal  # the entry fill's and the exit fill's shares
    net_pnl: Decimal
    product_type: ProductType = ProductType.INTRADAY


@dataclass(slots=True)
class _Lot:
    """What is left of one fill's quantity (and its charges) after earlier matches."""

    fill: Fill
    quantity: int
    charges: Decimal

    def take(self, quantity: int) -> Decimal:
        """Consume ``quantity`` and return its share of the charges (remainder last)."""
        if quantity >= self.quantity:
            share = self.charges
        else:
            exact = self.charges * quantity / self.quantity
            share = exact.quantize(_quantum(self.fill.charges), rounding=ROUND_HALF_EVEN)
        self.quantity -= quantity
        self.charges -= share
        return share


def _quantum(charges: Decimal) -> Decimal:
    """The step shares are rounded to: the fill's own precision, at least the paisa."""
    exponent = charges.as_tuple().exponent
    return Decimal(1).scaleb(min(exponent, -2) if isinstance(exponent, int) else -2)


_Key = tuple[Exchange, str, ProductType]


def round_trips(fills: Sequence[Fill]) -> list[RoundTrip]:
    """Match fills FIFO per (exchange, symbol, product) into closed round trips.

    Fills are taken in time order (a stable sort, so fills with equal timestamps keep
    the caller's order). Round trips come out in the order they were closed.
    """
    books: dict[_Key, deque[_Lot]] = {}
    result: list[RoundTrip] = []
    for fill in sorted(fills, key=lambda f: f.timestamp):
        if fill.quantity <= 0:
            raise ValueError(f"fill {fill.trade_id} has a non-positive quantity")
        book = books.setdefault((fill.exchange, fill.symbol, fill.product_type), deque())
        incoming = _Lot(fill, fill.quantity, fill.charges)
        while incoming.quantity and book and book[0].fill.side is not fill.side:
            lot = book[0]
            matched = min(lot.quantity, incoming.quantity)
            charges = lot.take(matched) + incoming.take(matched)
            result.append(_close(lot.fill, fill, matched, charges))
            if lot.quantity == 0:
                book.popleft()
        if incoming.quantity:
            book.append(incoming)
    return result


def _close(entry: Fill, exit_: Fill, quantity: int, charges: Decimal) -> RoundTrip:
    long = entry.side is OrderSide.BUY
    gross = (exit_.price - entry.price) * quantity * (1 if long else -1)
    return RoundTrip(
        symbol=entry.symbol,
        exchange=entry.exchange,
        direction=LONG if long else SHORT,
        quantity=quantity,
        entry_time=entry.timestamp,
        entry_price=entry.price,
        exit_time=exit_.timestamp,
        exit_price=exit_.price,
        gross_pnl=gross,
        charges=charges,
        net_pnl=gross - charges,
        product_type=entry.product_type,
    )


@dataclass(frozen=True, slots=True)
class TradeStats:
    """Statistics over closed round trips, all on net P&L (after charges).

    A win has net P&L > 0, a loss < 0; a trade that nets exactly zero is neither but
    still counts in ``trades`` and in the averages over all trades.
    """

    trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None  # winning / trades
    profit_factor: float | None  # gross wins / |gross losses|; None without losses
    expectancy: Decimal | None  # win_rate * average_win + loss_rate * average_loss
    expectancy_ratio: float | None  # expectancy / |average_loss| (in units of the loss)
    average_trade: Decimal | None
    average_win: Decimal | None
    average_loss: Decimal | None  # negative
    largest_win: Decimal | None
    largest_loss: Decimal | None
    gross_pnl: Decimal
    net_pnl: Decimal
    charges: Decimal


def trade_stats(trips: Sequence[RoundTrip]) -> TradeStats:
    nets = [t.net_pnl for t in trips]
    wins = [p for p in nets if p > 0]
    losses = [p for p in nets if p < 0]
    n = len(nets)
    win_sum = sum(wins, ZERO)
    loss_sum = sum(losses, ZERO)
    average_win = win_sum / len(wins) if wins else None
    average_loss = loss_sum / len(losses) if losses else None
    expectancy: Decimal | None = None
    if n:
        # Written the textbook way, it is the same number as the average trade.
        expectancy = (win_sum + loss_sum) / n
    return TradeStats(
        trades=n,
        winning_trades=len(wins),
        losing_trades=len(losses),
        win_rate=len(wins) / n if n else None,
        profit_factor=float(win_sum / -loss_sum) if losses else None,
        expectancy=expectancy,
        expectancy_ratio=(
            float(expectancy / -average_loss)
            if expectancy is not None and average_loss is not None
            else None
        ),
        average_trade=sum(nets, ZERO) / n if n else None,
        average_win=average_win,
        average_loss=average_loss,
        largest_win=max(wins) if wins else None,
        largest_loss=min(losses) if losses else None,
        gross_pnl=sum((t.gross_pnl for t in trips), ZERO),
        net_pnl=sum(nets, ZERO),
        charges=sum((t.charges for t in trips), ZERO),
    )
