"""The strategy engine end to end: service -> runner -> context -> order service -> paper
broker -> recorder -> back to the strategy. SQLite always, PostgreSQL with
TEST_DATABASE_URL. No sleeps: bars are pushed into the fake feed and ``runner.drain()``
waits until every strategy has handled them."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from tests.helpers import order, user_with_config
from tests.strategies.conftest import Engine
from tests.strategies.fakes import make_bar, make_tick
from tests.strategies.toys import Gated
from trading_backend.domain import DomainError, ErrorCode, Exchange, OrderStatus
from trading_backend.storage.models import (
    AuditLogRow,
    OrderRow,
    StrategyRow,
    StrategySignalRow,
    TradeRow,
)
from trading_backend.strategies.base import BaseStrategy, Subscription, TickView
from trading_backend.strategies.context import RunnerContext
from trading_backend.strategies.runner import StrategyRunner


async def _row(engine: Engine, strategy_id: str) -> StrategyRow:
    async with engine.runtime.db() as session:
        row = await session.get(StrategyRow, strategy_id)
        assert row is not None
        return row


async def _audit_actions(engine: Engine, target: str) -> list[str]:
    async with engine.runtime.db() as session:
        return list(
            (
                await session.scalars(
                    select(AuditLogRow.action)
                    .where(AuditLogRow.target == target)
                    .order_by(AuditLogRow.id)
                )
            ).all()
        )


async def _bars(engine: Engine, symbol: str, *closes: int, first: int = 0) -> None:
    for i, close in enumerate(closes):
        await engine.runtime.market.set_price(symbol, "NSE", close)
        await engine.feed.push_bar(make_bar(symbol, close, index=first + i))
        await engine.runner.drain()


def _ctx(engine: Engine, strategy_id: str, runner: StrategyRunner | None = None) -> RunnerContext:
    strategy = (runner or engine.runner).strategy(strategy_id)
    assert strategy is not None
    ctx = strategy.ctx
    assert isinstance(ctx, RunnerContext)
    return ctx


async def _batching_runner(engine: Engine) -> StrategyRunner:
    """A runner whose flusher never fires during a test: states changed without an order
    reach the database only through ``flush_states()``, ``drain()`` or a stop."""
    runner = StrategyRunner(
        engine.runtime.db,
        engine.registry,
        engine.feed,
        engine.reader,
        engine.runtime.orders,
        engine.runtime.recorder,
        state_flush_seconds=3600,
    )
    await runner.start()
    return runner


async def test_toy_strategy_trades_through_the_paper_broker(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    service = engine.service
    created = await service.create(user_id, "toy", "buy_then_sell", config_id, {"quantity": 3})
    assert created.status == "STOPPED" and created.params == {"symbol": "TCS", "quantity": 3}
    assert len(created.id) <= 20

    started = await service.start(user_id, created.id)
    assert started.status == "RUNNING" and started.started_at is not None
    assert engine.feed.subscribers("NSE:TCS") == 1

    await _bars(engine, "TCS", 1000)  # bar 1: buy
    ctx = _ctx(engine, created.id)
    [position] = await ctx.positions()
    assert position.symbol == "TCS" and position.quantity == 3
    assert await ctx.open_orders() == []

    await _bars(engine, "TCS", 1005, 1100, first=1)  # bar 3: sell
    assert await ctx.positions() == []

    async with engine.runtime.db() as session:
        orders = (await session.scalars(select(OrderRow).where(OrderRow.user_id == user_id))).all()
        trades = (await session.scalars(select(TradeRow).order_by(TradeRow.id))).all()
    assert len(orders) == 2
    assert {o.strategy_id for o in orders} == {created.id}
    assert {o.tag for o in orders} == {created.id}
    assert {o.status for o in orders} == {"FILLED"}
    buy, sell = sorted(trades, key=lambda t: t.side)  # BUY < SELL
    expected = (sell.price - buy.price) * 3
    assert expected > 0

    perf = await service.performance(user_id, created.id)
    assert perf.realised_pnl == expected
    assert perf.unrealised_pnl == Decimal(0)
    assert perf.charges == buy.charges + sell.charges
    assert perf.net_pnl == expected - perf.charges
    assert perf.trades == 2 and perf.round_trips == 1 and perf.win_rate == 1.0
    assert perf.signals == 2 and perf.open_positions == 0
    kinds = [entry.kind for entry in perf.recent_log]
    assert kinds.count("signal") == 2 and kinds.count("order") == 2

    # Every order update reached on_order_update, and the state was persisted.
    row = await _row(engine, created.id)
    assert row.state["bars"] == 3
    statuses = {order_id: [] for order_id, _ in row.state["updates"]}
    for order_id, status in row.state["updates"]:
        statuses[order_id].append(status)
    assert set(statuses) == {o.id for o in orders}
    assert all(s[-1] == "FILLED" for s in statuses.values())

    stopped = await service.stop(user_id, created.id)
    assert stopped.status == "STOPPED" and stopped.state["stops"] == 1
    assert engine.feed.subscribers("NSE:TCS") == 0
    assert not engine.runner.is_running(created.id)
    assert await _audit_actions(engine, created.id) == [
        "strategy.created",
        "strategy.started",
        "strategy.stopped",
    ]


async def test_open_position_has_unrealised_pnl(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "toy", "buy_then_sell", config_id)
    await engine.service.start(user_id, created.id)
    await _bars(engine, "TCS", 1000)
    [position] = await _ctx(engine, created.id).positions()
    await engine.runtime.market.set_price("TCS", "NSE", 1010)
    perf = await engine.service.performance(user_id, created.id)
    ltp = engine.runtime.market.quote("TCS", "NSE").ltp
    assert perf.unrealised_pnl == (ltp - position.average_price) * 2
    assert perf.open_positions == 1 and perf.round_trips == 0 and perf.win_rate is None


async def test_state_persists_and_a_new_runner_resumes(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "toy", "buy_then_sell", config_id)
    await engine.service.start(user_id, created.id)
    await _bars(engine, "TCS", 1000)  # bought
    assert (await _row(engine, created.id)).state["bars"] == 1

    await engine.runner.stop()  # process shutdown: on_stop runs, status stays RUNNING
    row = await _row(engine, created.id)
    assert row.status == "RUNNING" and row.state["stops"] == 1
    assert engine.feed.subscribers("NSE:TCS") == 0

    engine.runner = engine.new_runner()
    await engine.runner.start()
    assert engine.runner.is_running(created.id)
    ctx = _ctx(engine, created.id)
    assert ctx.state["bars_at_start"] == 1 and ctx.state["starts"] == 2
    assert [p.quantity for p in await ctx.positions()] == [2]

    await _bars(engine, "TCS", 1001, 1002, first=1)  # bar 3 (after the restart): sell
    assert await ctx.positions() == []
    perf = await engine.service.performance(user_id, created.id)
    assert perf.trades == 2 and perf.round_trips == 1


async def test_a_failing_strategy_goes_error_while_another_keeps_trading(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    good = await engine.service.create(user_id, "good", "buy_then_sell", config_id)
    bad = await engine.service.create(user_id, "bad", "fails_on_bar", config_id)
    await engine.service.start(user_id, good.id)
    await engine.service.start(user_id, bad.id)

    await _bars(engine, "TCS", 1000)
    await _bars(engine, "INFY", 1500)
    with capture_logs() as logs:
        await _bars(engine, "INFY", 1501, first=1)  # bad raises
    assert any(
        e["event"] == "strategy_failed"
        and e["log_level"] == "warning"
        and e["strategy_id"] == bad.id
        for e in logs
    )
    failed = await engine.service.get(user_id, bad.id)
    assert failed.status == "ERROR" and failed.error == "RuntimeError: boom on bar 2"
    assert failed.state == {"bars": 2}  # the state it had, and on_stop never ran
    assert engine.feed.subscribers("NSE:INFY") == 0
    assert not engine.runner.is_running(bad.id)
    [entry] = await engine.service.logs(user_id, bad.id, kind="error")
    assert entry.data["error"] == failed.error and "boom on bar 2" in entry.data["traceback"]
    assert "strategy.failed" in await _audit_actions(engine, bad.id)
    assert await engine.feed.push_bar(make_bar("INFY", 1502, index=2)) == 0

    await _bars(engine, "TCS", 1001, 1002, first=1)  # the good one sells
    perf = await engine.service.performance(user_id, good.id)
    assert perf.trades == 2 and (await engine.service.get(user_id, good.id)).status == "RUNNING"

    # Restarting after an error clears it.
    restarted = await engine.service.start(user_id, bad.id)
    assert restarted.status == "RUNNING" and restarted.error is None


async def test_failures_on_start_and_unserialisable_state(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    for kind in ("fails_on_start", "not_json"):
        created = await engine.service.create(user_id, kind, kind, config_id)
        view = await engine.service.start(user_id, created.id)
        assert view.status == "ERROR" and view.error
        assert not engine.runner.is_running(created.id)
    # An ERROR strategy is not resumed by a new runner.
    runner = engine.new_runner()
    await runner.start()
    assert runner.running_ids == []
    await runner.stop()


async def test_order_updates_resting_orders_and_cancel(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    await engine.service.start(user_id, created.id)
    await engine.feed.push_bar(make_bar("SBIN", 500))
    await engine.runner.drain()
    ctx = _ctx(engine, created.id)
    [working] = await ctx.open_orders()
    assert working.status is OrderStatus.OPEN and working.tag == created.id

    # Someone else's order (the user's own manual one) is not the strategy's to cancel.
    below = (engine.runtime.market.quote("SBIN", "NSE").ltp * Decimal("0.97")).quantize(
        Decimal("0.1")
    )
    manual = await engine.runtime.orders.place(
        user_id, config_id, order(symbol="SBIN", order_type="LIMIT", price=str(below)), wait=5
    )
    with pytest.raises(DomainError) as caught:
        await ctx.cancel_order(manual.order.order_id)
    assert caught.value.code is ErrorCode.ORDER_NOT_FOUND
    assert [o.order_id for o in await ctx.open_orders()] == [working.order_id]

    cancelled = await ctx.cancel_order(working.order_id)
    assert cancelled.status is OrderStatus.CANCELLED
    await engine.runner.drain()
    state = (await engine.service.get(user_id, created.id)).state
    assert state["updates"][-1] == "CANCELLED" and "OPEN" in state["updates"]
    assert await ctx.open_orders() == []


async def test_ticks_are_delivered_when_asked(engine: Engine) -> None:
    from tests.strategies.fakes import make_tick

    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    await engine.service.start(user_id, created.id)
    for price in (500, 501, 502):
        await engine.feed.push_tick(make_tick("SBIN", price))
    await engine.runner.drain()
    assert (await engine.service.get(user_id, created.id)).state["ticks"] == 3


async def test_params_are_validated(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    service = engine.service
    for params in ({"quantity": 0}, {"quantity": "many"}, {"unknown": 1}):
        with pytest.raises(DomainError) as caught:
            await service.create(user_id, "toy", "buy_then_sell", config_id, params)
        assert caught.value.code is ErrorCode.VALIDATION_ERROR
        assert "buy_then_sell" in caught.value.message and caught.value.details["errors"]
    with pytest.raises(DomainError) as caught:
        await service.create(user_id, "toy", "no_such_kind", config_id)
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert "buy_then_sell" in caught.value.message  # lists what is available
    with pytest.raises(DomainError) as caught:
        await service.create(user_id, "toy", "buy_then_sell", "cfg_missing")
    assert caught.value.code is ErrorCode.CONFIG_NOT_FOUND

    created = await service.create(user_id, "toy", "buy_then_sell", config_id)
    with pytest.raises(DomainError) as caught:
        await service.create(user_id, "toy", "buy_then_sell", config_id)
    assert caught.value.code is ErrorCode.CONFLICT
    with pytest.raises(DomainError) as caught:
        await service.update(user_id, created.id, params={"quantity": -5})
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    updated = await service.update(user_id, created.id, name="renamed", params={"quantity": 7})
    assert updated.name == "renamed" and updated.params["quantity"] == 7

    await service.start(user_id, created.id)
    with pytest.raises(DomainError) as caught:
        await service.update(user_id, created.id, params={"quantity": 1})
    assert caught.value.code is ErrorCode.CONFLICT


async def test_delete_stops_a_running_strategy(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "toy", "buy_then_sell", config_id)
    await engine.service.start(user_id, created.id)
    await _bars(engine, "TCS", 1000)
    await engine.service.delete(user_id, created.id)
    assert not engine.runner.is_running(created.id)
    assert engine.feed.subscribers("NSE:TCS") == 0
    with pytest.raises(DomainError) as caught:
        await engine.service.get(user_id, created.id)
    assert caught.value.code is ErrorCode.NOT_FOUND
    assert await engine.service.list(user_id) == []
    async with engine.runtime.db() as session:
        assert (
            await session.scalars(
                select(StrategySignalRow).where(StrategySignalRow.strategy_id == created.id)
            )
        ).all() == []
        # The account's history stays, still marked with the strategy.
        assert (
            await session.scalars(select(OrderRow).where(OrderRow.strategy_id == created.id))
        ).all()
    assert await _audit_actions(engine, created.id) == [
        "strategy.created",
        "strategy.started",
        "strategy.stopped",
        "strategy.deleted",
    ]


async def test_users_cannot_touch_each_others_strategies(engine: Engine) -> None:
    alice, alice_config = await user_with_config(engine.runtime, "alice")
    bob, bob_config = await user_with_config(engine.runtime, "bob")
    service = engine.service
    created = await service.create(alice, "toy", "buy_then_sell", alice_config)
    with pytest.raises(DomainError) as caught:
        await service.create(bob, "toy", "buy_then_sell", alice_config)
    assert caught.value.code is ErrorCode.CONFIG_NOT_FOUND

    attempts = [
        service.get(bob, created.id),
        service.start(bob, created.id),
        service.stop(bob, created.id),
        service.update(bob, created.id, name="mine"),
        service.delete(bob, created.id),
        service.performance(bob, created.id),
        service.logs(bob, created.id),
    ]
    for attempt in attempts:
        with pytest.raises(DomainError) as caught:
            await attempt
        assert caught.value.code is ErrorCode.NOT_FOUND
    assert await service.list(bob) == []
    assert [s.id for s in await service.list(alice)] == [created.id]
    assert (await service.get(alice, created.id)).status == "STOPPED"
    assert not engine.runner.is_running(created.id)
    # Same name for another user is fine.
    await service.create(bob, "toy", "buy_then_sell", bob_config)


async def test_runs_on_the_runtime_market_hub(engine: Engine) -> None:
    """The real shared feed (``runtime.market_hub``) satisfies the runner's ``MarketFeed``."""
    pytest.importorskip("trading_backend.marketdata.bars")  # the hub is being written
    hub = engine.runtime.market_hub
    runner = StrategyRunner(
        engine.runtime.db,
        engine.registry,
        hub,
        engine.reader,
        engine.runtime.orders,
        engine.runtime.recorder,
    )
    await runner.start()
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    assert await runner.start_strategy(created.id) == "RUNNING"
    assert hub.refcount("NSE:SBIN") == 1
    for _ in range(3):
        await engine.runtime.market.step()
    await runner.drain()
    assert (await engine.service.get(user_id, created.id)).state["ticks"] == 3
    assert await runner.stop_strategy(created.id) == "STOPPED"
    assert hub.refcount("NSE:SBIN") == 0
    await runner.stop()


