"""Strategies that act from a script and record what they saw, for the engine tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import Field

from trading_backend.domain import Bar, BrokerOrder, DomainError, Exchange, Order, Timeframe
from trading_backend.strategies.base import BaseStrategy, StrategyParams, Subscription, TickView
from trading_backend.strategies.registry import StrategyRegistry

T0 = datetime(2025, 1, 6, 3, 45, tzinfo=UTC)  # a Monday, 09:15 IST


def bars_from(
    rows: Sequence[tuple[object, object, object, object]],
    *,
    symbol: str = "INFY",
    exchange: Exchange = Exchange.NSE,
    timeframe: Timeframe = Timeframe.M15,
    start: datetime = T0,
    volume: int = 1_000,
) -> list[Bar]:
    """Bars from ``(open, high, low, close)`` rows, ``timeframe`` apart from ``start``."""
    step = timeframe.duration
    return [
        Bar(
            symbol,
            exchange,
            timeframe,
            start + i * step,
            start + (i + 1) * step,
            *(Decimal(str(v)) for v in row),
            volume,
        )
        for i, row in enumerate(rows)
    ]


@dataclass
class Seen:
    """One ``on_bar`` call as the strategy saw it."""

    bar: Bar
    now: datetime
    history: list[Bar]
    quotes: dict[str, Decimal]


class ScriptParams(StrategyParams):
    instruments: list[str] = Field(default_factory=lambda: ["NSE:INFY"])
    timeframe: Timeframe = Timeframe.M15
    # "SYMBOL:index" (the index-th bar of that symbol) -> orders to place on it
    orders: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    ticks: bool = False
    fail_on: int | None = None  # raise in on_bar of this index


class Script(BaseStrategy):
    name = "script"
    Params = ScriptParams

    def __init__(self, context: Any, params: StrategyParams) -> None:
        super().__init__(context, params)
        assert isinstance(params, ScriptParams)
        self.p = params
        self.seen: list[Seen] = []
        self.updates: list[Order] = []
        self.ticks: list[TickView] = []
        self.placed: list[Order] = []
        self.refused: list[DomainError] = []
        self.count: dict[str, int] = {}

    def subscriptions(self) -> Sequence[Subscription]:
        subs = []
        for text in self.p.instruments:
            exchange, symbol = text.split(":")
            subs.append(Subscription(symbol, Exchange(exchange), (self.p.timeframe,), self.p.ticks))
        return subs

    async def on_bar(self, bar: Bar) -> None:
        index = self.count.get(bar.symbol, 0)
        self.count[bar.symbol] = index + 1
        if self.p.fail_on is not None and index == self.p.fail_on:
            raise RuntimeError("scripted failure")
        history = list(await self.ctx.bars(bar.symbol, bar.exchange, bar.timeframe, 1000))
        quotes = {}
        for text in self.p.instruments:
            exchange, symbol = text.split(":")
            quotes[symbol] = (await self.ctx.quote(symbol, exchange)).ltp
        self.seen.append(Seen(bar, self.ctx.now(), history, quotes))
        for spec in self.p.orders.get(f"{bar.symbol}:{index}", []):
            request = BrokerOrder(**{"symbol": bar.symbol, "exchange": bar.exchange, **spec})
            try:
                self.placed.append(await self.ctx.place_order(request))
            except DomainError as exc:
                self.refused.append(exc)
        self.ctx.state["bars"] = self.ctx.state.get("bars", 0) + 1

    async def on_tick(self, tick: TickView) -> None:
        self.ticks.append(tick)

    async def on_order_update(self, order: Order) -> None:
        self.updates.append(order)


def registry() -> StrategyRegistry:
    reg = StrategyRegistry(include_builtins=True)
    reg.register(Script)
    return reg


def at(bar: Bar, quarter: int) -> datetime:
    """The time of the ``quarter``-th point of the bar's path."""
    return bar.start + (bar.end - bar.start) / 4 * quarter


__all__ = ["T0", "Script", "Seen", "at", "bars_from", "registry", "timedelta"]
