"""The one outbox insert (``execution.queue.add_entry``) both queue backends use, and the
queue-lag histogram they feed on an entry's first claim. SQLite and (with
TEST_DATABASE_URL) PostgreSQL; the Redis half needs TEST_REDIS_URL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from trading_backend.execution.queue import EmbeddedQueue, Priority, add_entry
from trading_backend.execution.redis_queue import RedisStreamsQueue
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.storage.models import QueueEntryRow

LAG_COUNT = "trading_backend_queue_lag_seconds_count"


@pytest.fixture
async def idle_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A migrated runtime with no order worker: nothing claims the entries but the test."""
    runtime = Runtime(settings)
    await runtime.start(worker=False, market=False, health_monitor=False)
    try:
        yield runtime
    finally:
        await runtime.stop()


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


def lag_count() -> float:
    return REGISTRY.get_sample_value(LAG_COUNT) or 0.0


async def test_add_entry_writes_a_ready_row_in_the_callers_transaction(
    idle_runtime: Runtime,
) -> None:
    before = datetime.now(UTC)
    async with idle_runtime.db() as session, session.begin():
        entry_id = await add_entry(
            session,
            kind="cancel",
            order_id="ord-1",
            priority=Priority.HIGH,
            payload={"reason": "test"},
            correlation_id="corr-1",
        )
        plain_id = await add_entry(
            session, kind="place", order_id="ord-2", priority=Priority.NORMAL
        )
        assert entry_id > 0 and plain_id > entry_id  # flushed: ids exist before the commit
    async with idle_runtime.db() as session:
        row = await session.get(QueueEntryRow, entry_id)
        plain = await session.get(QueueEntryRow, plain_id)
    assert row is not None and plain is not None
    assert (row.kind, row.order_id, row.priority) == ("cancel", "ord-1", int(Priority.HIGH))
    assert row.payload == {"reason": "test"} and row.correlation_id == "corr-1"
    assert (row.status, row.attempts, row.claimed_by, row.published_at) == ("ready", 0, None, None)
    assert before <= row.created_at <= datetime.now(UTC)
    assert plain.payload == {} and plain.correlation_id is None


async def test_a_rolled_back_transaction_leaves_no_entry(idle_runtime: Runtime) -> None:
    queue = EmbeddedQueue(idle_runtime.db)
    with pytest.raises(RuntimeError):
        async with idle_runtime.db() as session, session.begin():
            await queue.enqueue(session, kind="place", order_id="gone", priority=Priority.LOW)
            raise RuntimeError("the order's transaction fails")
    assert await queue.depth() == {"ready": 0, "claimed": 0, "dead": 0}


async def test_embedded_queue_lag_is_observed_on_the_first_claim_only(
    idle_runtime: Runtime,
) -> None:
    queue = EmbeddedQueue(idle_runtime.db)
    async with idle_runtime.db() as session, session.begin():
        await queue.enqueue(session, kind="place", order_id="o1", priority=Priority.NORMAL)
    start = lag_count()
    [first] = await queue.claim("w", 1)
    assert lag_count() == start + 1
    await queue.release(first, "try again")
    [second] = await queue.claim("w", 1)
    assert second.attempts == 2
    assert lag_count() == start + 1  # a redelivery is not queue lag


async def test_redis_queue_writes_the_same_row_and_observes_lag_once(
    idle_runtime: Runtime, redis_url: str, prefix: str
) -> None:
    queue = RedisStreamsQueue(idle_runtime.db, redis_url, prefix=prefix)
    try:
        async with idle_runtime.db() as session, session.begin():
            entry_id = await queue.enqueue(
                session,
                kind="place",
                order_id="o1",
                priority=Priority.HIGH,
                payload={"user_id": "u", "config_id": "c"},
                correlation_id="corr-r",
            )
        await queue.flush()  # published after the commit
        async with idle_runtime.db() as session:
            row = await session.get(QueueEntryRow, entry_id)
        assert row is not None
        assert (row.kind, row.priority, row.status) == ("place", int(Priority.HIGH), "ready")
        assert row.payload == {"user_id": "u", "config_id": "c"}
        assert row.correlation_id == "corr-r" and row.published_at is not None
        start = lag_count()
        [first] = await queue.claim("w", 1)
        assert first.entry_id == entry_id and lag_count() == start + 1
        await queue.release(first, "try again")
        [second] = await queue.claim("w", 1)
        assert second.entry_id == entry_id and second.attempts == 2
        assert lag_count() == start + 1
        queue.forget(entry_id)
    finally:
        await queue.close()