async def test_a_slow_strategy_does_not_block_others(engine: Engine) -> None:
    Gated.gate = asyncio.Event()
    user_id, config_id = await user_with_config(engine.runtime)
    slow = await engine.service.create(user_id, "slow", "gated", config_id)
    fast = await engine.service.create(user_id, "fast", "buy_then_sell", config_id)
    await engine.service.start(user_id, slow.id)
    await engine.service.start(user_id, fast.id)
    await engine.feed.push_bar(make_bar("RELIANCE", 2500))
    await engine.feed.push_bar(make_bar("RELIANCE", 2501, index=1))
    for i in range(3):
        await engine.feed.push_bar(make_bar("TCS", 1000 + i, index=i))
    await engine.runner.drain(fast.id)  # returns while the slow one is still blocked
    assert (await engine.service.performance(user_id, fast.id)).trades == 2
    assert _ctx(engine, slow.id).state.get("bars") is None
    Gated.gate.set()
    await engine.runner.drain()
    assert (await engine.service.get(user_id, slow.id)).state["bars"] == 2


async def test_resume_of_an_unloadable_strategy_is_an_error(engine: Engine) -> None:
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "toy", "buy_then_sell", config_id)
    orphan = await engine.service.create(user_id, "orphan", "buy_then_sell", config_id)
    async with engine.runtime.db() as session, session.begin():
        row = await session.get(StrategyRow, created.id)
        assert row is not None
        row.status, row.kind = "RUNNING", "uninstalled_plugin"
        other = await session.get(StrategyRow, orphan.id)
        assert other is not None
        other.status = "RUNNING"  # RUNNING in the database, but no runner has it
    assert await engine.runner.stop_strategy(orphan.id) == "STOPPED"

    runner = engine.new_runner()
    await runner.start()
    assert runner.running_ids == []
    view = await engine.service.get(user_id, created.id)
    assert view.status == "ERROR" and "uninstalled_plugin" in (view.error or "")
    await runner.stop()


