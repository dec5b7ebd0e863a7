"""The risk engine in the running system, end to end on the paper broker: the order path
under concurrency, loss-limit breaches, kill switches, restarts, the intraday square-off,
audit and metrics, strategies. SQLite always, PostgreSQL with TEST_DATABASE_URL.

No sleeps: the market is driven with ``set_price``, orders are waited for through the
queue (``place(..., wait=5)``; the paper broker fills a MARKET order when it is placed) and
the risk service's background work (breach handling, audit rows, charges, subscriptions)
with ``risk_service.settle()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import Field
from sqlalchemy import select

from tests.helpers import order, user_with_config
from tests.strategies.conftest import toy_registry
from tests.strategies.fakes import FakeFeed, FakeReader, make_bar
from trading_backend.domain import Bar, BrokerOrder, DomainError, ErrorCode, Exchange, OrderStatus
from trading_backend.execution.order_service import OrderResult
from trading_backend.risk import RiskRejected, Scope, TradingState
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.storage.models import (
    AuditLogRow,
    OrderRow,
    PositionRow,
    RiskStateRow,
    StrategyRow,
    TradeRow,
)
from trading_backend.strategies.base import BaseStrategy, StrategyParams, Subscription
from trading_backend.strategies.runner import StrategyRunner

OPEN_STATUSES = [s.value for s in OrderStatus if not s.is_final]
TICK = Decimal("0.05")


# -- helpers ---------------------------------------------------------------------------------


async def set_ceiling(runtime: Runtime, user_id: str, config_id: str | None = None, **values: Any):
    """An administrator's ceiling (may loosen the defaults, e.g. the order rate)."""
    return await runtime.risk_service.set_limits(
        user_id, values, kind="ceiling", by="admin", config_id=config_id
    )


async def set_own(runtime: Runtime, user_id: str, config_id: str | None = None, **values: Any):
    """The user's own limits (tightening only)."""
    return await runtime.risk_service.set_limits(
        user_id, values, kind="own", by=user_id, config_id=config_id
    )


def ltp(runtime: Runtime, symbol: str) -> Decimal:
    return runtime.market.quote(symbol, "NSE").ltp


def resting_buy_price(runtime: Runtime, symbol: str) -> Decimal:
    """A LIMIT BUY price 3% under the last price: inside the 5% band, rests at the broker."""
    return (ltp(runtime, symbol) * Decimal("0.97") / TICK).to_integral_value() * TICK


async def rest(
    runtime: Runtime, user_id: str, config_id: str, symbol: str, quantity: int = 1, **kw: Any
) -> OrderResult:
    result = await runtime.orders.place(
        user_id,
        config_id,
        order(
            symbol=symbol,
            order_type="LIMIT",
            price=resting_buy_price(runtime, symbol),
            quantity=quantity,
            **kw,
        ),
        intentional=True,
        wait=5,
    )
    assert result.order.status is OrderStatus.OPEN, result.order
    return result


async def buy(
    runtime: Runtime, user_id: str, config_id: str, symbol: str, quantity: int, **kw: Any
) -> OrderResult:
    result = await runtime.orders.place(
        user_id, config_id, order(symbol=symbol, quantity=quantity, **kw), wait=5
    )
    assert result.order.status is OrderStatus.FILLED, result.order
    await runtime.risk_service.settle()  # the price subscription of the new position
    return result


async def refused(runtime: Runtime, user_id: str, config_id: str, **kw: Any) -> RiskRejected:
    with pytest.raises(RiskRejected) as info:
        await runtime.orders.place(user_id, config_id, order(**kw), intentional=True, wait=5)
    return info.value


async def working_ids(runtime: Runtime, config_id: str | None = None) -> set[str]:
    query = select(OrderRow.id).where(OrderRow.status.in_(OPEN_STATUSES))
    if config_id is not None:
        query = query.where(OrderRow.config_id == config_id)
    async with runtime.db() as session:
        return set((await session.scalars(query)).all())


async def order_row(runtime: Runtime, order_id: str) -> OrderRow:
    async with runtime.db() as session:
        row = await session.get(OrderRow, order_id)
        assert row is not None
        return row


async def positions(runtime: Runtime, config_id: str) -> dict[tuple[str, str], int]:
    """(symbol, product) -> quantity, open ones only."""
    async with runtime.db() as session:
        rows = (
            await session.scalars(select(PositionRow).where(PositionRow.config_id == config_id))
        ).all()
    return {(r.symbol, r.product_type): r.quantity for r in rows if r.quantity}


