"""The risk engine across processes (issue #7): two runtimes, each with its own engine, on
one PostgreSQL and one Redis, as two API instances of a cluster would be.

Concurrent orders through both cannot jointly breach a limit (each user's checks take a
cluster-wide lock and rebuild the user's books from the database first); a kill switch or
a limit set through one applies at once in the other; only the risk monitor's lease holder
acts on a loss-limit breach, so a position is squared off once, not once per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import select

from tests.conftest import REQUIRE_SERVICES, _truncate_postgres, make_settings
from tests.helpers import order, user_with_config
from trading_backend.domain import OrderStatus
from trading_backend.execution.order_service import OrderResult
from trading_backend.risk import RiskRejected, Scope, TradingState
from trading_backend.runtime import Runtime
from trading_backend.storage.models import AuditLogRow, OrderRow

OPEN = [s.value for s in OrderStatus if not s.is_final]
FIT = 23


@pytest.fixture
async def pair(
    tmp_path: Path, postgres_url: str | None, redis_url: str
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Two processes' runtimes of one cluster; the risk monitor refreshes only when told
    (a long period), so tests drive it."""
    if postgres_url is None:
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL required (REQUIRE_SERVICES=1) but TEST_DATABASE_URL is unset")
        pytest.skip("the cluster risk tests need PostgreSQL (TEST_DATABASE_URL)")
    await _truncate_postgres(postgres_url)
    settings = make_settings(
        tmp_path,
        postgres_url,
        redis_url=redis_url,
        event_bus="redis",
        queue_backend="redis",
        queue_prefix=f"tbtest:{uuid4().hex}:",
        rate_limit_enabled=False,
        risk_monitor_seconds=3600,
    )
    a, b = Runtime(settings), Runtime(settings)
    try:
        await a.start(worker=True, market=False, health_monitor=False)
        await b.start(worker=True, market=False, health_monitor=False, migrate=False)
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def working(runtime: Runtime, config_id: str) -> set[str]:
    async with runtime.db() as session:
        return set(
            (
                await session.scalars(
                    select(OrderRow.id).where(
                        OrderRow.config_id == config_id, OrderRow.status.in_(OPEN)
                    )
                )
            ).all()
        )


def resting_price(runtime: Runtime, symbol: str) -> Decimal:
    last = runtime.market.quote(symbol, "NSE").ltp
    return (last * Decimal("0.97") / Decimal("0.05")).to_integral_value() * Decimal("0.05")


async def race(
    runtimes: tuple[Runtime, Runtime], user_id: str, config_id: str, each: int, **kw: Any
) -> tuple[list[OrderResult], list[RiskRejected]]:
    """``each`` resting orders through each runtime at once."""
    results = await asyncio.gather(
        *(
            rt.orders.place(user_id, config_id, order(**kw), intentional=True, wait=30)
            for _ in range(each)
            for rt in runtimes
        ),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, OrderResult)]
    rejected = [r for r in results if isinstance(r, RiskRejected)]
    assert len(accepted) + len(rejected) == len(results), [
        r for r in results if not isinstance(r, OrderResult | RiskRejected)
    ][:3]
    return accepted, rejected


@pytest.mark.parametrize("rule", ["max_open_orders", "symbol_exposure"])
async def test_orders_through_two_processes_cannot_jointly_breach_a_limit(
    pair: tuple[Runtime, Runtime], rule: str
) -> None:
    a, b = pair
    user_id, config_id = await user_with_config(a)
    price = resting_price(a, "TCS")
    room = a.market.quote("TCS", "NSE").ltp * FIT  # a resting BUY reserves at the last price
    limits: dict[str, Any] = {"order_rate_per_second": 1000}
    limits.update(
        {
            "max_open_orders": {"max_open_orders": FIT},
            "symbol_exposure": {"max_symbol_exposure": room},
        }[rule]
    )
    await a.risk_service.set_limits(user_id, limits, kind="ceiling", by="admin")

    accepted, rejected = await race((a, b), user_id, config_id, 40, order_type="LIMIT", price=price)
    assert len(accepted) == FIT, (len(accepted), [e.details for e in rejected][:2])
    assert {e.details["rule"] for e in rejected} == {rule}
    assert {r.order.status for r in accepted} == {OrderStatus.OPEN}
    assert await working(a, config_id) == {r.order.order_id for r in accepted}
    # Both processes' orders are among the accepted ones: the limit was shared, not split.
    by_b = await working(b, config_id)
    assert by_b == await working(a, config_id)

    # Without the cluster lock each engine sees only its own orders: the same race overshoots.
    for order_id in by_b:
        await a.orders.cancel(user_id, order_id, wait=10)
    a.risk_service.user_lock = b.risk_service.user_lock = None
    for rt in (a, b):
        await rt.risk_service.sync_user(user_id)  # both start from the same (empty) book
    accepted, _ = await race((a, b), user_id, config_id, 40, order_type="LIMIT", price=price)
    assert len(accepted) > FIT