async def test_a_state_change_without_an_order_is_written_by_the_next_flush(
    engine: Engine,
) -> None:
    runner = await _batching_runner(engine)
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    assert await runner.start_strategy(created.id) == "RUNNING"
    for price in (500, 501):
        await engine.feed.push_tick(make_tick("SBIN", price))
    await runner.drain(flush=False)
    assert _ctx(engine, created.id, runner).state == {"ticks": 2}
    assert (await _row(engine, created.id)).state == {}  # only marked dirty

    assert await runner.flush_states() == 1
    assert (await _row(engine, created.id)).state == {"ticks": 2}
    assert await runner.flush_states() == 0  # nothing left to write
    await runner.stop()


async def test_a_callback_that_places_an_order_has_its_state_written_at_once(
    engine: Engine,
) -> None:
    runner = await _batching_runner(engine)
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    assert await runner.start_strategy(created.id) == "RUNNING"
    await engine.feed.push_bar(make_bar("SBIN", 500))  # on_bar places a resting order
    await runner.drain(flush=False)
    state = _ctx(engine, created.id, runner).state
    assert "OPEN" in state["updates"]
    [working] = await _ctx(engine, created.id, runner).open_orders()
    assert state["order_id"] == working.order_id
    # on_bar's state (the order) and the order updates' (what the strategy saw of it) are
    # written as each callback returns: no flush has run.
    assert (await _row(engine, created.id)).state == state
    await runner.stop()


