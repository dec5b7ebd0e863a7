"""Trend following on one equity: moving-average crossover or N-bar breakout, with an ATR
trailing stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal, Self

from pydantic import Field, model_validator

from trading_backend.domain import Bar, Exchange, ProductType, Timeframe
from trading_backend.strategies.base import StrategyParams, Subscription
from trading_backend.strategies.builtin import indicators
from trading_backend.strategies.builtin._common import dec
from trading_backend.strategies.builtin._position import SinglePositionStrategy


class MomentumParams(StrategyParams):
    symbol: str = Field("INFY", min_length=1, description="NSE equity to trade")
    exchange: Exchange = Exchange.NSE
    timeframe: Timeframe = Field(Timeframe.M15, description="bar timeframe the rules run on")
    mode: Literal["crossover", "breakout"] = Field(
        "crossover",
        description="crossover: fast MA crossing the slow MA; breakout: close beyond the "
        "highest high / lowest low of the previous breakout_period bars",
    )
    ma_type: Literal["sma", "ema"] = "sma"
    fast_period: int = Field(9, ge=1, le=500)
    slow_period: int = Field(21, ge=2, le=1000)
    breakout_period: int = Field(20, ge=1, le=1000)
    atr_period: int = Field(14, ge=1, le=500)
    atr_multiplier: float = Field(2.0, gt=0, le=20, description="trailing stop distance in ATRs")
    allow_short: bool = Field(False, description="trade the opposite signal short")
    quantity: int = Field(1, ge=1, description="shares per trade")
    product_type: ProductType = ProductType.INTRADAY

    @model_validator(mode="after")
    def _fast_below_slow(self) -> Self:
        if self.fast_period >= self.slow_period:
            raise ValueError("fast_period must be below slow_period")
        return self


class Momentum(SinglePositionStrategy):
    name = "momentum"
    description = (
        "Follows trends in an equity: enters on a fast/slow moving-average crossover or an "
        "N-bar breakout and exits on the opposite signal or an ATR trailing stop."
    )
    category = "equity"
    Params = MomentumParams

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    def _needed(self) -> int:
        if self.p.mode == "crossover":
            signal = self.p.slow_period + 1
        else:
            signal = self.p.breakout_period + 1
        return max(signal, self.p.atr_period + 1)

    async def on_bar(self, bar: Bar) -> None:
        if not self._is_mine(bar) or self.state["pending"]:
            return
        count = self._needed()
        history = list(await self.ctx.bars(self.p.symbol, self.p.exchange, self.p.timeframe, count))
        if not history or history[-1].start != bar.start:
            history = [*history, bar][-count:]
        if len(history) < count:
            return
        highs = [b.high for b in history]
        lows = [b.low for b in history]
        closes = [b.close for b in history]
        atr = float(indicators.atr(highs, lows, closes, self.p.atr_period)[-1])
        signal = self._signal(highs, lows, closes)
        if math.isnan(atr):
            return
        distance = Decimal(repr(atr)) * Decimal(repr(self.p.atr_multiplier))
        self.state["atr_distance"] = str(distance)
        side = self.state["side"]
        close = bar.close
        if side is None:
            if signal == "long" or (signal == "short" and self.p.allow_short):
                await self._enter(signal, f"{self.p.mode}_{signal}")
            return
        self.state["bars_held"] = int(self.state["bars_held"]) + 1
        stop = dec(self.state["stop"])
        if (side == "long" and close <= stop) or (side == "short" and close >= stop):
            await self._exit("trailing_stop")
            return
        opposite = "short" if side == "long" else "long"
        if signal == opposite:
            await self._exit("reversal", flip_to=opposite if self.p.allow_short else None)
            return
        if side == "long":
            self.state["stop"] = str(max(stop, close - distance))
        else:
            self.state["stop"] = str(min(stop, close + distance))

    def _signal(self, highs: list[Decimal], lows: list[Decimal], closes: list[Decimal]) -> str:
        if self.p.mode == "crossover":
            average = indicators.ema if self.p.ma_type == "ema" else indicators.sma
            fast = average(closes, self.p.fast_period)
            slow = average(closes, self.p.slow_period)
            if any(math.isnan(v) for v in (fast[-1], fast[-2], slow[-1], slow[-2])):
                return ""
            if fast[-2] <= slow[-2] and fast[-1] > slow[-1]:
                return "long"
            if fast[-2] >= slow[-2] and fast[-1] < slow[-1]:
                return "short"
            return ""
        n = self.p.breakout_period
        if closes[-1] > max(highs[-n - 1 : -1]):
            return "long"
        if closes[-1] < min(lows[-n - 1 : -1]):
            return "short"
        return ""

    async def _entered(self) -> None:
        distance = dec(self.state.get("atr_distance", "0"))
        entry = self.entry_price
        stop = entry - distance if self.state["side"] == "long" else entry + distance
        self.state["stop"] = str(stop)
