"""Intraday short straddle / strangle on NIFTY or BANKNIFTY options."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from decimal import Decimal
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
    OptionQuote,
    StrategyContext,
    StrategyParams,
    Subscription,
)
from trading_backend.strategies.builtin._common import ZERO, dec, ist, observe, track

SESSION_OPEN = time(9, 15)
SESSION_CLOSE = time(15, 30)


class OptionsSellingParams(StrategyParams):
    underlying: str = Field("NIFTY", min_length=1, description="index whose options are sold")
    underlying_exchange: Exchange = Exchange.NSE
    options_exchange: Exchange = Exchange.NFO
    timeframe: Timeframe = Field(Timeframe.M1, description="underlying bars that drive checks")
    structure: Literal["straddle", "strangle"] = "straddle"
    strike_selection: Literal["offset", "delta"] = Field(
        "offset",
        description="strangle legs: ATM ± strike_offset strikes, or |delta| closest to "
        "target_delta (a straddle is always ATM)",
    )
    strike_offset: int = Field(2, ge=1, le=50, description="strangle: strikes away from ATM")
    target_delta: float = Field(0.2, gt=0, lt=1, description="strangle: |delta| of each leg")
    lots: int = Field(1, ge=1, le=100, description="lots sold per leg")
    order_type: Literal["MARKET", "LIMIT"] = Field(
        "MARKET", description="entry orders: MARKET, or LIMIT at the bid (exits are MARKET)"
    )
    entry_time: time = Field(time(9, 20), description="IST time to sell (once a day)")
    exit_time: time = Field(time(15, 15), description="IST time to buy everything back")
    leg_stop_loss_pct: float = Field(
        30.0, gt=0, le=1000, description="buy a leg back when it rises this % over its entry"
    )
    target_pct: float = Field(
        50.0, gt=0, le=100, description="close all when profit reaches this % of premium"
    )
    product_type: ProductType = ProductType.INTRADAY

    @model_validator(mode="after")
    def _times(self) -> Self:
        if not SESSION_OPEN <= self.entry_time < self.exit_time <= SESSION_CLOSE:
            raise ValueError("need 09:15 <= entry_time < exit_time <= 15:30 (IST)")
        return self


class OptionsSelling(BaseStrategy):
    name = "options_selling"
    description = (
        "Sells an index straddle or strangle once a day at a set time, picking strikes by "
        "distance from the money or by delta; buys back a leg on its stop-loss, everything "
        "at the combined profit target or at the exit time."
    )
    category = "derivatives"
    Params = OptionsSellingParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        self.p: Any = params

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.p.underlying, self.p.underlying_exchange, (self.p.timeframe,)),)

    async def on_start(self) -> None:
        self.state.setdefault("day", None)  # IST date of the last entry
        self.state.setdefault("legs", [])
        self.state.setdefault("orders", {})

    # --- the bar loop ----------------------------------------------------------------

    async def on_bar(self, bar: Bar) -> None:
        if bar.symbol != self.p.underlying or bar.timeframe != self.p.timeframe:
            return
        now = ist(self.ctx.now())
        today = now.date().isoformat()
        legs = self.state["legs"]
        live = [leg for leg in legs if leg["status"] in ("opening", "open", "closing")]
        if live:
            await self._manage(now, today)
            return
        if legs and all(leg["status"] in ("closed", "failed") for leg in legs):
            self.state["legs"] = []
        if self.state["day"] != today and self.p.entry_time <= now.time() < self.p.exit_time:
            await self._enter(bar.close, now, today)

    async def _enter(self, spot: Decimal, now: datetime, today: str) -> None:
        self.state["day"] = today  # whatever happens next, never again today
        try:
            chain = list(await self.ctx.option_chain(self.p.underlying))
        except DomainError as exc:
            await self.ctx.log("error", {"event": "no_option_chain", "error": exc.message})
            return
        picked = self.pick_legs(chain, spot, now)
        if picked is None:
            await self.ctx.log("error", {"event": "no_strikes", "spot": str(spot)})
            return
        legs = [
            {
                "symbol": row.symbol,
                "option_type": row.option_type,
                "strike": str(row.strike),
                "quantity": self.p.lots * row.lot_size,
                "status": "opening",
                "filled": 0,
                "entry_value": "0",
                "closed": 0,
                "exit_value": "0",
            }
            for row in picked
        ]
        self.state["legs"] = legs
        await self.ctx.log(
            "signal",
            {
                "action": "SELL",
                "structure": self.p.structure,
                "spot": str(spot),
                "legs": [{"symbol": leg["symbol"], "quantity": leg["quantity"]} for leg in legs],
            },
        )
        for index, row in enumerate(picked):
            if any(leg["status"] == "failed" for leg in legs):
                legs[index]["status"] = "failed"  # the first leg failed: do not sell this one
                continue
            limit = row.bid if row.bid > 0 else row.ltp
            await self._order(
                index,
                OrderSide.SELL,
                legs[index]["quantity"],
                "open",
                limit if self.p.order_type == "LIMIT" else None,
            )

    def pick_legs(
        self, chain: list[OptionQuote], spot: Decimal, now: datetime
    ) -> list[OptionQuote] | None:
        """The (CE, PE) to sell from the nearest expiry still ahead of ``now``."""
        ahead = [row for row in chain if row.expiry >= now] or chain
        if not ahead:
            return None
        expiry = min(row.expiry for row in ahead)
        rows = [row for row in ahead if row.expiry == expiry]
        calls = {row.strike: row for row in rows if row.option_type == "CE"}
        puts = {row.strike: row for row in rows if row.option_type == "PE"}
        strikes = sorted(set(calls) & set(puts))
        if not strikes:
            return None
        atm = min(range(len(strikes)), key=lambda i: (abs(strikes[i] - spot), strikes[i]))
        if self.p.structure == "straddle":
            return [calls[strikes[atm]], puts[strikes[atm]]]
        if self.p.strike_selection == "offset":
            up, down = atm + self.p.strike_offset, atm - self.p.strike_offset
            if down < 0 or up >= len(strikes):
                return None
            return [calls[strikes[up]], puts[strikes[down]]]
        target = self.p.target_delta
        call = min(calls.values(), key=lambda r: (abs(abs(r.delta) - target), r.strike))
        put = min(puts.values(), key=lambda r: (abs(abs(r.delta) - target), -r.strike))
        return [call, put]

    async def _manage(self, now: datetime, today: str) -> None:
        legs = self.state["legs"]
        if now.time() >= self.p.exit_time or self.state["day"] != today:
            await self._close_all("time_exit")
            return
        prices: dict[int, Decimal] = {}
        for index, leg in enumerate(legs):
            if leg["status"] in ("open", "closing") and int(leg["filled"]) > 0:
                quote = await self.ctx.quote(leg["symbol"], self.p.options_exchange)
                prices[index] = quote.ltp
        stop = Decimal(repr(self.p.leg_stop_loss_pct)) / 100
        for index, leg in enumerate(legs):
            if leg["status"] == "open" and prices[index] >= _entry(leg) * (1 + stop):
                await self.ctx.log(
                    "signal",
                    {
                        "action": "BUY",
                        "reason": "leg_stop",
                        "symbol": leg["symbol"],
                        "price": str(prices[index]),
                        "entry": str(_entry(leg)),
                    },
                )
                await self._close_leg(index)
        if any(leg["status"] == "opening" for leg in legs):
            return
        collected = sum((dec(leg["entry_value"]) for leg in legs), ZERO)
        cost = ZERO
        for index, leg in enumerate(legs):
            cost += dec(leg["exit_value"])
            still = int(leg["filled"]) - int(leg["closed"])
            if still > 0:
                cost += prices.get(index, ZERO) * still
        target = collected * Decimal(repr(self.p.target_pct)) / 100
        if collected > 0 and collected - cost >= target:
            await self._close_all("target", profit=str(collected - cost))

    async def _close_all(self, reason: str, **info: Any) -> None:
        await self.ctx.log("signal", {"action": "BUY", "reason": reason, **info})
        for index, leg in enumerate(self.state["legs"]):
            if leg["status"] == "opening" and leg.get("order_id"):
                try:
                    await self.ctx.cancel_order(leg["order_id"])
                except DomainError:
                    pass  # filled meanwhile: the update will make it "open"
                leg["close_when_open"] = True
            elif leg["status"] == "open":
                await self._close_leg(index)

    async def _close_leg(self, index: int) -> None:
        leg = self.state["legs"][index]
        remaining = int(leg["filled"]) - int(leg["closed"])
        if remaining <= 0:
            leg["status"] = "closed"
            return
        leg["status"] = "closing"
        await self._order(index, OrderSide.BUY, remaining, "close", None)

    async def _order(
        self, index: int, side: OrderSide, quantity: int, role: str, price: Decimal | None
    ) -> None:
        leg = self.state["legs"][index]
        request = BrokerOrder(
            symbol=leg["symbol"],
            exchange=self.p.options_exchange,
            side=side,
            order_type=OrderType.LIMIT if price is not None else OrderType.MARKET,
            product_type=self.p.product_type,
            quantity=quantity,
            price=price,
        )
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            await self._failed(index, role, None, exc.message)
            return
        leg["order_id"] = order.order_id
        track(self.state, order, leg=index, role=role)
        await self.on_order_update(order)

    async def _failed(self, index: int, role: str, order: Order | None, error: str) -> None:
        leg = self.state["legs"][index]
        await self.ctx.log(
            "error",
            {"event": f"{role}_failed", "symbol": leg["symbol"], "error": error},
        )
        if role == "open":
            leg["status"] = "open" if int(leg["filled"]) > 0 else "failed"
            # Never sit on a naked half of the structure: close whatever did open.
            await self._close_all("leg_failed")
        else:
            leg["status"] = "open"  # retried on the next bar

    async def on_order_update(self, order: Order) -> None:
        event = observe(self.state, order)
        if event is None:
            return
        index = int(event.meta["leg"])
        leg = self.state["legs"][index]
        if event.meta["role"] == "open":
            if event.fill_quantity:
                leg["filled"] = int(leg["filled"]) + event.fill_quantity
                leg["entry_value"] = str(dec(leg["entry_value"]) + event.fill_value)
            if event.final:
                if event.status is OrderStatus.REJECTED:
                    await self._failed(index, "open", order, order.message or "rejected")
                    return
                leg["status"] = "open" if int(leg["filled"]) > 0 else "failed"
                if leg["status"] == "open" and leg.pop("close_when_open", False):
                    await self._close_leg(index)
        else:
            if event.fill_quantity:
                leg["closed"] = int(leg["closed"]) + event.fill_quantity
                leg["exit_value"] = str(dec(leg["exit_value"]) + event.fill_value)
            if event.final:
                if int(leg["closed"]) >= int(leg["filled"]):
                    leg["status"] = "closed"
                    await self.ctx.log("order", {"event": "leg_closed", "symbol": leg["symbol"]})
                elif event.status is OrderStatus.REJECTED:
                    await self._failed(index, "close", order, order.message or "rejected")
                else:
                    leg["status"] = "open"


def _entry(leg: dict[str, Any]) -> Decimal:
    filled = int(leg["filled"])
    return dec(leg["entry_value"]) / filled if filled else ZERO
