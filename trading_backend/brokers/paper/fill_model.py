"""When and how an order trades against a quote: the paper exchange's matching rules.

Why a separate, pure module: the same rules must serve the live paper broker (one quote
per tick) and a future backtester (one bar or quote at a time), and they are the part of
the simulator most worth testing exhaustively. Nothing here does I/O, awaits, or keeps
state: the caller passes the order's current parameters and a quote and gets a decision.

Rules (one evaluation per order per quote):

* Stops: a BUY ``SL``/``SL_M`` triggers when ``ltp >= trigger_price``, a SELL when
  ``ltp <= trigger_price``. Once triggered (the caller remembers ``triggered``), ``SL``
  behaves as a LIMIT at its ``price`` and ``SL_M`` as a MARKET, starting with the same quote.
* MARKET fills at the touch (BUY at the ask, SELL at the bid) moved against the order by
  ``slippage_bps`` basis points, rounded to the tick *against* the order (up for a buy,
  down for a sell), so slippage is never accidentally favourable.
* LIMIT BUY fills when ``ask <= price`` at ``min(price, ask)``; LIMIT SELL when
  ``bid >= price`` at ``max(price, bid)``. Limits get no slippage: they never trade through.
* Quantity: at most ``participation`` of the quote's ``tick_volume`` trades per quote,
  rounded down to whole lots but at least one lot whenever the tick had any volume; the
  rest waits for later quotes. The default participation is 0.25 — a quarter of what
  traded keeps one account from "being" the market, while retail-sized orders still fill
  within a tick or two at one-second ticks. Quantities are in units (shares, or contracts
  x lot size), so partial fills of derivatives stay multiples of the lot size.
* IOC: fills what it can on the first evaluation and cancels the remainder.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Protocol

from trading_backend.domain import OrderSide, OrderType, Validity

__all__ = [
    "DEFAULT_PARTICIPATION",
    "FillDecision",
    "FillModel",
    "FillRequest",
    "QuoteLike",
    "ceil_to_tick",
    "floor_to_tick",
]

DEFAULT_PARTICIPATION = Decimal("0.25")
_BPS = Decimal("10000")


class QuoteLike(Protocol):
    """The quote fields the fill model reads (``market.Quote`` satisfies it)."""

    @property
    def ltp(self) -> Decimal: ...

    @property
    def bid(self) -> Decimal: ...

    @property
    def ask(self) -> Decimal: ...

    @property
    def tick_volume(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FillRequest:
    """An order's state as far as matching is concerned."""

    side: OrderSide
    order_type: OrderType
    remaining_quantity: int
    limit_price: Decimal | None = None
    trigger_price: Decimal | None = None
    triggered: bool = False  # a stop that already triggered on an earlier quote
    validity: Validity = Validity.DAY
    lot_size: int = 1
    tick_size: Decimal = Decimal("0.05")


@dataclass(frozen=True, slots=True)
class FillDecision:
    """What happens to the order on this quote."""

    triggered: bool  # the stop's state afterwards (True for non-stop orders)
    quantity: int = 0  # units that trade now; 0 if none
    price: Decimal | None = None  # the execution price when quantity > 0
    cancel_remaining: bool = False  # IOC: what did not trade now is cancelled

    @property
    def fills(self) -> bool:
        return self.quantity > 0


def ceil_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    if tick <= 0:
        return price
    return ((price / tick).to_integral_value(rounding=ROUND_CEILING) * tick).quantize(tick)


def floor_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    if tick <= 0:
        return price
    return ((price / tick).to_integral_value(rounding=ROUND_FLOOR) * tick).quantize(tick)


@dataclass(frozen=True, slots=True)
class FillModel:
    """Matching parameters; see the module docstring for the rules."""

    slippage_bps: Decimal = Decimal("0")
    participation: Decimal = DEFAULT_PARTICIPATION

    def __post_init__(self) -> None:
        if not isinstance(self.slippage_bps, Decimal) or not isinstance(
            self.participation, Decimal
        ):
            raise TypeError("slippage_bps and participation must be Decimal")
        if self.slippage_bps < 0:
            raise ValueError(f"slippage_bps must not be negative, got {self.slippage_bps}")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {self.participation}")

    # -- the pieces ------------------------------------------------------------------------
    @staticmethod
    def is_triggered(request: FillRequest, quote: QuoteLike) -> bool:
        """Whether the order is live for matching on this quote (non-stops always are)."""
        if request.order_type not in (OrderType.SL, OrderType.SL_M) or request.triggered:
            return True
        trigger = request.trigger_price
        if trigger is None:
            raise ValueError(f"{request.order_type} order without a trigger_price")
        if request.side is OrderSide.BUY:
            return quote.ltp >= trigger
        return quote.ltp <= trigger

    def market_price(self, side: OrderSide, quote: QuoteLike, tick: Decimal) -> Decimal:
        """The touch moved against the order by the slippage, on the tick."""
        slip = self.slippage_bps / _BPS
        if side is OrderSide.BUY:
            return ceil_to_tick(quote.ask * (1 + slip), tick)
        return max(floor_to_tick(quote.bid * (1 - slip), tick), tick if tick > 0 else quote.bid)

    def execution_price(self, request: FillRequest, quote: QuoteLike) -> Decimal | None:
        """The price a live (triggered) order trades at now, or None if not marketable."""
        if request.order_type in (OrderType.MARKET, OrderType.SL_M):
            return self.market_price(request.side, quote, request.tick_size)
        limit = request.limit_price
        if limit is None:
            raise ValueError(f"{request.order_type} order without a price")
        if request.side is OrderSide.BUY:
            return min(limit, quote.ask) if quote.ask <= limit else None
        return max(limit, quote.bid) if quote.bid >= limit else None

    def available_quantity(self, quote: QuoteLike, lot_size: int = 1) -> int:
        """Units one order may take from this quote: a share of its volume, whole lots."""
        if quote.tick_volume <= 0:
            return 0
        lot = max(lot_size, 1)
        share = int(
            (Decimal(quote.tick_volume) * self.participation).to_integral_value(ROUND_FLOOR)
        )
        return max(share // lot * lot, lot)

    # -- the decision ----------------------------------------------------------------------
    def evaluate(self, request: FillRequest, quote: QuoteLike) -> FillDecision:
        if request.remaining_quantity <= 0:
            return FillDecision(triggered=True)
        ioc = request.validity is Validity.IOC
        if not self.is_triggered(request, quote):
            return FillDecision(triggered=False, cancel_remaining=ioc)
        price = self.execution_price(request, quote)
        if price is None:
            return FillDecision(triggered=True, cancel_remaining=ioc)
        lot = max(request.lot_size, 1)
        quantity = min(request.remaining_quantity, self.available_quantity(quote, lot))
        if quantity < request.remaining_quantity:
            quantity = quantity // lot * lot
        if quantity <= 0:
            return FillDecision(triggered=True, cancel_remaining=ioc)
        return FillDecision(
            triggered=True,
            quantity=quantity,
            price=price,
            cancel_remaining=ioc and quantity < request.remaining_quantity,
        )
