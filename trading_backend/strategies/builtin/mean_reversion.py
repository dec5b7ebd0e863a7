"""Mean reversion on one equity: fade stretched moves, exit at the mean."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import Field

from trading_backend.domain import Bar, Exchange, ProductType, Timeframe
from trading_backend.strategies.base import StrategyParams, Subscription
from trading_backend.strategies.builtin import indicators
from trading_backend.strategies.builtin._position import SinglePositionStrategy


class MeanReversionParams(StrategyParams):
    symbol: str = Field("RELIANCE", min_length=1, description="NSE equity to trade")
    exchange: Exchange = Exchange.NSE
    timeframe: Timeframe = Field(Timeframe.M5, description="bar timeframe the rules run on")
    mode: Literal["zscore", "bollinger"] = Field(
        "zscore",
        description="zscore: enter when |z| exceeds entry_z; bollinger: enter when the close "
        "comes back inside the entry_z-wide band after closing outside it",
    )
    lookback: int = Field(20, ge=2, le=500, description="bars in the mean/std window")
    entry_z: float = Field(2.0, gt=0, le=10, description="entry distance, in std deviations")
    allow_short: bool = Field(False, description="also fade up-moves (intraday shorts)")
    stop_loss_pct: float = Field(2.0, gt=0, lt=100, description="stop, % from the entry price")
    max_holding_bars: int = Field(30, ge=1, description="exit after this many bars in a trade")
    quantity: int = Field(1, ge=1, description="shares per trade")
    product_type: ProductType = ProductType.INTRADAY


class MeanReversion(SinglePositionStrategy):
    name = "mean_reversion"
    description = (
        "Buys an equity when it closes far below its rolling mean (z-score or Bollinger "
        "band), sells short far above it if allowed, exits at the mean, on a stop-loss or "
        "after a maximum holding time."
    )
    category = "equity"
    Params = MeanReversionParams

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    async def on_bar(self, bar: Bar) -> None:
        if not self._is_mine(bar) or self.state["pending"]:
            return
        count = self.p.lookback + 1
        history = list(await self.ctx.bars(self.p.symbol, self.p.exchange, self.p.timeframe, count))
        if not history or history[-1].start != bar.start:
            history = [*history, bar][-count:]
        closes = [b.close for b in history]
        z = indicators.zscore(closes, self.p.lookback)
        if math.isnan(z[-1]):
            return
        close = bar.close
        side = self.state["side"]
        if side is None:
            await self._maybe_enter(closes, float(z[-1]))
            return
        self.state["bars_held"] = int(self.state["bars_held"]) + 1
        stop = Decimal(str(self.p.stop_loss_pct)) / 100
        entry = self.entry_price
        if side == "long" and close <= entry * (1 - stop):
            await self._exit("stop_loss")
        elif side == "short" and close >= entry * (1 + stop):
            await self._exit("stop_loss")
        elif (side == "long" and z[-1] >= 0) or (side == "short" and z[-1] <= 0):
            await self._exit("mean_reached")
        elif int(self.state["bars_held"]) >= self.p.max_holding_bars:
            await self._exit("max_holding")

    async def _maybe_enter(self, closes: list[Decimal], z: float) -> None:
        if self.p.mode == "zscore":
            if z < -self.p.entry_z:
                await self._enter("long", "zscore_below", z=z)
            elif self.p.allow_short and z > self.p.entry_z:
                await self._enter("short", "zscore_above", z=z)
            return
        if len(closes) < self.p.lookback + 1:
            return
        lower, _, upper = indicators.bollinger(closes, self.p.lookback, self.p.entry_z)
        prev, last = float(closes[-2]), float(closes[-1])
        if prev < lower[-2] and last >= lower[-1]:
            await self._enter("long", "bollinger_reentry_lower", z=z)
        elif self.p.allow_short and prev > upper[-2] and last <= upper[-1]:
            await self._enter("short", "bollinger_reentry_upper", z=z)