async def audit(runtime: Runtime, action: str, target: str | None = None) -> list[AuditLogRow]:
    query = select(AuditLogRow).where(AuditLogRow.action == action).order_by(AuditLogRow.id)
    if target is not None:
        query = query.where(AuditLogRow.target == target)
    async with runtime.db() as session:
        return list((await session.scalars(query)).all())


async def stored_state(runtime: Runtime, scope: Scope) -> RiskStateRow | None:
    async with runtime.db() as session:
        return await session.get(RiskStateRow, str(scope))


def assert_engine_matches_database(runtime: Runtime, config_id: str, expected: set[str]) -> None:
    assert set(runtime.risk_engine.open_order_ids(config_id)) == expected


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def place_concurrently(
    runtime: Runtime, user_id: str, config_id: str, count: int, **kw: Any
) -> tuple[list[OrderResult], list[RiskRejected]]:
    # Each accepted order waits for the worker's answer; the worker carries out a few at a
    # time, so the last of them waits for all the others: a generous bound, not a speed goal.
    results = await asyncio.gather(
        *(
            runtime.orders.place(user_id, config_id, order(**kw), intentional=True, wait=60)
            for _ in range(count)
        ),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, OrderResult)]
    rejected = [r for r in results if isinstance(r, RiskRejected)]
    assert len(accepted) + len(rejected) == count, [
        r for r in results if not isinstance(r, OrderResult | RiskRejected)
    ][:3]
    return accepted, rejected


# -- 1. many concurrent orders against one limit ---------------------------------------------

FIT = 37


@pytest.mark.parametrize("rule", ["max_open_orders", "gross_exposure", "symbol_exposure"])
async def test_200_concurrent_orders_race_one_limit(runtime: Runtime, rule: str) -> None:
    user_id, config_id = await user_with_config(runtime)
    price = resting_buy_price(runtime, "TCS")
    # A resting BUY below the last price reserves at the last price.
    room = ltp(runtime, "TCS") * FIT
    limits: dict[str, Any] = {"order_rate_per_second": 1000, "max_open_orders": None}
    limits.update(
        {
            "max_open_orders": {"max_open_orders": FIT},
            "gross_exposure": {"max_gross_exposure": room},
            "symbol_exposure": {"max_symbol_exposure": room},
        }[rule]
    )
    await set_ceiling(runtime, user_id, **limits)

    accepted, rejected = await place_concurrently(
        runtime, user_id, config_id, 200, order_type="LIMIT", price=price
    )
    assert len(accepted) == FIT and len(rejected) == 200 - FIT
    assert {e.code for e in rejected} == {ErrorCode.RISK_REJECTED}
    assert {e.details["rule"] for e in rejected} == {rule}
    assert {e.details["scope"] for e in rejected} == {"user"}
    assert {r.order.status for r in accepted} == {OrderStatus.OPEN}
    ids = {r.order.order_id for r in accepted}
    assert await working_ids(runtime, config_id) == ids  # refused orders were never stored
    assert_engine_matches_database(runtime, config_id, ids)
    usage = runtime.risk_service.status(user_id, config_id)
    assert usage["user"]["max_open_orders"]["value"] == FIT
    assert usage["symbols"]["NSE:TCS"]["reserved_buy"] == room

    # Cancelling frees exactly that much room: the same number fit again, no more.
    cancelled = sorted(ids)[:12]
    for order_id in cancelled:
        result = await runtime.orders.cancel(user_id, order_id, wait=5)
        assert result.order.status is OrderStatus.CANCELLED
    assert_engine_matches_database(runtime, config_id, ids - set(cancelled))
    again, refused_again = await place_concurrently(
        runtime, user_id, config_id, 200, order_type="LIMIT", price=price
    )
    assert len(again) == 12 and {e.details["rule"] for e in refused_again} == {rule}
    now_working = (ids - set(cancelled)) | {r.order.order_id for r in again}
    assert await working_ids(runtime, config_id) == now_working
    assert_engine_matches_database(runtime, config_id, now_working)
    assert (
        runtime.risk_service.status(user_id, config_id)["symbols"]["NSE:TCS"]["reserved_buy"]
        == room
    )


