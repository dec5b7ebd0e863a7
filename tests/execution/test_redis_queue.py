"""The Redis Streams queue against a real Redis, on SQLite and PostgreSQL: priority order,
take-over of a dead consumer's entries, dead-lettering, no duplicate execution under
redelivery, the outbox relay and waiting for an outcome from another process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.helpers import order, user_with_config
from trading_backend.domain import OrderStatus
from trading_backend.execution.queue import Outcome, Priority, QueueMessage
from trading_backend.execution.redis_queue import GROUP, RedisStreamsQueue
from trading_backend.runtime import Runtime
from trading_backend.storage.models import OrderEventRow, QueueEntryRow

MakeRuntime = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (Redis is shared)."""
    value = f"tbtest:{uuid.uuid4().hex}:"
    yield value
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=value + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def make_runtime(
    tmp_path: Path, database_url: str, redis_url: str, prefix: str
) -> AsyncIterator[MakeRuntime]:
    """Runtimes ("processes") sharing one database, one Redis and one key prefix."""
    base = make_settings(
        tmp_path,
        database_url,
        redis_url=redis_url,
        queue_backend="redis",
        queue_prefix=prefix,
        queue_claim_idle_seconds=0.2,
        queue_relay_grace_seconds=60.0,  # the relay stays out of the way unless a test asks
        rate_limit_enabled=False,
    )
    started: list[Runtime] = []

    async def make(*, worker: bool = False, **overrides: Any) -> Runtime:
        runtime = Runtime(base.model_copy(update=overrides))
        await runtime.start(worker=worker, market=False, health_monitor=False)
        started.append(runtime)
        return runtime

    yield make
    for runtime in reversed(started):
        await runtime.stop()


def redis_queue(runtime: Runtime) -> RedisStreamsQueue:
    assert isinstance(runtime.queue, RedisStreamsQueue)
    return runtime.queue


async def enqueue(
    runtime: Runtime, queue: RedisStreamsQueue, order_id: str, priority: Priority
) -> int:
    async with runtime.db() as session, session.begin():
        entry_id = await queue.enqueue(session, kind="place", order_id=order_id, priority=priority)
    await queue.flush()  # notify()'s publication, awaited
    return entry_id