async def test_kill_switch_and_limits_set_in_one_process_apply_in_the_other_at_once(
    pair: tuple[Runtime, Runtime],
) -> None:
    a, b = pair
    user_id, config_id = await user_with_config(a)
    await b.orders.place(user_id, config_id, order(), wait=10)  # b knows the user (ACTIVE)

    await a.risk_service.kill_switch(Scope.for_user(user_id), by="admin", reason="desk")
    with pytest.raises(RiskRejected) as refused:
        await b.orders.place(user_id, config_id, order(), intentional=True, wait=10)
    assert refused.value.details["rule"] == "trading_state"
    assert refused.value.details["limit"] == "HALTED"

    await a.risk_service.reset(Scope.for_user(user_id), by="admin")
    placed = await b.orders.place(user_id, config_id, order(), intentional=True, wait=10)
    assert placed.order.status is OrderStatus.FILLED

    await a.risk_service.set_limits(user_id, {"max_order_quantity": 5}, kind="own", by=user_id)
    with pytest.raises(RiskRejected) as too_big:
        await b.orders.place(user_id, config_id, order(quantity=6), wait=10)
    assert too_big.value.details["rule"] == "max_order_quantity"


async def test_only_the_risk_monitor_acts_on_a_breach(pair: tuple[Runtime, Runtime]) -> None:
    a, b = pair
    waits = [asyncio.ensure_future(rt.risk_service.monitoring.wait()) for rt in (a, b)]
    done, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "no process took the risk monitor's lease"
    monitor, other = (a, b) if a.risk_service.acts_on_breaches else (b, a)
    assert not other.risk_service.acts_on_breaches  # exactly one holder

    user_id, config_id = await user_with_config(a)
    await a.risk_service.set_limits(
        user_id, {"daily_loss_limit": 1000, "square_off_on_breach": True}, kind="ceiling", by="a"
    )
    bought = await other.orders.place(user_id, config_id, order(quantity=10), wait=10)
    assert bought.order.status is OrderStatus.FILLED
    drop = bought.order.average_price * Decimal("0.9")  # 10 x 10% of ~3150: beyond 1000
    for rt in (a, b):
        await rt.market.set_price("TCS", "NSE", drop)
    await other.risk_service.settle()
    # The other process saw the loss at its prices but judged nothing.
    assert other.risk_engine.effective_state(user_id, config_id)[0] is TradingState.ACTIVE

    await monitor.risk_service.monitor_round()
    for rt in (a, b):
        await rt.risk_service.settle()
    async with a.db() as session:
        breaches = (
            await session.scalars(select(AuditLogRow).where(AuditLogRow.action == "risk.breach"))
        ).all()
        squares = (
            await session.scalars(select(OrderRow).where(OrderRow.tag == "risk-squareoff"))
        ).all()
    assert len(breaches) == 1 and breaches[0].target == f"user:{user_id}"
    assert [(s.side, s.quantity, s.status) for s in squares] == [("SELL", 10, "FILLED")]
    # A second round finds the user HALTED already: no second square-off.
    await monitor.risk_service.monitor_round()
    with pytest.raises(RiskRejected) as halted:
        await other.orders.place(user_id, config_id, order(), intentional=True, wait=10)
    assert halted.value.details["rule"] == "trading_state"
    async with a.db() as session:
        again = (
            await session.scalars(select(OrderRow).where(OrderRow.tag == "risk-squareoff"))
        ).all()
    assert len(again) == 1