async def test_modifications_and_pending_cancels_move_the_reservation(
    settings: Settings,
) -> None:
    """A modification is checked as the order's new terms in place of its old ones (never
    an extra open order; shrinking is always fine). An order cancelled or modified while
    still PENDING (no worker here) is changed by the order service itself: the engine
    hears of it too."""
    runtime = Runtime(settings)
    await runtime.start(worker=False, market=False, health_monitor=False)
    try:
        user_id, config_id = await user_with_config(runtime)
        last = ltp(runtime, "TCS")
        await set_own(runtime, user_id, max_open_orders=2, max_symbol_exposure=last * 7)
        price = resting_buy_price(runtime, "TCS")
        first = await runtime.orders.place(
            user_id, config_id, order(order_type="LIMIT", price=price, quantity=2)
        )
        second = await runtime.orders.place(
            user_id, config_id, order(order_type="LIMIT", price=price, quantity=3)
        )
        assert first.order.status is OrderStatus.PENDING
        rejected = await refused(runtime, user_id, config_id, quantity=1)
        assert rejected.details["rule"] == "max_open_orders"

        def reserved() -> tuple[int, Decimal]:
            book = runtime.risk_service.status(user_id, config_id)["symbols"]["NSE:TCS"]
            return book["open_buy_quantity"], book["reserved_buy"]

        second_id = second.order.order_id
        await runtime.orders.modify(user_id, second_id, quantity=5)  # up to the limit
        assert reserved() == (7, last * 7)
        with pytest.raises(RiskRejected) as info:
            await runtime.orders.modify(user_id, second_id, quantity=6)
        assert info.value.details["rule"] == "symbol_exposure"
        assert reserved() == (7, last * 7)
        assert (await order_row(runtime, second_id)).quantity == 5
        await runtime.orders.modify(user_id, second_id, quantity=1)
        assert reserved() == (3, last * 3)

        cancelled = await runtime.orders.cancel(user_id, first.order.order_id)
        assert cancelled.order.status is OrderStatus.CANCELLED
        assert_engine_matches_database(runtime, config_id, {second_id})
        assert reserved() == (1, last)
        await runtime.orders.place(user_id, config_id, order(quantity=1))  # room again
    finally:
        await runtime.stop()


