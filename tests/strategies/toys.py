"""Toy strategies for the engine tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

from pydantic import Field

from trading_backend.domain import Bar, BrokerOrder, Exchange, Order
from trading_backend.domain.money import round_to_tick
from trading_backend.strategies.base import (
    BaseStrategy,
    StrategyParams,
    Subscription,
    TickView,
)


class BuyThenSellParams(StrategyParams):
    symbol: str = "TCS"
    quantity: int = Field(default=2, gt=0)


class BuyThenSell(BaseStrategy):
    """Buys on its first bar, sells on its third; records what it saw in its state."""

    name = "buy_then_sell"
    description = "Buy on the first bar, sell on the third"
    category = "equity"
    Params = BuyThenSellParams
    params: BuyThenSellParams

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription(self.params.symbol, Exchange.NSE)]

    async def on_start(self) -> None:
        self.ctx.state["starts"] = self.ctx.state.get("starts", 0) + 1
        self.ctx.state["bars_at_start"] = self.ctx.state.get("bars", 0)

    async def on_bar(self, bar: Bar) -> None:
        count = self.ctx.state.get("bars", 0) + 1
        self.ctx.state["bars"] = count
        side = {1: "BUY", 3: "SELL"}.get(count)
        if side is None:
            return
        await self.ctx.log("signal", {"action": side, "close": bar.close})
        await self.ctx.place_order(
            BrokerOrder(
                symbol=self.params.symbol,
                exchange="NSE",
                side=side,
                order_type="MARKET",
                product_type="INTRADAY",
                quantity=self.params.quantity,
            )
        )

    async def on_order_update(self, order: Order) -> None:
        updates = self.ctx.state.setdefault("updates", [])
        updates.append([order.order_id, order.status.value])

    async def on_stop(self) -> None:
        self.ctx.state["stops"] = self.ctx.state.get("stops", 0) + 1


class FailParams(StrategyParams):
    symbol: str = "INFY"
    fail_on_bar: int = 2


class FailsOnBar(BaseStrategy):
    name = "fails_on_bar"
    description = "Raises on a given bar"
    Params = FailParams
    params: FailParams

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription(self.params.symbol, Exchange.NSE)]

    async def on_bar(self, bar: Bar) -> None:
        count = self.ctx.state.get("bars", 0) + 1
        self.ctx.state["bars"] = count
        if count == self.params.fail_on_bar:
            raise RuntimeError(f"boom on bar {count}")

    async def on_stop(self) -> None:  # must not run for a crashed strategy
        self.ctx.state["stopped"] = True


class FailsOnStart(BaseStrategy):
    name = "fails_on_start"
    description = "Raises in on_start"

    async def on_start(self) -> None:
        raise ValueError("cannot start")


class RestingOrder(BaseStrategy):
    """Places a far-away limit buy on its first bar (it rests)."""

    name = "resting_order"
    description = "A resting limit order"

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription("SBIN", Exchange.NSE, ticks=True)]

    async def on_bar(self, bar: Bar) -> None:
        quote = await self.ctx.quote("SBIN", "NSE")
        order = await self.ctx.place_order(
            BrokerOrder(
                symbol="SBIN",
                exchange="NSE",
                side="BUY",
                order_type="LIMIT",
                product_type="INTRADAY",
                quantity=1,
                price=round_to_tick(quote.ltp * Decimal("0.96"), Decimal("0.05")),
                tag="ignored",
            )
        )
        self.ctx.state["order_id"] = order.order_id

    async def on_tick(self, tick: TickView) -> None:
        self.ctx.state["ticks"] = self.ctx.state.get("ticks", 0) + 1

    async def on_order_update(self, order: Order) -> None:
        self.ctx.state.setdefault("updates", []).append(order.status.value)


class NotJson(BaseStrategy):
    name = "not_json"

    async def on_start(self) -> None:
        self.ctx.state["bad"] = object()


class Gated(BaseStrategy):
    """Blocks in on_bar until ``Gated.gate`` is set (a slow strategy)."""

    name = "gated"
    gate: asyncio.Event | None = None

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription("RELIANCE", Exchange.NSE)]

    async def on_bar(self, bar: Bar) -> None:
        assert Gated.gate is not None
        await Gated.gate.wait()
        self.ctx.state["bars"] = self.ctx.state.get("bars", 0) + 1


TOYS: list[type[BaseStrategy]] = [
    BuyThenSell,
    FailsOnBar,
    FailsOnStart,
    RestingOrder,
    NotJson,
    Gated,
]
