"""Dollar-cost averaging into a crypto coin, with dip buys and a take-profit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import Field

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
from trading_backend.strategies.builtin._common import ZERO, dec, observe, track


class DcaParams(StrategyParams):
    symbol: str = Field("BTCUSDT", min_length=1)
    exchange: Exchange = Exchange.CRYPTO
    timeframe: Timeframe = Field(Timeframe.H1, description="bars the schedule counts")
    interval_bars: int = Field(24, ge=1, le=10_000, description="buy every this many bars")
    amount: Decimal = Field(
        Decimal("10000"), gt=0, description="quote currency (USDT) added to the budget per buy"
    )
    dip_pct: float = Field(10.0, gt=0, lt=100, description="a dip: price this % below avg cost")
    dip_multiplier: float = Field(2.0, ge=1, le=10, description="amount multiplier on a dip")
    take_profit_pct: float = Field(
        15.0, gt=0, le=1000, description="sell everything at avg cost × (1 + this %)"
    )
    product_type: ProductType = ProductType.DELIVERY


class Dca(BaseStrategy):
    name = "dca"
    description = (
        "Buys a fixed quote amount of a coin on a schedule (more when the price is a dip "
        "below the average cost) and sells the whole holding at a take-profit."
    )
    category = "crypto"
    Params = DcaParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        self.p: Any = params

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    async def on_start(self) -> None:
        s = self.state
        s.setdefault("budget", "0")  # unspent quote currency carried to the next buy
        s.setdefault("holding", 0)  # whole units held
        s.setdefault("cost", "0")  # cost of the units held
        s.setdefault("last_buy", None)  # ISO time of the last scheduled buy (bar end)
        s.setdefault("pending", None)
        s.setdefault("realised", "0")
        s.setdefault("orders", {})

    @property
    def average_cost(self) -> Decimal:
        holding = int(self.state["holding"])
        return dec(self.state["cost"]) / holding if holding else ZERO

    async def on_bar(self, bar: Bar) -> None:
        if bar.symbol != self.p.symbol or bar.timeframe != self.p.timeframe:
            return
        if self.state["pending"]:
            return
        price = bar.close
        holding = int(self.state["holding"])
        average = self.average_cost
        if holding and price >= average * (1 + Decimal(repr(self.p.take_profit_pct)) / 100):
            await self._order(OrderSide.SELL, holding, "take_profit", price)
            return
        last = self.state["last_buy"]
        interval = self.p.timeframe.duration * self.p.interval_bars
        if last is not None and bar.end - datetime.fromisoformat(last) < interval:
            return
        self.state["last_buy"] = bar.end.isoformat()
        amount = self.p.amount
        dip = bool(holding) and price <= average * (1 - Decimal(repr(self.p.dip_pct)) / 100)
        if dip:
            amount *= Decimal(repr(self.p.dip_multiplier))
        budget = dec(self.state["budget"]) + amount
        self.state["budget"] = str(budget)
        units = int(budget // price)
        if units < 1:
            await self.ctx.log(
                "info", {"event": "saving", "budget": str(budget), "price": str(price)}
            )
            return
        await self._order(OrderSide.BUY, units, "dip_buy" if dip else "scheduled_buy", price)

    async def _order(self, side: OrderSide, quantity: int, reason: str, price: Decimal) -> None:
        await self.ctx.log(
            "signal",
            {"action": side.value, "quantity": quantity, "reason": reason, "price": str(price)},
        )
        request = BrokerOrder(
            symbol=self.p.symbol,
            exchange=self.p.exchange,
            side=side,
            order_type=OrderType.MARKET,
            product_type=self.p.product_type,
            quantity=quantity,
        )
        self.state["pending"] = reason
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            self.state["pending"] = None
            await self.ctx.log("error", {"event": "order_refused", "error": exc.message})
            return
        track(self.state, order, side=side.value, reason=reason)
        await self.on_order_update(order)

    async def on_order_update(self, order: Order) -> None:
        event = observe(self.state, order)
        if event is None:
            return
        s = self.state
        if event.fill_quantity:
            if event.meta["side"] == "BUY":
                s["holding"] = int(s["holding"]) + event.fill_quantity
                s["cost"] = str(dec(s["cost"]) + event.fill_value)
                s["budget"] = str(dec(s["budget"]) - event.fill_value)
            else:
                held = int(s["holding"])
                sold_cost = dec(s["cost"]) * event.fill_quantity / held if held else ZERO
                s["realised"] = str(dec(s["realised"]) + event.fill_value - sold_cost)
                s["cost"] = str(dec(s["cost"]) - sold_cost)
                s["holding"] = held - event.fill_quantity
                if s["holding"] == 0:
                    s["cost"] = "0"
        if event.final:
            s["pending"] = None
