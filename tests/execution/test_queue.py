"""The embedded queue: priority order, claims, release and dead-lettering."""

from __future__ import annotations

from trading_backend.execution.queue import EmbeddedQueue, Outcome, Priority
from trading_backend.runtime import Runtime


async def enqueue(queue: EmbeddedQueue, runtime: Runtime, order_id: str, priority: Priority) -> int:
    async with runtime.db() as session, session.begin():
        return await queue.enqueue(session, kind="place", order_id=order_id, priority=priority)


async def test_high_before_normal_before_low_then_fifo(runtime: Runtime) -> None:
    queue = EmbeddedQueue(runtime.db)
    for order_id, priority in [
        ("low-1", Priority.LOW),
        ("normal-1", Priority.NORMAL),
        ("high-1", Priority.HIGH),
        ("normal-2", Priority.NORMAL),
        ("high-2", Priority.HIGH),
    ]:
        await enqueue(queue, runtime, order_id, priority)
    claimed = await queue.claim("w", 10)
    assert [m.order_id for m in claimed] == ["high-1", "high-2", "normal-1", "normal-2", "low-1"]
    assert await queue.claim("w", 10) == []  # claimed entries are not handed out twice
    assert (await queue.depth())["claimed"] == 5


async def test_release_retries_then_dead_letters(runtime: Runtime) -> None:
    queue = EmbeddedQueue(runtime.db, max_attempts=2)
    await enqueue(queue, runtime, "o1", Priority.NORMAL)
    [first] = await queue.claim("w", 1)
    await queue.release(first, "boom")
    [second] = await queue.claim("w", 1)
    assert second.attempts == 2
    await queue.release(second, "boom again")
    assert await queue.claim("w", 1) == []
    assert await queue.depth() == {"ready": 0, "claimed": 0, "dead": 1}


async def test_ack_removes_and_wakes_the_waiter(runtime: Runtime) -> None:
    queue = EmbeddedQueue(runtime.db)
    queue.has_local_worker = True
    entry_id = await enqueue(queue, runtime, "o1", Priority.NORMAL)
    [message] = await queue.claim("w", 1)
    await queue.ack(message, Outcome(True, None, "done"))
    assert await queue.wait_processed(entry_id, 1.0) is not None
    assert await queue.depth() == {"ready": 0, "claimed": 0, "dead": 0}
