"""Grid trading on a crypto pair: resting buys below the price, sells above, re-armed one
level away on every fill; halts when the price leaves the grid."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    Exchange,
    Order,
    OrderSide,
    OrderStatus,
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
from trading_backend.strategies.builtin._common import observe, track, tracked


class GridParams(StrategyParams):
    symbol: str = Field("BTCUSDT", min_length=1)
    exchange: Exchange = Exchange.CRYPTO
    timeframe: Timeframe = Timeframe.M1
    lower: Decimal = Field(..., gt=0, description="lowest grid level (quote currency)")
    upper: Decimal = Field(..., gt=0, description="highest grid level")
    levels: int = Field(10, ge=3, le=200, description="number of levels, bounds included")
    spacing: Literal["arithmetic", "geometric"] = Field(
        "arithmetic", description="equal price steps, or equal percentage steps"
    )
    quantity_per_level: int = Field(1, ge=1, description="whole units per order")
    stop_outside_pct: float = Field(
        2.0, ge=0, le=100, description="halt when a close is this % beyond a bound"
    )
    tick_size: Decimal = Field(Decimal("0.01"), gt=0, description="level prices snap to it")
    product_type: ProductType = ProductType.DELIVERY

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.lower >= self.upper:
            raise ValueError("lower must be below upper")
        return self


class Grid(BaseStrategy):
    name = "grid"
    description = (
        "Places buy limits at grid levels below the price and sell limits above; each fill "
        "re-arms the opposite order one level away. Cancels everything and halts if the "
        "price closes outside the grid."
    )
    category = "crypto"
    Params = GridParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        self.p: Any = params

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.symbol, self.p.exchange, (self.p.timeframe,)),)

    def level_prices(self) -> list[Decimal]:
        lower, upper, n = self.p.lower, self.p.upper, self.p.levels
        if self.p.spacing == "arithmetic":
            step = (upper - lower) / (n - 1)
            raw = [lower + step * i for i in range(n)]
        else:
            ratio = upper / lower
            raw = [lower * ratio ** (Decimal(i) / (n - 1)) for i in range(n)]
        tick = self.p.tick_size
        return [
            (price / tick).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * tick for price in raw
        ]

    async def on_start(self) -> None:
        self.state.setdefault("levels", [str(p) for p in self.level_prices()])
        self.state.setdefault("armed", False)
        self.state.setdefault("halted", False)
        self.state.setdefault("fills", 0)
        self.state.setdefault("orders", {})

    async def on_bar(self, bar: Bar) -> None:
        if bar.symbol != self.p.symbol or bar.timeframe != self.p.timeframe:
            return
        if self.state["halted"]:
            return
        margin = Decimal(repr(self.p.stop_outside_pct)) / 100
        if bar.close < self.p.lower * (1 - margin) or bar.close > self.p.upper * (1 + margin):
            await self._halt(bar.close)
            return
        if not self.state["armed"]:
            await self._arm(bar.close)

    async def _arm(self, price: Decimal) -> None:
        levels = [Decimal(p) for p in self.state["levels"]]
        empty = min(range(len(levels)), key=lambda i: (abs(levels[i] - price), i))
        self.state["armed"] = True
        await self.ctx.log("info", {"event": "armed", "price": str(price), "empty_level": empty})
        for index in range(len(levels)):
            if index != empty:
                await self._place(index, OrderSide.BUY if index < empty else OrderSide.SELL)

    async def _place(self, level: int, side: OrderSide) -> None:
        price = Decimal(self.state["levels"][level])
        request = BrokerOrder(
            symbol=self.p.symbol,
            exchange=self.p.exchange,
            side=side,
            order_type=OrderType.LIMIT,
            product_type=self.p.product_type,
            quantity=self.p.quantity_per_level,
            price=price,
        )
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            await self.ctx.log(
                "error",
                {
                    "event": "order_refused",
                    "level": level,
                    "side": side.value,
                    "error": exc.message,
                },
            )
            return
        track(self.state, order, level=level, side=side.value)
        await self.on_order_update(order)

    async def _halt(self, price: Decimal) -> None:
        self.state["halted"] = True
        cancelled = []
        for order_id in list(tracked(self.state)):
            try:
                await self.ctx.cancel_order(order_id)
                cancelled.append(order_id)
            except DomainError:
                pass  # filled or gone meanwhile
        await self.ctx.log(
            "info",
            {"event": "halted", "price": str(price), "cancelled": cancelled},
        )

    async def on_order_update(self, order: Order) -> None:
        event = observe(self.state, order)
        if event is None or not event.final or self.state["halted"]:
            return
        level, side = int(event.meta["level"]), event.meta["side"]
        if event.status is not OrderStatus.FILLED:
            if event.status is OrderStatus.REJECTED:
                await self.ctx.log(
                    "error", {"event": "order_rejected", "level": level, "side": side}
                )
            return
        self.state["fills"] = int(self.state["fills"]) + 1
        if side == "BUY" and level + 1 < len(self.state["levels"]):
            await self._place(level + 1, OrderSide.SELL)
        elif side == "SELL" and level > 0:
            await self._place(level - 1, OrderSide.BUY)
