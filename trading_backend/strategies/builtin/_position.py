"""A base for the single-instrument, one-position-at-a-time built-ins (equity strategies).

State kept in ``ctx.state``::

    side        None | "long" | "short"   the open position (None: flat)
    qty         int                        filled quantity of the open position
    entry_value str (Decimal)              value of the entry fills (entry price = value / qty)
    pending     None | "entry" | "exit"    an order is working; no new decision until it ends
    bars_held   int                        bars seen since the entry filled
    flip_to     None | "long" | "short"    enter this side as soon as the exit has filled

Orders are MARKET; fills arrive through ``on_order_update`` (or the order ``place_order``
returns, whichever is seen first).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from trading_backend.domain import Bar, BrokerOrder, DomainError, Order, OrderSide, OrderType
from trading_backend.strategies.base import BaseStrategy, StrategyContext, StrategyParams
from trading_backend.strategies.builtin._common import ZERO, dec, observe, track


class SinglePositionStrategy(BaseStrategy):
    """Subclasses call ``_enter``/``_exit`` from ``on_bar`` and may override ``_entered``."""

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        super().__init__(context, params)
        self.p: Any = params

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    async def on_start(self) -> None:
        s = self.state
        s.setdefault("side", None)
        s.setdefault("qty", 0)
        s.setdefault("entry_value", "0")
        s.setdefault("pending", None)
        s.setdefault("bars_held", 0)
        s.setdefault("flip_to", None)
        s.setdefault("orders", {})

    def _is_mine(self, bar: Bar) -> bool:
        return (
            bar.symbol == self.p.symbol
            and bar.exchange == self.p.exchange
            and bar.timeframe == self.p.timeframe
        )

    @property
    def entry_price(self) -> Decimal:
        qty = int(self.state["qty"])
        return dec(self.state["entry_value"]) / qty if qty else ZERO

    async def _place(self, side: OrderSide, quantity: int, role: str, reason: str) -> None:
        self.state["pending"] = role
        request = BrokerOrder(
            symbol=self.p.symbol,
            exchange=self.p.exchange,
            side=side,
            order_type=OrderType.MARKET,
            product_type=self.p.product_type,
            quantity=quantity,
        )
        await self.ctx.log(
            "signal",
            {"action": side.value, "role": role, "quantity": quantity, "reason": reason},
        )
        try:
            order = await self.ctx.place_order(request)
        except DomainError as exc:
            self.state["pending"] = None
            self.state.pop("entering", None)
            await self.ctx.log(
                "error", {"event": "order_refused", "role": role, "error": exc.message}
            )
            return
        track(self.state, order, role=role, side=side.value)
        await self.on_order_update(order)

    async def _enter(self, side: str, reason: str, **info: Any) -> None:
        self.state["entry_info"] = dict(info)
        self.state["entering"] = side
        await self._place(
            OrderSide.BUY if side == "long" else OrderSide.SELL, self.p.quantity, "entry", reason
        )

    async def _exit(self, reason: str, flip_to: str | None = None) -> None:
        self.state["flip_to"] = flip_to
        side = OrderSide.SELL if self.state["side"] == "long" else OrderSide.BUY
        await self._place(side, int(self.state["qty"]), "exit", reason)

    async def _entered(self) -> None:
        """Called once when an entry has filled (``side``, ``qty``, entry price are set)."""
        return None

    async def on_order_update(self, order: Order) -> None:
        event = observe(self.state, order)
        if event is None:
            return
        s = self.state
        role = event.meta["role"]
        if role == "entry":
            if event.fill_quantity:
                s["qty"] = int(s["qty"]) + event.fill_quantity
                s["entry_value"] = str(dec(s["entry_value"]) + event.fill_value)
            if event.final:
                s["pending"] = None
                if int(s["qty"]) > 0:
                    s["side"] = s.pop("entering", None) or (
                        "long" if event.meta["side"] == "BUY" else "short"
                    )
                    s["bars_held"] = 0
                    await self.ctx.log(
                        "order",
                        {"event": "entered", "side": s["side"], "price": str(self.entry_price)},
                    )
                    await self._entered()
                else:
                    s.pop("entering", None)
        elif role == "exit":
            if event.fill_quantity:
                old = int(s["qty"])
                new = max(old - event.fill_quantity, 0)
                s["entry_value"] = str(dec(s["entry_value"]) * new / old) if old else "0"
                s["qty"] = new
            if event.final:
                s["pending"] = None
                if int(s["qty"]) == 0:
                    s["side"] = None
                    s["entry_value"] = "0"
                    s["bars_held"] = 0
                    await self.ctx.log("order", {"event": "exited"})
                    flip = s.get("flip_to")
                    s["flip_to"] = None
                    if flip:
                        await self._enter(flip, "reversal")
