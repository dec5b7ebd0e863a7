"""The whole order path on the paper broker: accept, persist, queue, submit, fill, record.
Runs on SQLite and (with TEST_DATABASE_URL) on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.helpers import order, user_with_config
from trading_backend.domain import DomainError, ErrorCode, OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.storage.models import OrderEventRow, PositionRow, QueueEntryRow, TradeRow


async def count(runtime: Runtime, model: type, *where: object) -> int:
    async with runtime.db() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_market_order_fills_and_is_recorded(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    result = await runtime.orders.place(user_id, config_id, order(quantity=3), wait=5)
    placed = result.order
    assert placed.status is OrderStatus.FILLED
    assert placed.filled_quantity == 3
    assert placed.broker_order_id
    quote = runtime.market.quote("TCS", "NSE")
    assert placed.average_price == quote.ask  # fills at the touch, no slippage by default
    assert await count(runtime, TradeRow, TradeRow.order_id == placed.order_id) >= 1
    async with runtime.db() as session:
        position = await session.scalar(
            select(PositionRow).where(PositionRow.config_id == config_id)
        )
        events = (
            await session.scalars(
                select(OrderEventRow.event_type).where(OrderEventRow.order_id == placed.order_id)
            )
        ).all()
    assert position is not None and position.quantity == 3
    assert events[0] == "ACCEPTED" and "SUBMITTED" in events and "FILL" in events
    assert await count(runtime, QueueEntryRow) == 0


async def test_limit_order_rests_then_fills_when_price_crosses(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    ltp = runtime.market.quote("INFY", "NSE").ltp
    limit = ltp - Decimal("20")
    result = await runtime.orders.place(
        user_id,
        config_id,
        order(symbol="INFY", order_type="LIMIT", price=limit, quantity=2),
        wait=5,
    )
    assert result.order.status is OrderStatus.OPEN
    await runtime.market.set_price("INFY", "NSE", limit - Decimal("1"))
    filled = await runtime.orders.get(user_id, result.order.order_id)
    assert filled.status is OrderStatus.FILLED
    assert filled.average_price <= limit


async def test_stop_orders_trigger(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    ltp = runtime.market.quote("SBIN", "NSE").ltp
    trigger = ltp + Decimal("10")
    sl_m = await runtime.orders.place(
        user_id, config_id, order(symbol="SBIN", order_type="SL_M", trigger_price=trigger), wait=5
    )
    sl = await runtime.orders.place(
        user_id,
        config_id,
        order(symbol="SBIN", order_type="SL", trigger_price=trigger, price=trigger + Decimal("5")),
        wait=5,
    )
    assert sl_m.order.status is OrderStatus.OPEN and sl.order.status is OrderStatus.OPEN
    await runtime.market.set_price("SBIN", "NSE", trigger + Decimal("1"))
    for placed in (sl_m, sl):
        final = await runtime.orders.get(user_id, placed.order.order_id)
        assert final.status is OrderStatus.FILLED, final


async def test_modify_and_cancel_open_orders(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    ltp = runtime.market.quote("TCS", "NSE").ltp
    low = (ltp * Decimal("0.96")).quantize(Decimal("0.1"))
    placed = await runtime.orders.place(
        user_id, config_id, order(order_type="LIMIT", price=low, quantity=4), wait=5
    )
    modified = await runtime.orders.modify(
        user_id, placed.order.order_id, price=low - Decimal("1"), quantity=6, wait=5
    )
    assert modified.outcome is not None and modified.outcome.ok
    assert modified.order.price == low - Decimal("1") and modified.order.quantity == 6
    cancelled = await runtime.orders.cancel(user_id, placed.order.order_id, wait=5)
    assert cancelled.order.status is OrderStatus.CANCELLED
    again = await runtime.orders.get(user_id, placed.order.order_id)
    assert again.status is OrderStatus.CANCELLED


async def test_insufficient_funds_is_rejected_with_its_code(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime, initial_capital=10_000)
    result = await runtime.orders.place(user_id, config_id, order(quantity=100), wait=5)
    assert result.order.status is OrderStatus.REJECTED
    assert result.order.error_code == ErrorCode.INSUFFICIENT_FUNDS.value


async def test_client_order_id_makes_placement_idempotent(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    first = await runtime.orders.place(user_id, config_id, order(client_order_id="abc-1"), wait=5)
    second = await runtime.orders.place(user_id, config_id, order(client_order_id="abc-1"), wait=5)
    assert second.created is False
    assert second.order.order_id == first.order.order_id
    session = await runtime.sessions.open(user_id, config_id)
    assert len(await session.broker.get_orders()) == 1


async def test_unknown_config_is_config_not_found(runtime: Runtime) -> None:
    user_id, _ = await user_with_config(runtime)
    _, other_config = await user_with_config(runtime, "bob")
    for config in ("nope", other_config):
        with pytest.raises(DomainError) as info:
            await runtime.orders.place(user_id, config, order(), wait=1)
        assert info.value.code is ErrorCode.CONFIG_NOT_FOUND


async def test_day_orders_expire_at_the_session_close(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    ltp = runtime.market.quote("INFY", "NSE").ltp
    day = await runtime.orders.place(
        user_id, config_id, order(symbol="INFY", order_type="LIMIT", price=ltp - 50), wait=5
    )
    assert day.order.status is OrderStatus.OPEN
    assert await runtime.expire_day_orders(datetime.now(UTC)) == 0  # no close since placing
    assert await runtime.expire_day_orders(datetime.now(UTC) + timedelta(days=4)) == 1
    expired = await runtime.orders.get(user_id, day.order.order_id)
    assert expired.status is OrderStatus.EXPIRED


async def test_a_modification_passes_the_risk_engine_like_a_new_order(runtime: Runtime) -> None:
    """Raising a resting order's quantity past max_order_value is refused; the order and
    its reservation stay as they were."""
    from trading_backend.risk import RiskLimits

    user_id, config_id = await user_with_config(runtime)
    runtime.risk_engine.set_limits(user_id, None, RiskLimits(max_order_value=Decimal("50000")))
    ltp = runtime.market.quote("TCS", "NSE").ltp
    low = (ltp * Decimal("0.97")).quantize(Decimal("0.1"))
    placed = await runtime.orders.place(
        user_id, config_id, order(order_type="LIMIT", price=low, quantity=2), wait=5
    )
    assert placed.order.status is OrderStatus.OPEN
    with pytest.raises(DomainError) as refused:
        await runtime.orders.modify(user_id, placed.order.order_id, quantity=100, wait=5)
    assert refused.value.code is ErrorCode.RISK_REJECTED
    assert refused.value.details["rule"] == "max_order_value"
    unchanged = await runtime.orders.get(user_id, placed.order.order_id)
    assert unchanged.quantity == 2 and unchanged.status is OrderStatus.OPEN
    reserved = runtime.risk_engine.open_order(placed.order.order_id)
    assert reserved is not None and reserved.remaining == 2
    assert runtime.risk_engine.open_order_ids(config_id) == [placed.order.order_id]
    # A modification within the limits goes through.
    modified = await runtime.orders.modify(user_id, placed.order.order_id, quantity=3, wait=5)
    assert modified.order.quantity == 3
