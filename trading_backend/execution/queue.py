"""The order queue interface and its embedded implementation.

The embedded queue is a table in the main database written in the same transaction as the
order it carries (a transactional outbox): an order accepted before a crash is still queued
after restart, and is executed once. The Redis Streams queue (production) implements the
same interface.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, Protocol

from prometheus_client import Histogram
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import Order
from trading_backend.storage.models import QueueEntryRow

# Seconds from an entry's commit-time row to its first claim by a worker (both queue
# backends): a growing lag means the workers cannot keep up. Redeliveries are not counted
# again, so a retried entry does not pass for a slow queue.
QUEUE_LAG = Histogram(
    "trading_backend_queue_lag_seconds",
    "Seconds from writing a queue entry to a worker first claiming it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class Priority(IntEnum):
    HIGH = 0  # cancels and square-offs
    NORMAL = 1  # ordinary orders
    LOW = 2  # bulk work


class MessageKind:
    PLACE = "place"
    MODIFY = "modify"
    CANCEL = "cancel"


@dataclass(slots=True)
class QueueMessage:
    entry_id: int
    kind: str
    order_id: str
    priority: Priority
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    correlation_id: str | None = None


@dataclass(slots=True)
class Outcome:
    """What a worker reports back to whoever waits on a queue entry."""

    ok: bool
    error_code: str | None = None
    message: str | None = None
    order: Order | None = None  # the order as the worker left it (in-process waiters only)


class OrderQueue(Protocol):
    async def enqueue(
        self,
        session: AsyncSession,
        *,
        kind: str,
        order_id: str,
        priority: Priority,
        payload: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> int:
        """Add an entry inside the caller's transaction; returns its id."""
        ...

    def notify(self) -> None:
        """Wake waiting workers after the enqueuing transaction committed."""
        ...

    def forget(self, entry_id: int) -> None:
        """Drop interest in an entry (its transaction rolled back, or nobody waits)."""
        ...

    async def claim(self, worker_id: str, limit: int) -> list[QueueMessage]: ...

    async def ack(self, message: QueueMessage, outcome: Outcome) -> None: ...

    async def release(self, message: QueueMessage, error: str) -> None: ...

    async def wait_for_work(self, timeout: float) -> None: ...

    async def wait_processed(self, entry_id: int, timeout: float) -> Outcome | None: ...

    async def recover(self, stale_after: timedelta | None = None) -> int: ...

    async def depth(self) -> dict[str, int]: ...


