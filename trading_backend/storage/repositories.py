"""Repositories: the only place that maps rows to domain objects. Every read that serves a
user takes that user's id, so a query can never return another user's rows."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from trading_backend.domain import (
    Exchange,
    Fill,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    ProductType,
    Validity,
)
from trading_backend.storage.models import (
    BrokerConfig,
    OrderEventRow,
    OrderRow,
    PositionRow,
    TradeRow,
    User,
    utcnow,
)


def fill_from_row(row: TradeRow) -> Fill:
    """A stored trade as the domain's ``Fill``."""
    return Fill(
        trade_id=row.trade_id,
        broker_order_id=row.broker_order_id,
        symbol=row.symbol,
        exchange=Exchange(row.exchange),
        side=OrderSide(row.side),
        product_type=ProductType(row.product_type),
        quantity=row.quantity,
        price=row.price,
        charges=row.charges or Decimal(0),
        timestamp=row.executed_at,
    )


def order_from_row(row: OrderRow) -> Order:
    return Order(
        order_id=row.id,
        user_id=row.user_id,
        config_id=row.config_id,
        symbol=row.symbol,
        exchange=Exchange(row.exchange),
        side=OrderSide(row.side),
        order_type=OrderType(row.order_type),
        product_type=ProductType(row.product_type),
        quantity=row.quantity,
        price=row.price,
        trigger_price=row.trigger_price,
        validity=Validity(row.validity),
        tag=row.tag,
        client_order_id=row.client_order_id,
        status=OrderStatus(row.status),
        filled_quantity=row.filled_quantity,
        average_price=row.average_price or Decimal(0),
        broker_order_id=row.broker_order_id,
        error_code=row.error_code,
        message=row.message,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def copy_order_to_row(order: Order, row: OrderRow) -> None:
    row.order_type = order.order_type.value
    row.quantity = order.quantity
    row.price = order.price
    row.trigger_price = order.trigger_price
    row.status = order.status.value
    row.filled_quantity = order.filled_quantity
    row.average_price = order.average_price
    row.broker_order_id = order.broker_order_id
    row.error_code = order.error_code
    row.message = order.message
    row.updated_at = utcnow()
    row.version = (row.version or 0) + 1


def new_order_row(order: Order, priority: int, correlation_id: str | None) -> OrderRow:
    return OrderRow(
        id=order.order_id,
        user_id=order.user_id,
        config_id=order.config_id,
        client_order_id=order.client_order_id or order.order_id,
        symbol=order.symbol,
        exchange=order.exchange.value,
        side=order.side.value,
        order_type=order.order_type.value,
        product_type=order.product_type.value,
        validity=order.validity.value,
        quantity=order.quantity,
        price=order.price,
        trigger_price=order.trigger_price,
        tag=order.tag,
        status=order.status.value,
        filled_quantity=0,
        average_price=Decimal(0),
        priority=priority,
        correlation_id=correlation_id,
        version=0,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def add_event(
    session: AsyncSession,
    row: OrderRow,
    event_type: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    data: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> None:
    session.add(
        OrderEventRow(
            order_id=row.id,
            user_id=row.user_id,
            event_type=event_type,
            from_status=from_status,
            to_status=to_status,
            data=data or {},
            correlation_id=correlation_id or row.correlation_id,
            created_at=utcnow(),
        )
    )


def position_from_row(row: PositionRow) -> Position:
    return Position(
        symbol=row.symbol,
        exchange=Exchange(row.exchange),
        product_type=ProductType(row.product_type),
        quantity=row.quantity,
        average_price=row.average_price,
        realised_pnl=row.realised_pnl,
        charges=row.charges,
        buy_quantity=row.buy_quantity,
        sell_quantity=row.sell_quantity,
        buy_value=row.buy_value,
        sell_value=row.sell_value,
    )


async def apply_fill_to_position(
    session: AsyncSession, user_id: str, config_id: str, fill: Fill
) -> None:
    row = await session.scalar(
        select(PositionRow).where(
            PositionRow.config_id == config_id,
            PositionRow.exchange == fill.exchange.value,
            PositionRow.symbol == fill.symbol,
            PositionRow.product_type == fill.product_type.value,
        )
    )
    if row is None:
        row = PositionRow(
            user_id=user_id,
            config_id=config_id,
            symbol=fill.symbol,
            exchange=fill.exchange.value,
            product_type=fill.product_type.value,
            quantity=0,
            average_price=Decimal(0),
            realised_pnl=Decimal(0),
            charges=Decimal(0),
            buy_quantity=0,
            sell_quantity=0,
            buy_value=Decimal(0),
            sell_value=Decimal(0),
        )
        session.add(row)
    position = position_from_row(row)
    position.apply(fill)
    row.quantity = position.quantity
    row.average_price = position.average_price
    row.realised_pnl = position.realised_pnl
    row.charges = position.charges
    row.buy_quantity = position.buy_quantity
    row.sell_quantity = position.sell_quantity
    row.buy_value = position.buy_value
    row.sell_value = position.sell_value
    row.updated_at = utcnow()


class UserScopedReader:
    """Read models for the API, always filtered by the caller's user id."""

    def __init__(self, session: AsyncSession, user_id: str) -> None:
        self.session = session
        self.user_id = user_id

    async def config(self, config_id: str) -> BrokerConfig | None:
        return await self.session.scalar(
            select(BrokerConfig).where(
                BrokerConfig.id == config_id,
                BrokerConfig.user_id == self.user_id,
                BrokerConfig.is_active.is_(True),
            )
        )

    async def configs(self) -> Sequence[BrokerConfig]:
        return (
            await self.session.scalars(
                select(BrokerConfig)
                .where(BrokerConfig.user_id == self.user_id, BrokerConfig.is_active.is_(True))
                .order_by(BrokerConfig.created_at)
            )
        ).all()

    async def order(self, order_id: str) -> OrderRow | None:
        return await self.session.scalar(
            select(OrderRow).where(OrderRow.id == order_id, OrderRow.user_id == self.user_id)
        )

    async def order_by_client_id(self, client_order_id: str) -> OrderRow | None:
        return await self.session.scalar(
            select(OrderRow).where(
                OrderRow.user_id == self.user_id, OrderRow.client_order_id == client_order_id
            )
        )

    async def orders(
        self,
        config_id: str | None = None,
        status: str | None = None,
        limit: int = 500,
        offset: int = 0,
    ) -> Sequence[OrderRow]:
        query = select(OrderRow).where(OrderRow.user_id == self.user_id)
        if config_id:
            query = query.where(OrderRow.config_id == config_id)
        if status:
            query = query.where(OrderRow.status == status)
        query = query.order_by(OrderRow.created_at.desc(), OrderRow.id).limit(limit).offset(offset)
        return (await self.session.scalars(query)).all()

    async def events(self, order_id: str) -> Sequence[OrderEventRow]:
        return (
            await self.session.scalars(
                select(OrderEventRow)
                .where(OrderEventRow.order_id == order_id, OrderEventRow.user_id == self.user_id)
                .order_by(OrderEventRow.id)
            )
        ).all()

    async def trades(
        self, config_id: str | None = None, limit: int = 500, offset: int = 0
    ) -> Sequence[TradeRow]:
        query = select(TradeRow).where(TradeRow.user_id == self.user_id)
        if config_id:
            query = query.where(TradeRow.config_id == config_id)
        query = query.order_by(TradeRow.executed_at.desc(), TradeRow.id).limit(limit).offset(offset)
        return (await self.session.scalars(query)).all()

    async def positions(self, config_id: str | None = None) -> Sequence[PositionRow]:
        query = select(PositionRow).where(PositionRow.user_id == self.user_id)
        if config_id:
            query = query.where(PositionRow.config_id == config_id)
        return (await self.session.scalars(query.order_by(PositionRow.id))).all()


async def add_audit(
    session: AsyncSession,
    action: str,
    *,
    user_id: str | None,
    target: str | None = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
    correlation_id: str | None = None,
) -> None:
    """Record an audit row in the session's transaction. It joins the tamper-evident hash
    chain when the transaction commits (see ``accounts/audit.py``) and vanishes if it rolls
    back. Secret-looking keys in ``data`` are redacted; a missing ``correlation_id`` is taken
    from the current request or job."""
    # Imported here: audit.py must not depend on this module's import order.
    from trading_backend.accounts import audit

    audit.stage(
        session,
        action,
        user_id=user_id,
        target=target,
        data=data,
        ip=ip,
        correlation_id=correlation_id,
    )  # inserted, chained and hashed at commit


async def find_user(session: AsyncSession, id_or_username: str) -> User | None:
    user = await session.get(User, id_or_username)
    if user is None:
        user = await session.scalar(select(User).where(User.username == id_or_username))
    return user
