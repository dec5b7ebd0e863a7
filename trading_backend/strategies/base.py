"""The strategy contract: what a strategy implements and what it may call.

A strategy keeps the seed's shape (``generate_signals`` then ``execute_trades``) and adds
event callbacks. The runner calls, for each strategy it runs::

    on_start()                       once, after (re)loading persisted state
    on_tick(quote)                   every tick of a subscribed instrument
    on_bar(bar)                      every completed bar of a subscribed timeframe;
                                     the default implementation is
                                     ``await self.execute_trades(await self.generate_signals())``
    on_order_update(order)           every state change of an order this strategy placed
    on_stop()                        once, when stopped (not when it crashed)

A strategy talks to the world only through its :class:`StrategyContext`: market data, its
own orders and positions, ``place_order``/``cancel_order`` (the normal order path, risk
included, tagged with the strategy's id) and ``state``, a JSON-serialisable dict the runner
persists (at once after order activity, batched otherwise), so a restart resumes where it
left off. Exceptions escape to
the runner, which stops this strategy only, records the error and alerts.

Parameters are a pydantic model (``Params``), validated when the strategy is created and
published in the API schema.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from trading_backend.domain import Bar, BrokerOrder, Exchange, Order, Position, Timeframe


class StrategyParams(BaseModel):
    """Base of every strategy's parameter model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Subscription:
    """An instrument a strategy watches, and the bar timeframes it wants."""

    symbol: str
    exchange: Exchange
    timeframes: tuple[Timeframe, ...] = (Timeframe.M1,)
    ticks: bool = False  # deliver on_tick too (bars are always delivered)

    @property
    def key(self) -> str:
        return f"{self.exchange.value}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class Signal:
    """An intention, logged in the strategy's signal log before it becomes orders."""

    symbol: str
    exchange: Exchange
    action: str  # "BUY", "SELL", "EXIT" or anything a strategy documents
    quantity: int = 0
    price: Decimal | None = None
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TickView:
    """What a strategy sees of a tick (a subset of the broker's quote)."""

    symbol: str
    exchange: Exchange
    ltp: Decimal
    bid: Decimal
    ask: Decimal
    volume: int
    timestamp: datetime

    @property
    def key(self) -> str:
        return f"{self.exchange.value}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """One option in a chain, with greeks (per 1 unit of the underlying)."""

    symbol: str
    strike: Decimal
    option_type: str  # "CE" or "PE"
    expiry: datetime
    ltp: Decimal
    bid: Decimal
    ask: Decimal
    iv: float
    delta: float
    gamma: float
    theta: float
    vega: float
    lot_size: int


class StrategyContext(Protocol):
    """Everything a strategy may use. The runner provides the real one; tests may fake it."""

    strategy_id: str
    user_id: str
    config_id: str
    state: dict[str, Any]  # persisted by the runner (see runner.py); JSON types only

    def now(self) -> datetime: ...

    async def quote(self, symbol: str, exchange: Exchange | str) -> TickView: ...

    async def bars(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        """The last ``count`` completed bars, oldest first (history, then live bars)."""
        ...

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]: ...

    async def positions(self) -> Sequence[Position]:
        """This strategy's own positions (from its own fills)."""
        ...

    async def open_orders(self) -> Sequence[Order]:
        """This strategy's working orders."""
        ...

    async def place_order(self, order: BrokerOrder) -> Order:
        """Through the normal order path (risk included); returns the order as it stands
        when the broker answered (or PENDING). Raises ``DomainError`` when refused."""
        ...

    async def cancel_order(self, order_id: str) -> Order: ...

    async def log(self, kind: str, data: dict[str, Any]) -> None:
        """Append to the strategy's signal log (kind: signal, order, info, error)."""
        ...


class BaseStrategy(ABC):  # noqa: B024 - every hook has a default; subclasses pick theirs
    """Subclass, set ``name``/``description``/``Params``, override the hooks you need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = "custom"  # equity | derivatives | crypto | custom
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, context: StrategyContext, params: StrategyParams) -> None:
        self.ctx = context
        self.params = params

    def subscriptions(self) -> Sequence[Subscription]:
        """Instruments (and timeframes) to feed this strategy; read after ``on_start``."""
        return ()

    async def on_start(self) -> None:
        return None

    async def on_tick(self, tick: TickView) -> None:
        return None

    async def on_bar(self, bar: Bar) -> None:
        await self.execute_trades(await self.generate_signals())

    async def on_order_update(self, order: Order) -> None:
        return None

    async def on_stop(self) -> None:
        return None

    # The seed's shape.
    async def generate_signals(self) -> list[Signal]:
        return []

    async def execute_trades(self, signals: list[Signal]) -> None:
        for signal in signals:
            await self.ctx.log(
                "signal",
                {
                    "symbol": signal.symbol,
                    "action": signal.action,
                    "quantity": signal.quantity,
                    "reason": signal.reason,
                },
            )