async def add_entry(
    session: AsyncSession,
    *,
    kind: str,
    order_id: str,
    priority: Priority,
    payload: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> int:
    """Write a ready queue entry in the caller's transaction and return its id (flushed,
    not committed). The one place the outbox row is made, for both queue backends: what
    differs between them (waking a local worker, relaying to Redis after the commit) is
    theirs to do with the id."""
    row = QueueEntryRow(
        kind=kind,
        priority=int(priority),
        order_id=order_id,
        payload=payload or {},
        status="ready",
        correlation_id=correlation_id,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    await session.flush()
    return row.id


def observe_first_claim(attempts: int, created_at: datetime, now: datetime) -> None:
    """Record the queue lag of an entry on its first delivery (``attempts == 1``)."""
    if attempts == 1:
        QUEUE_LAG.observe(max(0.0, (now - created_at).total_seconds()))


class EmbeddedQueue:
    """Database-table queue with in-process wake-ups (no polling while work is flowing)."""

    def __init__(self, db: async_sessionmaker[AsyncSession], max_attempts: int = 5) -> None:
        self._db = db
        self._claim_lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._waiters: dict[int, list[asyncio.Future[Outcome]]] = defaultdict(list)
        self.max_attempts = max_attempts
        self.has_local_worker = False

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        kind: str,
        order_id: str,
        priority: Priority,
        payload: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> int:
        entry_id = await add_entry(
            session,
            kind=kind,
            order_id=order_id,
            priority=priority,
            payload=payload,
            correlation_id=correlation_id,
        )
        if self.has_local_worker:
            # Registered before the commit, so the worker cannot finish unseen.
            self._expect(entry_id)
        return entry_id

    def _expect(self, entry_id: int) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[entry_id].append(future)
        return future

    def forget(self, entry_id: int) -> None:
        """Drop the waiters of an entry whose transaction did not commit."""
        for future in self._waiters.pop(entry_id, []):
            future.cancel()

    def notify(self) -> None:
        self._work.set()

    async def claim(self, worker_id: str, limit: int) -> list[QueueMessage]:
        """Take up to ``limit`` ready entries, HIGH before NORMAL before LOW, oldest first."""
        async with self._claim_lock, self._db() as session, session.begin():
            rows = (
                await session.scalars(
                    select(QueueEntryRow)
                    .where(QueueEntryRow.status == "ready")
                    .order_by(QueueEntryRow.priority, QueueEntryRow.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            now = datetime.now(UTC)
            for row in rows:
                row.status = "claimed"
                row.claimed_by = worker_id
                row.claimed_at = now
                row.attempts += 1
                observe_first_claim(row.attempts, row.created_at, now)
            return [
                QueueMessage(
                    entry_id=row.id,
                    kind=row.kind,
                    order_id=row.order_id,
                    priority=Priority(row.priority),
                    payload=dict(row.payload or {}),
                    attempts=row.attempts,
                    correlation_id=row.correlation_id,
                )
                for row in rows
            ]

    async def ack(self, message: QueueMessage, outcome: Outcome) -> None:
        async with self._db() as session, session.begin():
            await session.execute(delete(QueueEntryRow).where(QueueEntryRow.id == message.entry_id))
        self._resolve(message.entry_id, outcome)

    async def release(self, message: QueueMessage, error: str) -> None:
        """Put an entry back after a failure that left nothing half done; dead after N tries."""
        dead = message.attempts >= self.max_attempts
        async with self._db() as session, session.begin():
            await session.execute(
                update(QueueEntryRow)
                .where(QueueEntryRow.id == message.entry_id)
                .values(status="dead" if dead else "ready", last_error=error[:2000])
            )
        if dead:
            self._resolve(message.entry_id, Outcome(False, "MAX_RETRIES_EXHAUSTED", error))
        else:
            self._work.set()

    def _resolve(self, entry_id: int, outcome: Outcome) -> None:
        for future in self._waiters.pop(entry_id, []):
            if not future.done():
                future.set_result(outcome)

    async def wait_for_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    async def wait_processed(self, entry_id: int, timeout: float) -> Outcome | None:
        """Wait until a worker acknowledged ``entry_id``; None when the time ran out."""
        if timeout <= 0:
            self.forget(entry_id)
            return None
        if not self.has_local_worker:
            return await self._poll_processed(entry_id, timeout)
        registered = self._waiters.get(entry_id)
        if registered:
            future = registered[0]
        else:
            future = self._expect(entry_id)
            # Enqueued before this process had a worker: it may be done already.
            async with self._db() as session:
                if await session.get(QueueEntryRow, entry_id) is None:
                    self._resolve(entry_id, Outcome(True))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self.forget(entry_id)

    async def _poll_processed(self, entry_id: int, timeout: float) -> Outcome | None:
        """Worker in another process: watch the entry disappear, backing off gently."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        while True:
            async with self._db() as session:
                row = await session.get(QueueEntryRow, entry_id)
                if row is None:
                    return Outcome(True)
                if row.status == "dead":
                    return Outcome(False, "MAX_RETRIES_EXHAUSTED", row.last_error)
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.25)

    async def recover(self, stale_after: timedelta | None = None) -> int:
        """Return claimed entries to the queue: all of them at start-up of the only worker
        process (embedded mode), or those claimed longer ago than ``stale_after``."""
        async with self._db() as session, session.begin():
            statement = update(QueueEntryRow).where(QueueEntryRow.status == "claimed")
            if stale_after is not None:
                statement = statement.where(
                    QueueEntryRow.claimed_at < datetime.now(UTC) - stale_after
                )
            result = await session.execute(statement.values(status="ready", claimed_by=None))
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            self._work.set()
        return count

    async def depth(self) -> dict[str, int]:
        async with self._db() as session:
            rows = await session.execute(
                select(QueueEntryRow.status, func.count()).group_by(QueueEntryRow.status)
            )
            counts = {status: int(n) for status, n in rows.all()}
        return {
            "ready": counts.get("ready", 0),
            "claimed": counts.get("claimed", 0),
            "dead": counts.get("dead", 0),
        }
