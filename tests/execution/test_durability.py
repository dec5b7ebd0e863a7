"""Crash safety of the embedded queue: an order accepted before a crash is executed after
restart exactly once, and an order whose submission was interrupted is never resent."""

from __future__ import annotations

from sqlalchemy import select, update

from tests.helpers import order, user_with_config
from trading_backend.domain import OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.storage.models import OrderRow, QueueEntryRow


async def test_order_accepted_before_crash_executes_once_after_restart(settings: Settings) -> None:
    # First life: the API accepts the order but the process dies before any worker ran.
    first = Runtime(settings)
    await first.start(worker=False, market=False, health_monitor=False)
    user_id, config_id = await user_with_config(first)
    accepted = await first.orders.place(user_id, config_id, order(quantity=2), wait=0)
    assert accepted.order.status is OrderStatus.PENDING
    await first.stop()

    # Second life: recovery hands the queued entry to the worker, which executes it.
    second = Runtime(settings)
    await second.start(worker=False, market=False, health_monitor=False)
    await second.queue.recover()
    processed = await second.worker.drain()
    assert processed == 1
    done = await second.orders.get(user_id, accepted.order.order_id)
    assert done.status is OrderStatus.FILLED
    session = await second.sessions.open(user_id, config_id)
    assert [o.client_order_id for o in await session.broker.get_orders()] == [done.order_id]
    # Draining again (a redelivery) does nothing.
    assert await second.worker.drain() == 0
    await second.stop()

    # Third life: still one order at the broker, with its fills, after a restart.
    third = Runtime(settings)
    await third.start(worker=True, market=False, health_monitor=False)
    session = await third.sessions.open(user_id, config_id)
    assert len(await session.broker.get_orders()) == 1
    positions = await session.broker.get_positions()
    assert [(p["symbol"], p["quantity"]) for p in positions] == [("TCS", 2)]
    await third.stop()


async def test_claimed_entry_of_a_crashed_worker_is_redelivered(settings: Settings) -> None:
    first = Runtime(settings)
    await first.start(worker=False, market=False, health_monitor=False)
    user_id, config_id = await user_with_config(first)
    accepted = await first.orders.place(user_id, config_id, order(), wait=0)
    claimed = await first.queue.claim("dead-worker", 10)  # claimed, then the worker died
    assert [m.order_id for m in claimed] == [accepted.order.order_id]
    await first.stop()

    second = Runtime(settings)
    await second.start(worker=False, market=False, health_monitor=False)
    assert await second.queue.recover() == 1  # what start(worker=True) does first
    assert await second.worker.drain() == 1
    result = await second.orders.get(user_id, accepted.order.order_id)
    assert result.status is OrderStatus.FILLED
    async with second.db() as db:
        assert (await db.scalars(select(QueueEntryRow))).all() == []
    await second.stop()


async def test_interrupted_submission_is_reconciled_not_resent(settings: Settings) -> None:
    """The worker marked the order SUBMITTED and died before (or while) calling the broker.
    After restart the order must not be sent again: the broker is asked, and an order it
    never saw is closed as REJECTED with an explanation."""
    first = Runtime(settings)
    await first.start(worker=False, market=False, health_monitor=False)
    user_id, config_id = await user_with_config(first)
    accepted = await first.orders.place(user_id, config_id, order(), wait=0)
    await first.queue.claim("dying-worker", 10)
    async with first.db() as db, db.begin():
        await db.execute(
            update(OrderRow)
            .where(OrderRow.id == accepted.order.order_id)
            .values(status=OrderStatus.SUBMITTED.value)
        )
    await first.stop()

    second = Runtime(settings)
    await second.start(worker=False, market=False, health_monitor=False)
    await second.queue.recover()
    await second.worker.reconcile_all()
    await second.worker.drain()
    final = await second.orders.get(user_id, accepted.order.order_id)
    assert final.status is OrderStatus.REJECTED
    assert "not resent" in (final.message or "")
    session = await second.sessions.open(user_id, config_id)
    assert await session.broker.get_orders() == []
    await second.stop()


async def test_interrupted_submission_that_reached_the_broker_is_adopted(
    settings: Settings,
) -> None:
    """Same crash, but the broker did receive the order: reconciliation finds it by its tag
    and records its fills; still nothing is sent twice."""
    first = Runtime(settings)
    await first.start(worker=False, market=False, health_monitor=False)
    user_id, config_id = await user_with_config(first)
    accepted = await first.orders.place(user_id, config_id, order(quantity=4), wait=0)
    await first.queue.claim("dying-worker", 10)
    session = await first.sessions.open(user_id, config_id)
    session.broker.set_order_update_handler(None)  # the crash: updates never recorded
    request = accepted.order.to_request()
    request.client_order_id = accepted.order.order_id
    await session.broker.place_order(request)
    async with first.db() as db, db.begin():
        await db.execute(
            update(OrderRow)
            .where(OrderRow.id == accepted.order.order_id)
            .values(status=OrderStatus.SUBMITTED.value)
        )
    await first.stop()

    second = Runtime(settings)
    await second.start(worker=True, market=False, health_monitor=False)
    final = await second.orders.get(user_id, accepted.order.order_id)
    assert final.status is OrderStatus.FILLED
    assert final.filled_quantity == 4 and final.broker_order_id
    session = await second.sessions.open(user_id, config_id)
    assert len(await session.broker.get_orders()) == 1
    await second.stop()