async def test_shutdown_writes_dirty_state_and_a_new_runner_resumes_with_it(
    engine: Engine,
) -> None:
    runner = await _batching_runner(engine)
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "rest", "resting_order", config_id)
    assert await runner.start_strategy(created.id) == "RUNNING"
    for price in (500, 501, 502):
        await engine.feed.push_tick(make_tick("SBIN", price))
    await runner.drain(flush=False)
    assert (await _row(engine, created.id)).state == {}

    await runner.stop()  # process shutdown
    row = await _row(engine, created.id)
    assert row.status == "RUNNING" and row.state == {"ticks": 3}

    resumed = await _batching_runner(engine)
    assert resumed.is_running(created.id)
    assert _ctx(engine, created.id, resumed).state == {"ticks": 3}
    await resumed.stop()


class _TicksThenNotJson(BaseStrategy):
    """Counts SBIN ticks; on the third puts something that is not JSON in its state."""

    name = "ticks_then_not_json"

    def subscriptions(self) -> list[Subscription]:
        return [Subscription("SBIN", Exchange.NSE, ticks=True)]

    async def on_tick(self, tick: TickView) -> None:
        self.ctx.state["ticks"] = self.ctx.state.get("ticks", 0) + 1
        if self.ctx.state["ticks"] == 3:
            self.ctx.state["bad"] = object()


async def test_state_that_is_not_json_fails_at_once_and_keeps_the_unwritten_json_state(
    engine: Engine,
) -> None:
    engine.registry.register(_TicksThenNotJson)
    runner = await _batching_runner(engine)
    user_id, config_id = await user_with_config(engine.runtime)
    created = await engine.service.create(user_id, "bad", "ticks_then_not_json", config_id)
    assert await runner.start_strategy(created.id) == "RUNNING"
    for price in (500, 501, 502, 503):
        await engine.feed.push_tick(make_tick("SBIN", price))
    await runner.drain(flush=False)
    assert not runner.is_running(created.id)
    view = await engine.service.get(user_id, created.id)
    assert view.status == "ERROR" and "JSON serializable" in (view.error or "")
    # The failure wrote the last state that was JSON, which was only marked dirty.
    assert view.state == {"ticks": 2}
    assert engine.feed.subscribers("NSE:SBIN") == 0
    await runner.stop()