async def claim_within(
    queue: RedisStreamsQueue, worker_id: str, timeout: float = 5.0
) -> list[QueueMessage]:
    """Claim until something comes (a take-over needs ``claim_idle`` to pass), waiting on
    the streams in between; fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if found := await queue.claim(worker_id, 10):
            return found
        await queue.wait_for_work(0.05)
    pytest.fail(f"{worker_id} claimed nothing within {timeout}s")


def dead_letter_count() -> float:
    return REGISTRY.get_sample_value("trading_backend_queue_dead_letters_total") or 0.0


async def test_high_before_normal_before_low(make_runtime: MakeRuntime) -> None:
    # No take-over here: claimed entries stay with their consumer however slow the machine.
    runtime = await make_runtime(queue_claim_idle_seconds=600.0)
    queue = redis_queue(runtime)
    for order_id, priority in [
        ("low-1", Priority.LOW),
        ("normal-1", Priority.NORMAL),
        ("high-1", Priority.HIGH),
    ]:
        await enqueue(runtime, queue, order_id, priority)
    one_by_one = [[m.order_id for m in await queue.claim("w1", 1)] for _ in range(3)]
    assert one_by_one == [["high-1"], ["normal-1"], ["low-1"]]
    assert await queue.claim("w1", 10) == []  # claimed entries are not handed out twice

    for order_id, priority in [
        ("low-2", Priority.LOW),
        ("normal-2", Priority.NORMAL),
        ("high-2", Priority.HIGH),
        ("normal-3", Priority.NORMAL),
        ("high-3", Priority.HIGH),
    ]:
        await enqueue(runtime, queue, order_id, priority)
    batch = await queue.claim("w2", 10)
    assert [m.order_id for m in batch] == ["high-2", "high-3", "normal-2", "normal-3", "low-2"]
    depth = await queue.depth()
    assert (depth["ready"], depth["claimed"], depth["dead"]) == (0, 8, 0)


async def test_entry_of_a_dead_consumer_is_taken_over_after_claim_idle(
    make_runtime: MakeRuntime, redis_url: str, prefix: str
) -> None:
    runtime = await make_runtime()
    queue = redis_queue(runtime)
    entry_id = await enqueue(runtime, queue, "o1", Priority.NORMAL)
    [first] = await queue.claim("dead-worker", 10)  # ... and that worker never acks
    assert first.attempts == 1

    # Another process; a claim_idle long enough that "not yet" holds on a busy machine.
    other = RedisStreamsQueue(runtime.db, redis_url, prefix=prefix, claim_idle=1.0)
    try:
        assert await other.claim("live-worker", 10) == []  # not idle long enough yet
        [taken] = await claim_within(other, "live-worker")
        assert (taken.entry_id, taken.attempts) == (entry_id, 2)  # second delivery
        pending = await other.redis.xpending_range(
            other.stream(Priority.NORMAL), GROUP, "-", "+", 10
        )
        assert [p["consumer"] for p in pending] == ["live-worker"]
        await other.ack(taken, Outcome(True))
        depth = await other.depth()
        assert (depth["ready"], depth["claimed"]) == (0, 0)
    finally:
        await other.close()


async def test_released_entry_is_dead_lettered_after_max_attempts(
    make_runtime: MakeRuntime,
) -> None:
    runtime = await make_runtime(queue_max_attempts=2)
    queue = redis_queue(runtime)
    before = dead_letter_count()
    entry_id = await enqueue(runtime, queue, "o1", Priority.NORMAL)
    [first] = await queue.claim("w", 1)
    await queue.release(first, "boom")
    [second] = await queue.claim("w", 1)  # retried at once, as the embedded queue does
    assert (second.entry_id, second.attempts) == (entry_id, 2)
    await queue.release(second, "boom again")

    assert await queue.claim("w", 10) == []
    dead = await queue.redis.xrange(queue.dead_stream)
    assert [(f["entry_id"], f["error"], f["attempts"]) for _, f in dead] == [
        (str(entry_id), "boom again", "2")
    ]
    assert await queue.wait_processed(entry_id, 1.0) == Outcome(
        False, "MAX_RETRIES_EXHAUSTED", "boom again"
    )
    assert dead_letter_count() == before + 1
    depth = await queue.depth()
    assert (depth["ready"], depth["claimed"], depth["dead"]) == (0, 0, 1)
    async with runtime.db() as session:
        row = await session.get(QueueEntryRow, entry_id)
        assert row is not None and row.status == "dead" and row.last_error == "boom again"


async def test_entry_whose_workers_keep_dying_is_dead_lettered(
    make_runtime: MakeRuntime, redis_url: str, prefix: str
) -> None:
    runtime = await make_runtime(queue_max_attempts=2)
    queue = redis_queue(runtime)
    before = dead_letter_count()
    entry_id = await enqueue(runtime, queue, "poison", Priority.HIGH)
    await queue.claim("dies-first", 10)  # delivery 1: the worker dies
    second = RedisStreamsQueue(runtime.db, redis_url, prefix=prefix, claim_idle=0.2, max_attempts=2)
    third = RedisStreamsQueue(runtime.db, redis_url, prefix=prefix, claim_idle=0.2, max_attempts=2)
    try:
        [taken] = await claim_within(second, "dies-second")  # delivery 2: dies too
        assert taken.attempts == 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while await third.redis.xlen(third.dead_stream) == 0:  # delivery 3 is not handed out
            assert loop.time() < deadline, "never dead-lettered"
            assert await third.claim("survivor", 10) == []
            await third.wait_for_work(0.05)
        [(_, fields)] = await third.redis.xrange(third.dead_stream)
        assert fields["entry_id"] == str(entry_id)
        assert "without an outcome" in fields["error"]
        assert dead_letter_count() == before + 1
        assert await queue.wait_processed(entry_id, 1.0) == Outcome(
            False, "MAX_RETRIES_EXHAUSTED", fields["error"]
        )
        depth = await third.depth()
        assert (depth["claimed"], depth["dead"]) == (0, 1)
    finally:
        await second.close()
        await third.close()


async def test_redelivered_entry_places_the_order_once(make_runtime: MakeRuntime) -> None:
    runtime = await make_runtime()
    queue = redis_queue(runtime)
    user_id, config_id = await user_with_config(runtime)
    placed = await runtime.orders.place(user_id, config_id, order(quantity=3), wait=0)
    await queue.flush()
    # A worker claims the entry, places the order at the broker, and dies before acking.
    [message] = await queue.claim("doomed-worker", 10)
    assert (await runtime.worker.process(message)).ok
    # And the entry was published twice (a relay raced the committing process).
    await queue.redis.xadd(queue.stream(Priority.NORMAL), {"entry_id": str(message.entry_id)})

    # The live worker gets the duplicate at once and the dead worker's copy after claim_idle.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        await runtime.worker.run_once()
        depth = await queue.depth()
        if depth["ready"] == depth["claimed"] == 0:
            break
        assert loop.time() < deadline, f"queue never drained: {depth}"
        await queue.wait_for_work(0.05)

    done = await runtime.orders.get(user_id, placed.order.order_id)
    assert done.status is OrderStatus.FILLED
    session = await runtime.sessions.open(user_id, config_id)
    assert [o.client_order_id for o in await session.broker.get_orders()] == [done.order_id]
    async with runtime.db() as db:
        submitted = await db.scalar(
            select(func.count())
            .select_from(OrderEventRow)
            .where(OrderEventRow.order_id == done.order_id, OrderEventRow.event_type == "SUBMITTED")
        )
        assert submitted == 1
        assert await db.get(QueueEntryRow, message.entry_id) is None


async def test_relay_publishes_committed_rows_nobody_published(
    make_runtime: MakeRuntime, redis_url: str, prefix: str
) -> None:
    runtime = await make_runtime()
    queue = redis_queue(runtime)
    # Redis is down when the order commits: accepted anyway, published later.
    down = RedisStreamsQueue(runtime.db, "redis://127.0.0.1:1/0", prefix=prefix)
    async with runtime.db() as session, session.begin():
        while_down = await down.enqueue(
            session, kind="place", order_id="o-down", priority=Priority.HIGH
        )
    await down.flush()  # fails quietly: the row stays unpublished
    await down.close()
    # A process that died between its commit and its XADD.
    async with runtime.db() as session, session.begin():
        row = QueueEntryRow(
            kind="place",
            priority=int(Priority.NORMAL),
            order_id="o-crash",
            payload={},
            status="ready",
            created_at=datetime.now(UTC),
        )
        session.add(row)
        await session.flush()
        crashed = row.id

    assert await queue.relay_once() == 0  # younger than the grace: maybe still in flight
    relay = RedisStreamsQueue(runtime.db, redis_url, prefix=prefix, relay_grace=0.0)
    try:
        assert await relay.relay_once() == 2
        assert await relay.relay_once() == 0  # published once, not again
        async with runtime.db() as session:
            rows = {
                r.id: r
                for r in await session.scalars(
                    select(QueueEntryRow).where(QueueEntryRow.id.in_([while_down, crashed]))
                )
            }
        for priority, entry_id in ((Priority.HIGH, while_down), (Priority.NORMAL, crashed)):
            [(stream_id, fields)] = await relay.redis.xrange(relay.stream(priority))
            assert fields["entry_id"] == str(entry_id)
            assert rows[entry_id].stream_id == stream_id
            assert rows[entry_id].published_at is not None
        claimed = await queue.claim("w", 10)
        assert [m.entry_id for m in claimed] == [while_down, crashed]
    finally:
        await relay.close()


async def test_wait_processed_across_two_runtimes(make_runtime: MakeRuntime) -> None:
    api = await make_runtime(worker=False)  # an API process: no worker of its own
    await make_runtime(worker=True)  # a worker process
    queue = redis_queue(api)
    await asyncio.wait_for(queue.listening.wait(), 5.0)
    user_id, config_id = await user_with_config(api)

    result = await api.orders.place(user_id, config_id, order(), wait=10.0)
    assert result.outcome is not None and result.outcome.ok
    assert result.order.status is OrderStatus.FILLED

    # The outcome travels on the channel: a waiter whose row still exists gets it from there.
    async with api.db() as session, session.begin():
        row = QueueEntryRow(
            kind="cancel",
            priority=int(Priority.HIGH),
            order_id="elsewhere",
            payload={},
            status="ready",
            created_at=datetime.now(UTC),
        )
        session.add(row)
        await session.flush()
        entry_id = row.id
    waiting = asyncio.create_task(queue.wait_processed(entry_id, 10.0))
    outcome = Outcome(False, "ORDER_NOT_CANCELLABLE", "order already FILLED")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not waiting.done():  # published until the waiter (registering now) has it
        assert loop.time() < deadline, "the outcome never reached the waiter"
        await queue.redis.publish(queue.outcomes_channel, queue._outcome_json(entry_id, outcome))
        await asyncio.wait({waiting}, timeout=0.05)
    assert waiting.result() == outcome