async def test_modifying_a_working_order_moves_its_reservation(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    last = ltp(runtime, "TCS")
    await set_own(runtime, user_id, max_symbol_exposure=last * 6)
    placed = await rest(runtime, user_id, config_id, "TCS", 2)
    order_id = placed.order.order_id

    def reserved() -> tuple[int, Decimal]:
        book = runtime.risk_service.status(user_id, config_id)["symbols"]["NSE:TCS"]
        return book["open_buy_quantity"], book["reserved_buy"]

    assert reserved() == (2, last * 2)
    modified = await runtime.orders.modify(user_id, order_id, quantity=6, wait=5)
    assert modified.outcome is not None and modified.outcome.ok
    assert (await order_row(runtime, order_id)).quantity == 6
    assert reserved() == (6, last * 6)
    assert (await refused(runtime, user_id, config_id, quantity=1)).details[
        "rule"
    ] == "symbol_exposure"
    with pytest.raises(RiskRejected):
        await runtime.orders.modify(user_id, order_id, quantity=7, wait=5)
    await runtime.orders.modify(user_id, order_id, quantity=3, wait=5)
    assert reserved() == (3, last * 3)
    placed_more = await runtime.orders.place(user_id, config_id, order(quantity=3), wait=5)
    assert placed_more.order.status is OrderStatus.FILLED


# -- 2. loss limits: breach -> state -> square-off -------------------------------------------


async def test_loss_breach_halts_cancels_and_squares_off(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    limits = await set_ceiling(runtime, user_id, daily_loss_limit=1000, square_off_on_breach=True)
    assert limits.on_loss_breach is TradingState.HALTED and limits.square_off_on_breach
    breaches_before = metric(
        "trading_backend_risk_breaches_total", rule="daily_loss_limit", scope_kind="user"
    )
    bought = await buy(runtime, user_id, config_id, "TCS", 10)
    resting = await rest(runtime, user_id, config_id, "INFY")

    # A small dip stays within the limit.
    entry = bought.order.average_price
    await runtime.market.set_price("TCS", "NSE", entry - 20)
    await runtime.risk_service.settle()
    assert runtime.risk_engine.effective_state(user_id, config_id)[0] is TradingState.ACTIVE

    # 10 x 10% of ~3150 is far beyond 1000.
    await runtime.market.set_price("TCS", "NSE", entry * Decimal("0.9"))
    await runtime.risk_service.settle()

    user_scope = Scope.for_user(user_id)
    assert runtime.risk_engine.effective_state(user_id, config_id) == (
        TradingState.HALTED,
        user_scope,
    )
    state = await stored_state(runtime, user_scope)
    assert state is not None and state.state == "HALTED" and not state.kill_switch
    assert "daily loss" in (state.reason or "")
    [breach] = await audit(runtime, "risk.breach", str(user_scope))
    assert breach.user_id == user_id
    assert breach.data["rule"] == "daily_loss_limit" and breach.data["state"] == "HALTED"
    assert Decimal(breach.data["loss"]) > 1000
    assert (
        metric("trading_backend_risk_breaches_total", rule="daily_loss_limit", scope_kind="user")
        == breaches_before + 1
    )

    assert (await order_row(runtime, resting.order.order_id)).status == "CANCELLED"
    async with runtime.db() as session:
        [square_off] = (
            await session.scalars(select(OrderRow).where(OrderRow.tag == "risk-squareoff"))
        ).all()
    assert (square_off.side, square_off.order_type, square_off.quantity) == ("SELL", "MARKET", 10)
    assert square_off.status == "FILLED" and square_off.config_id == config_id
    assert await positions(runtime, config_id) == {}
    assert_engine_matches_database(runtime, config_id, set())
    assert "NSE:TCS" not in runtime.risk_service.status(user_id, config_id)["symbols"]

    # Halted: nothing new, whatever the side.
    for kw in ({"symbol": "TCS"}, {"symbol": "INFY", "side": "SELL"}):
        rejected = await refused(runtime, user_id, config_id, **kw)
        assert rejected.details["rule"] == "trading_state"
        assert rejected.details["scope"] == str(user_scope)
        assert rejected.details["limit"] == "HALTED"
    # Reported once: more losses do not breach (or square off) again.
    await runtime.market.set_price("TCS", "NSE", entry * Decimal("0.8"))
    await runtime.risk_service.settle()
    assert len(await audit(runtime, "risk.breach")) == 1


async def test_account_loss_breach_goes_reduce_only(runtime: Runtime) -> None:
    """An account's own loss limit; REDUCING (the user's choice of breach state) without
    square-off: nothing is cancelled, only reducing orders pass."""
    user_id, config_id = await user_with_config(runtime)
    other_config = (await runtime.accounts.create_config(user_id, "paper", "second"))["config_id"]
    await set_ceiling(runtime, user_id, on_loss_breach="REDUCING")
    applied = await set_own(runtime, user_id, config_id, daily_loss_limit=1000)
    assert applied.daily_loss_limit == 1000 and applied.on_loss_breach is TradingState.REDUCING
    assert runtime.risk_service.limits(user_id).daily_loss_limit is None

    bought = await buy(runtime, user_id, config_id, "TCS", 10)
    resting = await rest(runtime, user_id, config_id, "INFY")
    await runtime.market.set_price("TCS", "NSE", bought.order.average_price * Decimal("0.9"))
    await runtime.risk_service.settle()

    scope = Scope.for_account(config_id)
    assert runtime.risk_engine.effective_state(user_id, config_id) == (TradingState.REDUCING, scope)
    assert runtime.risk_engine.effective_state(user_id, other_config)[0] is TradingState.ACTIVE
    assert (await stored_state(runtime, scope)).state == "REDUCING"  # type: ignore[union-attr]
    [breach] = await audit(runtime, "risk.breach", str(scope))
    assert breach.data["state"] == "REDUCING"
    assert (await order_row(runtime, resting.order.order_id)).status == "OPEN"
    assert await positions(runtime, config_id) == {("TCS", "DELIVERY"): 10}

    for kw in (
        {"symbol": "TCS"},
        {"symbol": "INFY"},
        {"symbol": "TCS", "side": "SELL", "quantity": 12},
    ):
        rejected = await refused(runtime, user_id, config_id, **kw)
        assert rejected.details["rule"] == "trading_state"
        assert rejected.details["limit"] == "REDUCING"
        assert rejected.details["scope"] == str(scope)
    reduced = await runtime.orders.place(
        user_id, config_id, order(symbol="TCS", side="SELL", quantity=4), wait=5
    )
    assert reduced.order.status is OrderStatus.FILLED
    assert await positions(runtime, config_id) == {("TCS", "DELIVERY"): 6}
    # The user's other account trades on.
    other = await runtime.orders.place(user_id, other_config, order(symbol="TCS"), wait=5)
    assert other.order.status is OrderStatus.FILLED


async def test_charges_count_towards_the_loss(runtime: Runtime) -> None:
    """The day's loss is realised + unrealised - charges, the charges read back from the
    trades (order updates do not carry them)."""
    user_id, config_id = await user_with_config(runtime)
    await buy(runtime, user_id, config_id, "TCS", 10)
    sold = await runtime.orders.place(
        user_id, config_id, order(symbol="TCS", side="SELL", quantity=10), wait=5
    )
    assert sold.order.status is OrderStatus.FILLED
    await runtime.risk_service.settle()
    async with runtime.db() as session:
        trades = (await session.scalars(select(TradeRow))).all()
    charges = sum((t.charges for t in trades), Decimal(0))
    assert charges > 0
    flow = sum((t.price * t.quantity * (1 if t.side == "SELL" else -1) for t in trades), Decimal(0))
    assert runtime.risk_service.status(user_id, config_id)["pnl"]["day"] == flow - charges


# -- 3. kill switch -----------------------------------------------------------------------------


async def test_account_kill_switch_and_reset(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    other_config = (await runtime.accounts.create_config(user_id, "paper", "second"))["config_id"]
    await buy(runtime, user_id, config_id, "TCS", 10)
    mine = await rest(runtime, user_id, config_id, "INFY")
    spared = await rest(runtime, user_id, other_config, "INFY")
    strategies = runtime.strategies
    hit = await strategies.create(user_id, "hit", "momentum", config_id)
    kept = await strategies.create(user_id, "kept", "momentum", other_config)
    for created in (hit, kept):
        assert (await strategies.start(user_id, created.id)).status == "RUNNING"

    scope = Scope.for_account(config_id)
    result = await runtime.risk_service.kill_switch(scope, by="admin", flatten=True)
    await runtime.risk_service.settle()
    assert result["state"] == "HALTED" and result["scope"] == str(scope)
    assert result["cancelled_orders"] == 1 and result["stopped_strategies"] == 1
    [square_off] = result["square_off_orders"]

    assert (await order_row(runtime, mine.order.order_id)).status == "CANCELLED"
    assert (await order_row(runtime, spared.order.order_id)).status == "OPEN"
    assert (await strategies.get(user_id, hit.id)).status == "STOPPED"
    assert (await strategies.get(user_id, kept.id)).status == "RUNNING"
    closing = await order_row(runtime, square_off)
    assert (closing.side, closing.quantity, closing.status) == ("SELL", 10, "FILLED")
    assert await positions(runtime, config_id) == {}
    state = await stored_state(runtime, scope)
    assert state is not None and state.state == "HALTED" and state.kill_switch
    assert state.updated_by == "admin"
    [switched] = await audit(runtime, "risk.kill_switch", str(scope))
    assert switched.user_id == "admin" and switched.data["flatten"] is True

    rejected = await refused(runtime, user_id, config_id, symbol="INFY")
    assert rejected.details["rule"] == "trading_state" and rejected.details["scope"] == str(scope)
    elsewhere = await runtime.orders.place(user_id, other_config, order(symbol="SBIN"), wait=5)
    assert elsewhere.order.status is OrderStatus.FILLED

    await runtime.risk_service.reset(scope, by="admin")
    assert runtime.risk_engine.effective_state(user_id, config_id)[0] is TradingState.ACTIVE
    state = await stored_state(runtime, scope)
    assert state is not None and state.state == "ACTIVE" and not state.kill_switch
    assert len(await audit(runtime, "risk.reset", str(scope))) == 1
    back = await runtime.orders.place(user_id, config_id, order(symbol="INFY"), wait=5)
    assert back.order.status is OrderStatus.FILLED


async def test_square_off_is_paced_by_the_order_rate(runtime: Runtime) -> None:
    """More positions than the order rate allows in one second: the square-off orders the
    rate refuses are placed again a second later (the service paces them; the test does
    not wait on a clock)."""
    user_id, config_id = await user_with_config(runtime)
    for symbol in ("TCS", "INFY", "SBIN"):
        await buy(runtime, user_id, config_id, symbol, 2)
    await set_own(runtime, user_id, order_rate_per_second=2)
    result = await runtime.risk_service.kill_switch(
        Scope.for_user(user_id), by="admin", flatten=True
    )
    assert len(result["square_off_orders"]) == 3
    assert await positions(runtime, config_id) == {}


async def test_global_kill_switch_without_flatten(runtime: Runtime) -> None:
    alice, alice_config = await user_with_config(runtime, "alice")
    bob, bob_config = await user_with_config(runtime, "bob")
    await buy(runtime, alice, alice_config, "TCS", 5)
    orders = [
        await rest(runtime, alice, alice_config, "INFY"),
        await rest(runtime, bob, bob_config, "SBIN"),
    ]
    result = await runtime.risk_service.kill_switch(Scope("global"), by="admin")
    assert result["cancelled_orders"] == 2 and result["square_off_orders"] == []
    for placed in orders:
        assert (await order_row(runtime, placed.order.order_id)).status == "CANCELLED"
    assert await positions(runtime, alice_config) == {("TCS", "DELIVERY"): 5}
    for user_id, config_id in ((alice, alice_config), (bob, bob_config)):
        assert (await refused(runtime, user_id, config_id)).details["scope"] == "global"
    # Square-off orders still pass a halt; anything that is not reducing does not.
    placed = await runtime.orders.place(
        alice, alice_config, order(symbol="TCS", side="SELL", quantity=5), square_off=True, wait=5
    )
    assert placed.order.status is OrderStatus.FILLED
    with pytest.raises(RiskRejected) as info:
        await runtime.orders.place(
            alice, alice_config, order(symbol="TCS", side="SELL"), square_off=True, wait=5
        )
    assert info.value.details["rule"] == "trading_state"
    await runtime.risk_service.reset(Scope("global"), by="admin")
    assert (await runtime.orders.place(bob, bob_config, order(), wait=5)).order.status is (
        OrderStatus.FILLED
    )


# -- 4. restarts --------------------------------------------------------------------------------


@pytest.fixture
async def runtimes(settings: Settings) -> AsyncIterator[list[Runtime]]:
    """Runtimes on one database, one after another (a process restart); all stopped at
    the end."""
    made: list[Runtime] = []
    yield made
    for each in made:
        if each.started:
            await each.stop()


async def boot(settings: Settings, made: list[Runtime]) -> Runtime:
    runtime = Runtime(settings)
    made.append(runtime)
    await runtime.start(worker=True, market=False, health_monitor=False)
    return runtime


def exposure_view(runtime: Runtime, user_id: str, config_id: str) -> dict[str, Any]:
    """The engine's book of the account (the order rate's sliding second aside)."""
    usage = runtime.risk_service.status(user_id, config_id)
    view = {"symbols": usage["symbols"], "reserved": usage["funds"]["reserved"]}
    view["pnl"] = usage["pnl"]
    for scope in ("account", "user"):
        view[scope] = {k: v for k, v in usage[scope].items() if k != "order_rate_per_second"}
    return view


async def test_states_limits_orders_and_positions_survive_a_restart(
    settings: Settings, runtimes: list[Runtime]
) -> None:
    first = await boot(settings, runtimes)
    alice, alice_config = await user_with_config(first, "alice")
    bob, bob_config = await user_with_config(first, "bob")
    carol, carol_config = await user_with_config(first, "carol")

    await set_ceiling(first, alice, order_rate_per_second=100)
    await set_own(first, alice, max_open_orders=4, max_order_quantity=50)
    await buy(first, alice, alice_config, "TCS", 10)
    await rest(first, alice, alice_config, "INFY", 2)
    await rest(first, alice, alice_config, "INFY", 3)
    await runtime_sell_resting(first, alice, alice_config)
    before = exposure_view(first, alice, alice_config)
    working_before = await working_ids(first)

    await first.risk_service.kill_switch(Scope.for_user(bob), by="admin")
    await set_ceiling(first, carol, daily_loss_limit=300)
    bought = await buy(first, carol, carol_config, "SBIN", 10)
    await first.market.set_price("SBIN", "NSE", bought.order.average_price * Decimal("0.9"))
    await first.risk_service.settle()
    assert first.risk_engine.effective_state(carol, carol_config)[0] is TradingState.HALTED
    await first.stop()

    second = await boot(settings, runtimes)  # the market starts again from its seed
    engine = second.risk_engine
    assert engine.effective_state(bob, bob_config) == (TradingState.HALTED, Scope.for_user(bob))
    assert engine.effective_state(carol, carol_config)[0] is TradingState.HALTED
    for user_id, config_id in ((bob, bob_config), (carol, carol_config)):
        assert (await refused(second, user_id, config_id)).details["rule"] == "trading_state"
    limits = second.risk_service.limits(alice)
    assert (limits.order_rate_per_second, limits.max_open_orders) == (100, 4)
    assert limits.max_order_quantity == 50

    assert set(engine.open_order_ids()) == working_before == await working_ids(second)
    assert exposure_view(second, alice, alice_config) == before
    # The reloaded book is the one the limits see: one more order fits, the next does not.
    await rest(second, alice, alice_config, "SBIN")
    assert (await refused(second, alice, alice_config)).details["rule"] == "max_open_orders"
    assert (await refused(second, alice, alice_config, quantity=51)).details[
        "rule"
    ] == "max_order_quantity"

    await second.risk_service.reset(Scope.for_user(bob), by="admin")
    await second.stop()
    third = await boot(settings, runtimes)
    assert third.risk_engine.effective_state(bob, bob_config)[0] is TradingState.ACTIVE
    placed = await third.orders.place(bob, bob_config, order(), wait=5)
    assert placed.order.status is OrderStatus.FILLED


async def runtime_sell_resting(runtime: Runtime, user_id: str, config_id: str) -> None:
    """A resting SELL of part of the TCS position (reducing: it blocks no margin)."""
    price = (ltp(runtime, "TCS") * Decimal("1.03") / TICK).to_integral_value() * TICK
    result = await runtime.orders.place(
        user_id,
        config_id,
        order(symbol="TCS", side="SELL", order_type="LIMIT", price=price, quantity=4),
        wait=5,
    )
    assert result.order.status is OrderStatus.OPEN


# -- 5. intraday square-off ---------------------------------------------------------------------


async def test_intraday_square_off_closes_intraday_only(runtime: Runtime) -> None:
    alice, alice_config = await user_with_config(runtime, "alice")
    bob, bob_config = await user_with_config(runtime, "bob")
    await buy(runtime, alice, alice_config, "TCS", 10, product_type="INTRADAY")
    await buy(runtime, alice, alice_config, "INFY", 5, product_type="DELIVERY")
    await buy(runtime, alice, alice_config, "INFY", 3, product_type="INTRADAY")
    await buy(runtime, bob, bob_config, "RELIANCE", 4, product_type="INTRADAY")
    intraday = await rest(runtime, alice, alice_config, "SBIN", 2, product_type="INTRADAY")
    delivery = await rest(runtime, alice, alice_config, "SBIN", 3, product_type="DELIVERY")

    placed = await runtime.risk_service.intraday_square_off()
    await runtime.risk_service.settle()

    assert len(placed) == 3
    async with runtime.db() as session:
        closing = (await session.scalars(select(OrderRow).where(OrderRow.id.in_(placed)))).all()
    assert {(o.symbol, o.side, o.product_type, o.quantity, o.status) for o in closing} == {
        ("TCS", "SELL", "INTRADAY", 10, "FILLED"),
        ("INFY", "SELL", "INTRADAY", 3, "FILLED"),
        ("RELIANCE", "SELL", "INTRADAY", 4, "FILLED"),
    }
    assert await positions(runtime, alice_config) == {("INFY", "DELIVERY"): 5}
    assert await positions(runtime, bob_config) == {}
    assert (await order_row(runtime, intraday.order.order_id)).status == "CANCELLED"
    assert (await order_row(runtime, delivery.order.order_id)).status == "OPEN"
    assert_engine_matches_database(runtime, alice_config, {delivery.order.order_id})
    # Nobody was halted by it.
    assert runtime.risk_engine.effective_state(alice, alice_config)[0] is TradingState.ACTIVE


# -- 6. rejections are audited and counted ------------------------------------------------------


async def test_rejections_are_audited_and_counted(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime, initial_capital=10_000)
    await set_own(runtime, user_id, max_order_quantity=5)
    quantity_before = metric("trading_backend_risk_rejections_total", rule="max_order_quantity")
    funds_before = metric("trading_backend_risk_rejections_total", rule="funds")

    rejected = await refused(runtime, user_id, config_id, symbol="TCS", quantity=6)
    assert rejected.code is ErrorCode.RISK_REJECTED
    assert (rejected.details["limit"], rejected.details["value"]) == (5, 6)
    await runtime.risk_service.settle()
    [row] = await audit(runtime, "risk.rejected", config_id)
    assert row.user_id == user_id
    assert row.data["rule"] == "max_order_quantity" and row.data["error_code"] == "RISK_REJECTED"
    assert row.data["symbol"] == "TCS" and row.data["quantity"] == 6
    assert row.data["order_id"] == rejected.details["order_id"]
    assert (
        metric("trading_backend_risk_rejections_total", rule="max_order_quantity")
        == quantity_before + 1
    )

    # Once the account has a broker session the engine knows its funds: an order beyond
    # them is refused before it is stored, with the funds code.
    await buy(runtime, user_id, config_id, "SBIN", 1)
    with pytest.raises(RiskRejected) as info:
        await runtime.orders.place(user_id, config_id, order(symbol="TCS", quantity=5), wait=5)
    assert info.value.code is ErrorCode.INSUFFICIENT_FUNDS and info.value.details["rule"] == "funds"
    await runtime.risk_service.settle()
    rows = await audit(runtime, "risk.rejected", config_id)
    assert [r.data["error_code"] for r in rows] == ["RISK_REJECTED", "INSUFFICIENT_FUNDS"]
    assert metric("trading_backend_risk_rejections_total", rule="funds") == funds_before + 1
    async with runtime.db() as session:
        stored = (await session.scalars(select(OrderRow.id))).all()
    assert rejected.details["order_id"] not in stored and len(stored) == 1


# -- 7. strategies' orders pass the engine ------------------------------------------------------


class ProbeParams(StrategyParams):
    symbol: str = "TCS"
    quantity: int = Field(default=1, gt=0)


class RiskProbe(BaseStrategy):
    """Places a MARKET buy of ``quantity`` on every bar; records what the order path said."""

    name = "risk_probe"
    Params = ProbeParams
    params: ProbeParams

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription(self.params.symbol, Exchange.NSE)]

    async def on_bar(self, bar: Bar) -> None:
        request = BrokerOrder(
            symbol=self.params.symbol,
            exchange="NSE",
            side="BUY",
            order_type="MARKET",
            product_type="INTRADAY",
            quantity=self.params.quantity,
        )
        try:
            placed = await self.ctx.place_order(request)
        except DomainError as exc:
            self.ctx.state.setdefault("refused", []).append(
                [exc.code.value, exc.details.get("rule")]
            )
        else:
            self.ctx.state.setdefault("placed", []).append(placed.status.value)


async def test_strategy_orders_pass_the_risk_engine(runtime: Runtime) -> None:
    feed = FakeFeed()
    registry = toy_registry()
    registry.register(RiskProbe)
    runner = StrategyRunner(
        runtime.db, registry, feed, FakeReader(runtime.market), runtime.orders, runtime.recorder
    )
    await runner.start()
    try:
        from trading_backend.strategies.service import StrategyService

        service = StrategyService(runtime.db, registry, runner)
        user_id, config_id = await user_with_config(runtime)
        await set_own(runtime, user_id, max_order_quantity=5)
        small = await service.create(user_id, "small", "risk_probe", config_id, {"quantity": 5})
        big = await service.create(user_id, "big", "risk_probe", config_id, {"quantity": 6})
        toy = await service.create(user_id, "toy", "buy_then_sell", config_id, {"quantity": 9})
        for created in (small, big, toy):
            await service.start(user_id, created.id)
        before = metric("trading_backend_risk_rejections_total", rule="max_order_quantity")

        await feed.push_bar(make_bar("TCS", ltp(runtime, "TCS")))
        await runner.drain()
        await runtime.risk_service.settle()

        assert (await service.get(user_id, small.id)).state["placed"] == ["FILLED"]
        assert (await service.get(user_id, big.id)).state["refused"] == [
            ["RISK_REJECTED", "max_order_quantity"]
        ]
        # A strategy that does not catch the refusal fails with it.
        failed = await service.get(user_id, toy.id)
        assert failed.status == "ERROR"
        assert "quantity 9 exceeds" in (failed.error or "")
        assert (
            metric("trading_backend_risk_rejections_total", rule="max_order_quantity") == before + 2
        )
        async with runtime.db() as session:
            rows = (await session.scalars(select(OrderRow))).all()
        assert [(r.strategy_id, r.quantity) for r in rows] == [(small.id, 5)]
        assert len(await audit(runtime, "risk.rejected", config_id)) == 2
        async with runtime.db() as session:
            statuses = {
                row.id: row.status for row in (await session.scalars(select(StrategyRow))).all()
            }
        assert statuses[small.id] == statuses[big.id] == "RUNNING"
    finally:
        await runner.stop()
