"""``BacktestContext``: the ``StrategyContext`` a strategy sees during a backtest.

Same contract as the live ``RunnerContext``, answered from the replay instead of the
database and the market hub:

* ``now()`` is the replay's clock: the time of the current price point;
* ``bars()`` returns only bars already *delivered* to the strategy (completed), never the
  forming one, so a strategy cannot look ahead;
* ``quote()`` is the instrument's last price point (bid/ask per the configured spread);
* ``positions()``/``open_orders()`` come from the simulated paper account (the whole
  account is this strategy's);
* ``place_order``/``cancel_order`` go to the simulated paper account at once, matched
  against the current price point, and raise the account's ``BrokerError`` (a
  ``DomainError``) when it refuses; the order updates they cause reach
  ``on_order_update`` after the current callback returns, as live;
* ``state`` is a plain dict (checked to be JSON at the end of the run);
* ``log()`` entries are kept in the result, stamped with the replay's time.

Not available in a backtest: ``option_chain`` (no chain history), which raises
``DomainError(VALIDATION_ERROR)``. The risk engine is not applied either: a backtest
measures the strategy, the risk limits belong to the account it will run on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trading_backend.backtest.broker import SimulatedBroker
from trading_backend.backtest.market import BacktestMarket
from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Order,
    Position,
    Timeframe,
)
from trading_backend.strategies.base import OptionQuote, TickView
from trading_backend.strategies.context import order_log_entry, strategy_tag

__all__ = ["BacktestContext", "LogEntry"]


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class LogEntry:
    timestamp: datetime
    kind: str
    data: dict[str, Any]


class BacktestContext:
    """Implements ``strategies.base.StrategyContext`` over a replay (see the module doc)."""

    def __init__(
        self,
        *,
        strategy_id: str,
        market: BacktestMarket,
        broker: SimulatedBroker,
        series: list[Sequence[Bar]],
        delivered: list[int],
        timeframe: Timeframe,
        clock: Callable[[], datetime],
        state: dict[str, Any] | None = None,
    ) -> None:
        self.strategy_id = strategy_id
        self.user_id = "backtest"
        self.config_id = "backtest"
        self.state: dict[str, Any] = dict(state or {})
        self.logs: list[LogEntry] = []
        self.order_actions = 0
        self._market = market
        self._broker = broker
        self._series = series
        self._delivered = delivered
        self._timeframe = timeframe
        self._clock = clock
        self._tag = strategy_tag(strategy_id)

    def now(self) -> datetime:
        return self._clock()

    # -- market data ---------------------------------------------------------------------
    def _slot(self, symbol: str, exchange: Exchange | str) -> int:
        try:
            exch = Exchange(exchange)
        except ValueError:
            exch = None
        slot = None if exch is None else self._market.slots.get(f"{exch.value}:{symbol.upper()}")
        if slot is None:
            raise DomainError(
                f"{exchange}:{symbol} is not part of this backtest",
                ErrorCode.INSTRUMENT_NOT_FOUND,
                symbol=symbol,
                exchange=str(exchange),
            )
        return slot

    async def quote(self, symbol: str, exchange: Exchange | str) -> TickView:
        slot = self._slot(symbol, exchange)
        try:
            return self._market.tick_view(slot)
        except KeyError:
            raise DomainError(
                f"{exchange}:{symbol} has no price yet", ErrorCode.INSTRUMENT_NOT_FOUND
            ) from None

    async def bars(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        """The last ``count`` bars delivered so far (oldest first); other timeframes than
        the backtest's have none."""
        slot = self._slot(symbol, exchange)
        if Timeframe(timeframe) is not self._timeframe or count <= 0:
            return []
        done = self._delivered[slot]
        return list(self._series[slot][max(0, done - count) : done])

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]:
        raise DomainError(
            "option chains are not available in a backtest", ErrorCode.VALIDATION_ERROR
        )

    # -- own orders and positions ----------------------------------------------------------
    async def positions(self) -> Sequence[Position]:
        return self._broker.positions()

    async def open_orders(self) -> Sequence[Order]:
        return self._broker.working_orders()

    async def place_order(self, order: BrokerOrder) -> Order:
        self.order_actions += 1
        now = self._clock()
        placed = self._broker.place(order, now, self._tag)
        self.logs.append(LogEntry(now, "order", order_log_entry(placed)))
        return placed

    async def cancel_order(self, order_id: str) -> Order:
        self.order_actions += 1
        if order_id not in self._broker.orders:
            raise DomainError(f"order {order_id!r} not found", ErrorCode.ORDER_NOT_FOUND)
        return self._broker.cancel(order_id, self._clock())

    # -- log -------------------------------------------------------------------------------
    async def log(self, kind: str, data: dict[str, Any]) -> None:
        """Kept as given (a shallow copy); made JSON when the result is serialised."""
        self.logs.append(LogEntry(self._clock(), str(kind)[:16], dict(data)))
