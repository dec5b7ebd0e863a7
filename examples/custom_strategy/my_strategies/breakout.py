"""Opening-range breakout: an example of a strategy that lives outside trading-backend.

The rules, once per session of one NSE equity:

* the bars that *start* in the first ``range_minutes`` after 09:15 IST make up the opening
  range: its high and low;
* after that, the first bar that *closes* above the range high buys ``quantity`` shares
  (below the range low sells short, when ``allow_short``). One entry a day, even if it is
  stopped out; a range whose high equals its low gives no trade;
* a long position is sold when a bar closes at or below the stop (the range low) or at or
  above the target (range high + ``target_multiple`` x the range height), or on the first
  bar ending at or after ``exit_time``; a short mirrors it. A position still open at the
  next session (the process was down at ``exit_time``) is closed on that session's first bar;
* orders are MARKET; decisions are taken on bar closes only (never on ticks).

It deliberately imports nothing but the public strategy API (``trading_backend.strategies
.base`` and ``trading_backend.domain``) and nothing from its own package, so the same file
works installed (entry point) and dropped into ``STRATEGIES_DIR``. Everything it must
remember across a restart is in ``ctx.state`` (plain JSON: prices as strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, Self

from pydantic import Field, model_validator

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    Exchange,
    Order,
    OrderType,
    ProductType,
    Timeframe,
)
from trading_backend.domain.calendar import IST
from trading_backend.strategies.base import (
    BaseStrategy,
    Signal,
    StrategyContext,
    StrategyParams,
    Subscription,
)

SESSION_OPEN = time(9, 15)
SESSION_CLOSE = time(15, 30)


def _minutes(moment: time) -> int:
    return moment.hour * 60 + moment.minute


class OpeningRangeBreakoutParams(StrategyParams):
    symbol: str = Field("SBIN", min_length=1, description="NSE equity to trade")
    exchange: Exchange = Exchange.NSE
    timeframe: Timeframe = Field(Timeframe.M5, description="bar timeframe the rules run on")
    range_minutes: int = Field(
        15, ge=1, le=360, description="minutes after 09:15 IST that make the opening range"
    )
    target_multiple: float = Field(
        2.0, gt=0, le=20, description="take profit this many range heights past the breakout"
    )
    allow_short: bool = Field(False, description="also sell a break below the range low")
    exit_time: time = Field(time(15, 15), description="IST time to square off at the latest")
    quantity: int = Field(1, ge=1, description="shares per trade")
    product_type: ProductType = ProductType.INTRADAY

    @model_validator(mode="after")
    def _range_before_exit(self) -> Self:
        range_end = _minutes(SESSION_OPEN) + self.range_minutes
        if not range_end < _minutes(self.exit_time) <= _minutes(SESSION_CLOSE):
            raise ValueError("need 09:15 + range_minutes < exit_time <= 15:30 (IST)")
        return self


class OpeningRangeBreakout(BaseStrategy):
    name = "opening_range_breakout"
    description = (
        "Trades the first close outside the session's opening range (first N minutes) of "
        "an NSE equity, with the opposite side of the range as stop, a multiple of its "
        "height as target and a square-off time. One trade a day."
    )
    category = "equity"
    Params = OpeningRangeBreakoutParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        assert isinstance(params, OpeningRangeBreakoutParams)
        self.p = params
        self.bar: Bar | None = None  # the bar being decided on (for generate_signals)

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    async def on_start(self) -> None:
        s = self.state
        s.setdefault("day", None)  # IST date of the session the range belongs to
        s.setdefault("high", None)  # the opening range (strings), None until seen
        s.setdefault("low", None)
        s.setdefault("traded", False)  # an entry was attempted today
        s.setdefault("side", None)  # None | "long" | "short"
        s.setdefault("qty", 0)
        s.setdefault("entry", None)
        s.setdefault("stop", None)
        s.setdefault("target", None)
        s.setdefault("pending", None)  # {"order_id", "role", "side"} while an order works
        s.setdefault("overnight", False)  # the open position is from an earlier session

    # -- the seed's shape: on_bar -> generate_signals -> execute_trades ------------------
    async def on_bar(self, bar: Bar) -> None:
        if (
            bar.symbol != self.p.symbol
            or bar.exchange != self.p.exchange
            or bar.timeframe != self.p.timeframe
        ):
            return
        self._roll_day(bar.start)
        if bar.start < self._range_end(bar.start):
            self._widen_range(bar)
            if not self.state["overnight"]:
                return
        self.bar = bar
        await self.execute_trades(await self.generate_signals())

    async def generate_signals(self) -> list[Signal]:
        """What to do on ``self.bar``'s close: at most one signal (an entry or an exit)."""
        s, bar = self.state, self.bar
        if bar is None or s["pending"] is not None:
            return []
        close = bar.close
        at_exit_time = bar.end.astimezone(IST).time() >= self.p.exit_time
        if s["side"] is not None:
            long = s["side"] == "long"
            stop, target = Decimal(s["stop"]), Decimal(s["target"])
            if at_exit_time or s["overnight"]:
                reason = "time_exit" if at_exit_time else "overnight"
            elif (long and close <= stop) or (not long and close >= stop):
                reason = "stop"
            elif (long and close >= target) or (not long and close <= target):
                reason = "target"
            else:
                return []
            action = "SELL" if long else "BUY"
            return [self._signal(action, int(s["qty"]), close, reason, "exit", s["side"])]
        if s["traded"] or at_exit_time or s["high"] is None:
            return []
        high, low = Decimal(s["high"]), Decimal(s["low"])
        if high == low:
            return []
        if close > high:
            return [self._signal("BUY", self.p.quantity, close, "breakout_up", "entry", "long")]
        if self.p.allow_short and close < low:
            return [self._signal("SELL", self.p.quantity, close, "breakout_down", "entry", "short")]
        return []

    async def execute_trades(self, signals: list[Signal]) -> None:
        for signal in signals:
            await self.ctx.log(
                "signal",
                {
                    "action": signal.action,
                    "quantity": signal.quantity,
                    "price": str(signal.price),
                    "reason": signal.reason,
                    **signal.data,
                },
            )
            role, side = signal.data["role"], signal.data["side"]
            if role == "entry":
                self._set_levels(side)
                self.state["traded"] = True  # one attempt a day, filled or not
            request = BrokerOrder(
                symbol=signal.symbol,
                exchange=signal.exchange,
                side=signal.action,
                order_type=OrderType.MARKET,
                product_type=self.p.product_type,
                quantity=signal.quantity,
            )
            try:
                order = await self.ctx.place_order(request)
            except DomainError as exc:
                await self.ctx.log("error", {"event": "order_refused", "error": exc.message})
                continue
            self.state["pending"] = {"order_id": order.order_id, "role": role, "side": side}
            await self.on_order_update(order)  # it may have filled already

    async def on_order_update(self, order: Order) -> None:
        """Act once, when the pending order can no longer trade. ``place_order``'s answer
        and the update stream may both show the final order; the second is ignored
        because ``pending`` is cleared by the first."""
        s = self.state
        pending = s["pending"]
        if pending is None or order.order_id != pending["order_id"] or not order.status.is_final:
            return
        s["pending"] = None
        filled = order.filled_quantity
        if pending["role"] == "entry":
            if filled:
                s["side"], s["qty"], s["entry"] = pending["side"], filled, str(order.average_price)
                await self.ctx.log(
                    "order", {"event": "entered", "side": s["side"], "price": s["entry"]}
                )
            return
        s["qty"] = int(s["qty"]) - filled
        if s["qty"] <= 0:  # a partly filled exit leaves the rest for the next bar
            s.update(side=None, qty=0, entry=None, stop=None, target=None, overnight=False)
            await self.ctx.log("order", {"event": "exited", "price": str(order.average_price)})

    # -- helpers -------------------------------------------------------------------------
    def _signal(
        self, action: str, quantity: int, price: Decimal, reason: str, role: str, side: str
    ) -> Signal:
        return Signal(
            self.p.symbol,
            self.p.exchange,
            action,
            quantity,
            price,
            reason,
            {"role": role, "side": side},
        )

    def _range_end(self, moment: datetime) -> datetime:
        local = moment.astimezone(IST)
        opening = datetime.combine(local.date(), SESSION_OPEN, IST)
        return opening + timedelta(minutes=self.p.range_minutes)

    def _roll_day(self, moment: datetime) -> None:
        day = moment.astimezone(IST).date().isoformat()
        if self.state["day"] != day:
            # A new session: forget yesterday's range. A position still open (the process
            # was down at exit_time) is squared off on the first bar of the day.
            overnight = self.state["side"] is not None
            self.state.update(day=day, high=None, low=None, traded=False, overnight=overnight)

    def _widen_range(self, bar: Bar) -> None:
        s = self.state
        high = bar.high if s["high"] is None else max(Decimal(s["high"]), bar.high)
        low = bar.low if s["low"] is None else min(Decimal(s["low"]), bar.low)
        s["high"], s["low"] = str(high), str(low)

    def _set_levels(self, side: str) -> None:
        s = self.state
        high, low = Decimal(s["high"]), Decimal(s["low"])
        reach = (high - low) * Decimal(repr(self.p.target_multiple))
        if side == "long":
            s["stop"], s["target"] = str(low), str(high + reach)
        else:
            s["stop"], s["target"] = str(high), str(low - reach)
