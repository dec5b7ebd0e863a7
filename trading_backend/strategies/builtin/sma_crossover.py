"""The classic fast/slow simple-moving-average crossover, computed incrementally.

Why a separate built-in when ``momentum`` has a crossover mode: momentum recomputes its
indicators from ``ctx.bars()`` on every bar (and adds an ATR stop), which is fine live and
far too slow for a backtest over a million bars. This one keeps running sums of the last
``fast_period`` and ``slow_period`` closes (exact, in Decimal) and a deque of closes, so a
bar costs O(1) whatever the periods.

Signals follow backtrader's ``CrossOver`` exactly, so the two can be compared trade for
trade: the sign of ``fast SMA - slow SMA`` is remembered as its last non-zero value (the
first value, zero or not, seeds it); a bar crosses *up* when that remembered sign was
negative and the difference is now positive, *down* when it was positive and is now
negative. Comparisons are exact (``fast_sum x slow == slow_sum x fast`` is a tie).

Trading: MARKET orders of ``quantity``, one position at a time. Long only by default: a
cross up opens the long, a cross down closes it. With ``allow_short`` a cross down goes
short and a cross up from short goes long, each with one order for the whole change.
While an order is working no new signal is acted on.

State (``ctx.state``, persisted live): ``position`` (signed filled quantity), ``pending``
(the working order's id) and ``orders`` (order id -> quantity seen filled, while the
order can still trade); a restarted strategy keeps its position. The averages are rebuilt
from the bars it receives: after a start it waits ``slow_period`` bars before its first
signal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from typing import Self

from pydantic import Field, model_validator

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    Exchange,
    Order,
    OrderSide,
    OrderType,
    ProductType,
    Timeframe,
)
from trading_backend.strategies.base import (
    BaseStrategy,
    StrategyContext,
    StrategyParams,
    Subscription,
)
from trading_backend.strategies.builtin._common import ZERO


class SmaCrossoverParams(StrategyParams):
    symbol: str = Field("INFY", min_length=1, description="instrument to trade")
    exchange: Exchange = Exchange.NSE
    timeframe: Timeframe = Field(Timeframe.M15, description="bar timeframe of the averages")
    fast_period: int = Field(10, ge=1, le=1000, description="bars in the fast average")
    slow_period: int = Field(30, ge=2, le=5000, description="bars in the slow average")
    quantity: int = Field(1, ge=1, description="units per position")
    allow_short: bool = Field(False, description="go short on a cross down")
    product_type: ProductType = ProductType.INTRADAY

    @model_validator(mode="after")
    def _fast_below_slow(self) -> Self:
        self.symbol = self.symbol.strip().upper()
        if self.fast_period >= self.slow_period:
            raise ValueError("fast_period must be below slow_period")
        return self


class SmaCrossover(BaseStrategy):
    name = "sma_crossover"
    description = (
        "Buys when the fast simple moving average of closes crosses above the slow one and "
        "sells (or goes short) when it crosses below; incremental, one position at a time."
    )
    category = "equity"
    Params = SmaCrossoverParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        assert isinstance(params, SmaCrossoverParams)
        self.p = params
        self._fast = params.fast_period
        self._slow = params.slow_period
        self._fast_weight = Decimal(params.fast_period)
        self._fast_out = -params.fast_period - 1  # the close leaving the fast window
        self._slow_weight = Decimal(params.slow_period)
        self._closes: deque[Decimal] = deque()
        self._fast_sum = ZERO
        self._slow_sum = ZERO
        self._count = 0  # closes seen while the slow window fills
        self._sign: int | None = None  # last non-zero sign of fast - slow (seeded once)
        self._requests: dict[tuple[OrderSide, int], BrokerOrder] = {}

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    async def on_start(self) -> None:
        s = self.ctx.state
        s.setdefault("position", 0)
        s.setdefault("pending", None)
        s.setdefault("orders", {})

    # -- the indicator -----------------------------------------------------------------------
    def update(self, close: Decimal) -> int:
        """Feed one close; returns +1 for a cross up, -1 for a cross down, else 0."""
        closes = self._closes
        closes.append(close)
        count = self._count = self._count + 1
        fast_sum = self._fast_sum + close
        slow_sum = self._slow_sum + close
        if count > self._fast:
            fast_sum -= closes[-self._fast - 1]
        self._fast_sum = fast_sum
        self._slow_sum = slow_sum
        if count < self._slow:
            return 0
        # Both averages exist: seed the remembered sign, and from now on take the warm path.
        self._sign = self._compare(fast_sum, slow_sum)
        self.update = self._update_warm  # type: ignore[method-assign]
        return 0

    def _update_warm(self, close: Decimal) -> int:
        """``update`` once both windows are full: O(1), two adds, two subtracts and two
        multiplications in Decimal."""
        closes = self._closes
        closes.append(close)
        fast_sum = self._fast_sum + close - closes[self._fast_out]
        slow_sum = self._slow_sum + close - closes.popleft()
        self._fast_sum = fast_sum
        self._slow_sum = slow_sum
        left = fast_sum * self._slow_weight  # the sign of fast_sum / fast - slow_sum / slow
        right = slow_sum * self._fast_weight
        sign = 1 if left > right else -1 if left < right else 0
        previous = self._sign
        if sign == 0 or sign == previous:
            return 0
        self._sign = sign
        return sign if previous == -sign else 0

    def _compare(self, fast_sum: Decimal, slow_sum: Decimal) -> int:
        """The sign of fast_sum / fast - slow_sum / slow, exactly: cross-multiplied."""
        left = fast_sum * self._slow_weight
        right = slow_sum * self._fast_weight
        return 1 if left > right else -1 if left < right else 0

    # -- trading ----------------------------------------------------------------------------
    async def on_bar(self, bar: Bar) -> None:
        p = self.p
        if (
            bar.symbol != p.symbol
            or bar.exchange is not p.exchange
            or bar.timeframe is not p.timeframe
        ):
            return
        cross = self.update(bar.close)
        if not cross:
            return
        state = self.ctx.state
        if state["pending"]:
            return
        if cross > 0:
            target = p.quantity
        else:
            target = -p.quantity if p.allow_short else 0
        change = target - int(state["position"])
        if change:
            side = OrderSide.BUY if change > 0 else OrderSide.SELL
            await self._place(side, abs(change), "cross_up" if cross > 0 else "cross_down")

    async def _place(self, side: OrderSide, quantity: int, reason: str) -> None:
        p = self.p
        state = self.ctx.state
        await self.ctx.log("signal", {"action": side.value, "quantity": quantity, "reason": reason})
        request = self._requests.get((side, quantity))
        if request is None:  # requests are never changed once made: build each one once
            request = self._requests[(side, quantity)] = BrokerOrder(
                symbol=p.symbol,
                exchange=p.exchange,
                side=side,
                order_type=OrderType.MARKET,
                product_type=p.product_type,
                quantity=quantity,
            )
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            await self.ctx.log("error", {"event": "order_refused", "error": exc.message})
            return
        state["pending"] = order.order_id
        state["orders"][order.order_id] = 0
        await self.on_order_update(order)

    async def on_order_update(self, order: Order) -> None:
        """Count each order's fills once, by the change in its filled quantity (an update
        seen twice, or both in ``place_order``'s answer and here, counts once)."""
        state = self.ctx.state
        orders = state["orders"]
        seen = orders.get(order.order_id)
        if seen is None:
            return
        filled = order.filled_quantity
        if filled > seen:
            change = filled - seen
            state["position"] += change if order.side is OrderSide.BUY else -change
            orders[order.order_id] = filled
        if order.status.is_final:
            del orders[order.order_id]
            if state["pending"] == order.order_id:
                state["pending"] = None
