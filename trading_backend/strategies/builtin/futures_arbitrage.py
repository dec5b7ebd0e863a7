"""Cash-and-carry: buy the spot, sell its future when the basis is rich; unwind when it
converges or near expiry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any, Self

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
from trading_backend.strategies.builtin._common import ist, observe, order_summary, track, tracked

LEGS = ("spot", "future")


class FuturesArbitrageParams(StrategyParams):
    spot_symbol: str = Field("RELIANCE", min_length=1, description="tradable spot (equity)")
    spot_exchange: Exchange = Exchange.NSE
    future_symbol: str = Field(..., min_length=1, description="its future, e.g. RELIANCE25DECFUT")
    future_exchange: Exchange = Exchange.NFO
    expiry: date = Field(..., description="the future's expiry date (IST)")
    lot_size: int = Field(..., ge=1, description="the future's lot size")
    lots: int = Field(1, ge=1, le=100, description="lots per trade (spot quantity matches)")
    timeframe: Timeframe = Timeframe.M1
    entry_basis_pct: float = Field(
        8.0, gt=0, le=200, description="enter when the annualised basis exceeds this %"
    )
    exit_basis_pct: float = Field(
        2.0, ge=-100, le=200, description="exit when the annualised basis falls below this %"
    )
    exit_days_before_expiry: int = Field(1, ge=0, le=60, description="flatten this many days out")
    spot_product: ProductType = ProductType.DELIVERY
    future_product: ProductType = ProductType.CARRYFORWARD

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        if self.exit_basis_pct >= self.entry_basis_pct:
            raise ValueError("exit_basis_pct must be below entry_basis_pct")
        if self.spot_symbol == self.future_symbol:
            raise ValueError("spot_symbol and future_symbol must differ")
        return self


class FuturesArbitrage(BaseStrategy):
    name = "futures_arbitrage"
    description = (
        "Cash-and-carry arbitrage: buys a stock and sells its future in equal quantity when "
        "the annualised basis is above a threshold, unwinds both when it converges or close "
        "to expiry; a one-legged entry is unwound at once."
    )
    category = "derivatives"
    Params = FuturesArbitrageParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        self.p: Any = params

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    def subscriptions(self) -> Sequence[Subscription]:
        return (
            Subscription(self.p.spot_symbol, self.p.spot_exchange, (self.p.timeframe,)),
            Subscription(self.p.future_symbol, self.p.future_exchange, (self.p.timeframe,)),
        )

    async def on_start(self) -> None:
        # phase: flat | entering | open | exiting | unwinding | halted
        self.state.setdefault("phase", "flat")
        self.state.setdefault("pos", {"spot": 0, "future": 0})  # signed, from fills
        self.state.setdefault("orders", {})

    def _leg(self, leg: str) -> tuple[str, Exchange, ProductType]:
        if leg == "spot":
            return self.p.spot_symbol, self.p.spot_exchange, self.p.spot_product
        return self.p.future_symbol, self.p.future_exchange, self.p.future_product

    def days_to_expiry(self) -> int:
        return (self.p.expiry - ist(self.ctx.now()).date()).days

    @staticmethod
    def annualised_basis(spot: Decimal, future: Decimal, days: int) -> Decimal:
        """(F / S - 1) * 365 / days, in percent."""
        return (future / spot - 1) * Decimal(365) / Decimal(max(days, 1)) * 100

    async def on_bar(self, bar: Bar) -> None:
        if bar.symbol != self.p.future_symbol or bar.timeframe != self.p.timeframe:
            return  # decide once per step, on the future's bar
        phase = self.state["phase"]
        if phase in ("exiting", "unwinding"):
            await self._flatten()
            return
        if phase not in ("flat", "open"):
            return
        spot = (await self.ctx.quote(self.p.spot_symbol, self.p.spot_exchange)).ltp
        days = self.days_to_expiry()
        basis = self.annualised_basis(spot, bar.close, days)
        self.state["last_basis"] = str(round(basis, 4))
        near_expiry = days <= self.p.exit_days_before_expiry
        if phase == "flat" and not near_expiry and basis > Decimal(repr(self.p.entry_basis_pct)):
            await self._enter(spot, bar.close, basis, days)
        elif phase == "open" and (near_expiry or basis < Decimal(repr(self.p.exit_basis_pct))):
            reason = "near_expiry" if near_expiry else "basis_converged"
            await self.ctx.log(
                "signal", {"action": "EXIT", "reason": reason, "basis": str(round(basis, 4))}
            )
            self.state["phase"] = "exiting"
            await self._flatten()

    async def _enter(self, spot: Decimal, future: Decimal, basis: Decimal, days: int) -> None:
        quantity = self.p.lots * self.p.lot_size
        await self.ctx.log(
            "signal",
            {
                "action": "ENTER",
                "spot": str(spot),
                "future": str(future),
                "basis": str(round(basis, 4)),
                "days_to_expiry": days,
                "quantity": quantity,
            },
        )
        self.state["phase"] = "entering"
        outcomes: dict[str, tuple[Order | None, str | None]] = {}
        for leg, side in (("spot", OrderSide.BUY), ("future", OrderSide.SELL)):
            outcomes[leg] = await self._place(leg, side, quantity, "entry")
        failed = [
            leg
            for leg, (order, _) in outcomes.items()
            if order is None or order.status is OrderStatus.REJECTED
        ]
        if failed:
            await self._entry_failed(
                {leg: order_summary(order, error) for leg, (order, error) in outcomes.items()}
            )
        for _, (order, _) in outcomes.items():
            if order is not None:
                await self.on_order_update(order)

    async def _place(
        self, leg: str, side: OrderSide, quantity: int, role: str
    ) -> tuple[Order | None, str | None]:
        symbol, exchange, product = self._leg(leg)
        request = BrokerOrder(
            symbol=symbol,
            exchange=exchange,
            side=side,
            order_type=OrderType.MARKET,
            product_type=product,
            quantity=quantity,
        )
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            return None, exc.message
        track(self.state, order, leg=leg, role=role, side=side.value)
        return order, None

    async def _entry_failed(self, outcomes: dict[str, dict[str, Any]]) -> None:
        if self.state["phase"] == "unwinding":
            return
        self.state["phase"] = "unwinding"
        await self.ctx.log(
            "error", {"event": "entry_leg_failed", "action": "unwinding", **outcomes}
        )
        for order_id, meta in list(tracked(self.state).items()):
            if meta["role"] == "entry":
                try:
                    await self.ctx.cancel_order(order_id)
                except DomainError:
                    pass  # already filled (or final): the fill is unwound by _flatten
        await self._flatten()

    async def _flatten(self) -> None:
        """Trade each leg back to zero; when both are flat, the trade is over."""
        busy = {meta["leg"] for meta in tracked(self.state).values()}
        for leg in LEGS:
            net = int(self.state["pos"][leg])
            if net == 0 or leg in busy:
                continue
            side = OrderSide.SELL if net > 0 else OrderSide.BUY
            role = "exit" if self.state["phase"] == "exiting" else "unwind"
            order, error = await self._place(leg, side, abs(net), role)
            if order is None or order.status is OrderStatus.REJECTED:
                await self.ctx.log(
                    "error",
                    {
                        "event": f"{role}_failed",
                        "leg": leg,
                        "order": order_summary(order, error),
                        "action": "retry on the next bar",
                    },
                )
                if order is not None:
                    observe(self.state, order)
        if not tracked(self.state) and all(int(self.state["pos"][leg]) == 0 for leg in LEGS):
            if self.state["phase"] == "unwinding":
                self.state["phase"] = "halted"
                await self.ctx.log("info", {"event": "unwound", "phase": "halted"})
            elif self.state["phase"] == "exiting":
                self.state["phase"] = "flat"
                await self.ctx.log("order", {"event": "exited"})

    async def on_order_update(self, order: Order) -> None:
        event = observe(self.state, order)
        if event is None:
            return
        leg, role = event.meta["leg"], event.meta["role"]
        if event.fill_quantity:
            sign = 1 if event.meta["side"] == "BUY" else -1
            self.state["pos"][leg] = int(self.state["pos"][leg]) + sign * event.fill_quantity
        if not event.final:
            return
        phase = self.state["phase"]
        if phase == "entering" and role == "entry":
            if event.status is not OrderStatus.FILLED:
                other = "future" if leg == "spot" else "spot"
                await self._entry_failed(
                    {
                        leg: order_summary(order),
                        other: {"status": "SEE_POSITION", "net": self.state["pos"][other]},
                    }
                )
                return
            if not tracked(self.state):
                quantity = self.p.lots * self.p.lot_size
                if self.state["pos"] == {"spot": quantity, "future": -quantity}:
                    self.state["phase"] = "open"
                    await self.ctx.log("order", {"event": "entered", "quantity": quantity})
                else:
                    await self._entry_failed({"spot": {}, "future": {}})
        elif phase in ("exiting", "unwinding"):
            await self._flatten()
