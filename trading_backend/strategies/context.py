"""The real ``StrategyContext``: what a running strategy sees of the world.

Market reads go to the ``MarketReader``; orders go through the ``OrderService`` (risk
included) tagged with the strategy's id, so everything the strategy sees of its orders,
fills and positions is its own, never the user's manual trades or another strategy's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    Exchange,
    Fill,
    Order,
    OrderStatus,
    Position,
    Timeframe,
)
from trading_backend.domain.orders import MAX_TAG_LENGTH
from trading_backend.execution.order_service import OrderNotFound, OrderService
from trading_backend.storage.models import OrderRow, StrategySignalRow, TradeRow, utcnow
from trading_backend.storage.repositories import fill_from_row, order_from_row
from trading_backend.strategies.base import OptionQuote, TickView
from trading_backend.strategies.ports import MarketReader

WORKING_STATUSES = tuple(
    s.value
    for s in (
        OrderStatus.PENDING,
        OrderStatus.SUBMITTED,
        OrderStatus.OPEN,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.UNKNOWN,
    )
)


def strategy_tag(strategy_id: str) -> str:
    """The broker-side tag of a strategy's orders (brokers allow ``MAX_TAG_LENGTH``)."""
    return strategy_id[:MAX_TAG_LENGTH]


def jsonable(value: Any) -> Any:
    """Plain JSON types for the signal log: Decimals and dates become strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


async def strategy_fills(session: AsyncSession, user_id: str, strategy_id: str) -> list[Fill]:
    """The strategy's executions, oldest first (from trades of orders it placed)."""
    rows = (
        await session.scalars(
            select(TradeRow)
            .join(OrderRow, OrderRow.id == TradeRow.order_id)
            .where(OrderRow.strategy_id == strategy_id, OrderRow.user_id == user_id)
            .order_by(TradeRow.executed_at, TradeRow.id)
        )
    ).all()
    return [fill_from_row(row) for row in rows]


def order_log_entry(order: Order) -> dict[str, Any]:
    """What the signal log records of a placed order (live and in backtests alike)."""
    return {
        "order_id": order.order_id,
        "symbol": order.symbol,
        "exchange": order.exchange.value,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "quantity": order.quantity,
        "price": order.price,
        "status": order.status.value,
    }


def positions_from_fills(fills: Sequence[Fill]) -> list[Position]:
    """Average-cost positions per instrument, flat ones included (they carry realised P&L)."""
    positions: dict[tuple[str, str, str], Position] = {}
    for fill in fills:
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        position = positions.get(key)
        if position is None:
            position = positions[key] = Position(fill.symbol, fill.exchange, fill.product_type)
        position.apply(fill)
    return list(positions.values())


async def strategy_open_orders(
    session: AsyncSession, user_id: str, strategy_id: str
) -> list[Order]:
    rows = (
        await session.scalars(
            select(OrderRow)
            .where(
                OrderRow.strategy_id == strategy_id,
                OrderRow.user_id == user_id,
                OrderRow.status.in_(WORKING_STATUSES),
            )
            .order_by(OrderRow.created_at, OrderRow.id)
        )
    ).all()
    return [order_from_row(row) for row in rows]


class RunnerContext:
    """A strategy's window on the world (implements ``base.StrategyContext``).

    ``on_order_placed`` is told of every order the strategy placed, so its updates are
    routed back to it. ``order_wait`` is how long ``place_order`` waits for the broker's
    answer (the order is returned PENDING if it has not come by then).
    """

    def __init__(
        self,
        *,
        strategy_id: str,
        user_id: str,
        config_id: str,
        db: async_sessionmaker[AsyncSession],
        reader: MarketReader,
        order_service: OrderService,
        state: dict[str, Any] | None = None,
        order_wait: float = 5.0,
        on_order_placed: Callable[[Order], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.strategy_id = strategy_id
        self.user_id = user_id
        self.config_id = config_id
        self.state: dict[str, Any] = dict(state or {})
        self._db = db
        self._reader = reader
        self._orders = order_service
        self._order_wait = order_wait
        self._on_order_placed = on_order_placed
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def tag(self) -> str:
        return strategy_tag(self.strategy_id)

    def now(self) -> datetime:
        return self._clock()

    # -- market data -------------------------------------------------------------------
    async def quote(self, symbol: str, exchange: Exchange | str) -> TickView:
        return await self._reader.quote(symbol.upper(), Exchange(exchange))

    async def bars(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        return await self._reader.bars(
            symbol.upper(), Exchange(exchange), Timeframe(timeframe), count
        )

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]:
        return await self._reader.option_chain(underlying.upper(), expiry)

    # -- own orders and positions ------------------------------------------------------
    async def positions(self) -> Sequence[Position]:
        """Open positions (non-zero quantity) built from this strategy's own fills."""
        async with self._db() as session:
            fills = await strategy_fills(session, self.user_id, self.strategy_id)
        return [p for p in positions_from_fills(fills) if p.quantity != 0]

    async def open_orders(self) -> Sequence[Order]:
        async with self._db() as session:
            return await strategy_open_orders(session, self.user_id, self.strategy_id)

    async def place_order(self, order: BrokerOrder) -> Order:
        """Place through the normal order path. The order's ``tag`` is replaced by the
        strategy's tag (brokers carry it; our rows also carry ``strategy_id``)."""
        request = dataclasses.replace(order, tag=self.tag)
        result = await self._orders.place(
            self.user_id,
            self.config_id,
            request,
            strategy_id=self.strategy_id,
            wait=self._order_wait,
        )
        placed = result.order
        if self._on_order_placed is not None:
            self._on_order_placed(placed)
        await self.log("order", order_log_entry(placed))
        return placed

    async def cancel_order(self, order_id: str) -> Order:
        """Cancel one of this strategy's orders; any other id is ORDER_NOT_FOUND."""
        async with self._db() as session:
            owner = await session.scalar(
                select(OrderRow.strategy_id).where(
                    OrderRow.id == order_id, OrderRow.user_id == self.user_id
                )
            )
        if owner != self.strategy_id:
            raise OrderNotFound(f"order {order_id!r} not found")
        result = await self._orders.cancel(self.user_id, order_id, wait=self._order_wait)
        return result.order

    # -- log ---------------------------------------------------------------------------
    async def log(self, kind: str, data: dict[str, Any]) -> None:
        async with self._db() as session, session.begin():
            session.add(
                StrategySignalRow(
                    strategy_id=self.strategy_id,
                    user_id=self.user_id,
                    kind=str(kind)[:16],
                    data=jsonable(data),
                    created_at=utcnow(),
                )
            )
