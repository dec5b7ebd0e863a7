"""The Redis Streams order queue (production): the ``OrderQueue`` interface of the embedded
queue, for any number of API and worker processes sharing one database and one Redis.

Why it looks the way it does:

- **Durability first.** ``enqueue`` still writes the ``queue_entries`` row in the order's own
  transaction (the transactional outbox), so an order the API accepted exists even if Redis
  is down at that instant. Only after the commit is the entry relayed to Redis: at once by
  the committing process (``notify``), and by ``run_relay`` for any committed row nobody
  published (a crash between commit and XADD, Redis briefly away). A published row records
  when and under which stream id, so the relay publishes each row once.
- **Priority.** One stream per priority (``<prefix>orders:high|normal|low``), one consumer
  group (``workers``), consumer name = worker id. ``claim`` reads HIGH, then NORMAL, then
  LOW; when all are empty ``wait_for_work`` blocks on the three at once.
- **The database decides.** A claimed message carries only the entry id; the entry itself
  (kind, payload, attempts) is read from its row. A message whose row is gone (already done)
  or dead is a stale duplicate and is acknowledged without running: publishing twice never
  executes twice (and the worker's PENDING -> SUBMITTED guard would stop a second placement
  anyway).
- **XACK only after the outcome is durable.** ``ack`` deletes the row (committed), then
  XACKs. A worker that dies in between leaves the message pending; the next delivery finds
  the row gone and drops it.
- **Crash recovery.** Entries idle longer than ``claim_idle`` in a consumer's pending list
  (a dead worker's) are taken over with XAUTOCLAIM, periodically from ``claim`` and by
  ``recover``. An entry that failed ``max_attempts`` deliveries (released with an error, or
  delivered to workers that died) goes to ``<prefix>orders:dead``, its row is marked dead,
  its waiters get MAX_RETRIES_EXHAUSTED and ``trading_backend_queue_dead_letters_total`` rises.
- **Waiting across processes.** A worker publishes each outcome on ``<prefix>outcomes``; every
  process runs one subscriber (``run_outcome_listener``) resolving its waiters, and a waiter
  also checks the row now and then (gone = done, dead = failed), so a missed message costs a
  short delay, never a hang. An ack in the same process resolves its waiters directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import Table, bindparam, delete, event, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from trading_backend.domain import DomainError, ErrorCode, OrderStatus
from trading_backend.execution.queue import (
    EmbeddedQueue,
    Outcome,
    Priority,
    QueueMessage,
    add_entry,
    observe_first_claim,
)
from trading_backend.settings import ConfigurationError, Settings
from trading_backend.storage.models import OrderRow, QueueEntryRow
from trading_backend.storage.repositories import add_audit

log = structlog.get_logger(__name__)

GROUP = "workers"
_SESSION_KEY = "tb_redis_queue_outbox"  # session.info: entries enqueued in this transaction
_HOOKED_KEY = "tb_redis_queue_hooked"  # session.info: commit/rollback listeners installed

DEAD_LETTERS = Counter(
    "trading_backend_queue_dead_letters",
    "Queue entries moved to the dead-letter stream after too many failed deliveries",
)
DUPLICATES_SKIPPED = Counter(
    "trading_backend_queue_duplicates_skipped",
    "Queue messages dropped because their entry was already done or dead",
)
QUEUE_DEPTH = Gauge(
    "trading_backend_queue_depth",
    "Queue entries per stream and state (as of the last depth() call)",
    ["stream", "state"],
)


@dataclass(slots=True)
class StreamMessage(QueueMessage):
    """A claimed entry plus the stream message that delivered it (needed to XACK it)."""

    stream_id: str = ""


@dataclass(slots=True)
class _Fresh:
    """An entry enqueued in a transaction of this process, to relay once it commits."""

    entry_id: int
    kind: str
    order_id: str
    priority: Priority


@dataclass(slots=True)
class _Candidate:
    """A stream message read or claimed, before its row was checked."""

    priority: Priority
    stream_id: str
    entry_id: int | None
    deliveries: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fields(entry_id: int, kind: str, order_id: str) -> dict[Any, Any]:
    """A stream message: the entry id (all a worker needs), kind and order for people."""
    return {"entry_id": str(entry_id), "kind": kind, "order_id": order_id}


def _entry_id(fields: Any) -> int | None:
    try:
        return int(fields["entry_id"])
    except (KeyError, TypeError, ValueError):
        return None


def _stream_entries(response: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    """XREADGROUP's answer as ``[(stream, [(id, fields), ...]), ...]`` (RESP2 or RESP3)."""
    if not response:
        return []
    if isinstance(response, dict):
        return [
            (str(k), list(v[0] if v and isinstance(v[0], list) else v)) for k, v in response.items()
        ]
    return [(str(stream), list(entries)) for stream, entries in response]


class RedisStreamsQueue:
    """Redis Streams behind the ``OrderQueue`` interface, with the database as outbox."""

    backend = "redis"

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        redis: Redis | str,
        *,
        prefix: str = "tb:",
        claim_idle: float = 30.0,
        max_attempts: int = 5,
        relay_grace: float = 5.0,
    ) -> None:
        """``claim_idle``: seconds a delivered entry may sit unacknowledged before another
        worker takes it over. ``relay_grace``: how old an unpublished committed row must be
        before the relay publishes it (its own process normally does so at once)."""
        self._db = db
        self._redis: Redis = (
            Redis.from_url(redis, decode_responses=True) if isinstance(redis, str) else redis
        )
        self.prefix = prefix
        self.claim_idle = claim_idle
        self.max_attempts = max_attempts
        self.relay_grace = relay_grace
        self.has_local_worker = False
        # The consumer that ``recover`` claims for (the runtime sets its worker's id).
        self.consumer_name = f"recovery-{uuid.uuid4().hex[:8]}"
        self._waiters: dict[int, list[asyncio.Future[Outcome]]] = defaultdict(list)
        self._committed: list[_Fresh] = []  # committed here, not yet published
        self._publishing: set[int] = set()  # being published by this process right now
        self._flush_task: asyncio.Task[None] | None = None
        self._stash: dict[str, list[_Candidate]] = defaultdict(list)  # read while waiting
        self._consumer: str | None = None  # the worker id of the latest claim
        self._groups_ready = False
        self._autoclaim_every = max(0.05, claim_idle / 2)
        self._last_autoclaim = float("-inf")
        self.listening = asyncio.Event()  # the outcome subscriber is subscribed

    # -- names -------------------------------------------------------------------------------
    def stream(self, priority: Priority) -> str:
        return f"{self.prefix}orders:{priority.name.lower()}"

    @property
    def dead_stream(self) -> str:
        return f"{self.prefix}orders:dead"

    @property
    def outcomes_channel(self) -> str:
        return f"{self.prefix}outcomes"

    @property
    def redis(self) -> Redis:
        return self._redis

    async def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        for priority in Priority:
            try:
                await self._redis.xgroup_create(self.stream(priority), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    # -- enqueue and relay ---------------------------------------------------------------------
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
        """Write the outbox row in the caller's transaction; it is published after commit."""
        entry_id = await add_entry(
            session,
            kind=kind,
            order_id=order_id,
            priority=priority,
            payload=payload,
            correlation_id=correlation_id,
        )
        self._track(session.sync_session, _Fresh(entry_id, kind, order_id, priority))
        # Registered before the commit, so no outcome (local or published) can go unseen.
        self._expect(entry_id)
        return entry_id

    def _track(self, session: Session, fresh: _Fresh) -> None:
        """Remember the entry on its session; the commit hands it to ``notify``'s relay,
        a rollback forgets it (nothing to publish, nobody to wake)."""
        if not session.info.get(_HOOKED_KEY):
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", self._after_rollback)
            session.info[_HOOKED_KEY] = True
        session.info.setdefault(_SESSION_KEY, []).append(fresh)

    def _after_commit(self, session: Session) -> None:
        self._committed.extend(session.info.pop(_SESSION_KEY, []))

    def _after_rollback(self, session: Session) -> None:
        for fresh in session.info.pop(_SESSION_KEY, []):
            self.forget(fresh.entry_id)

    def notify(self) -> None:
        """Publish this process's newly committed entries (in a task: callers are sync)."""
        if not self._committed:
            return
        if self._flush_task is not None and not self._flush_task.done():
            return  # the running flush picks the new entries up before it ends
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the relay publishes them
        self._flush_task = loop.create_task(self._flush(), name="queue-publish")

    async def flush(self) -> None:
        """Wait until this process's committed entries are published (or deferred to the
        relay by an outage): tests, and shutdown before the connections close."""
        self.notify()
        if self._flush_task is not None and not self._flush_task.done():
            await asyncio.shield(self._flush_task)

    async def _flush(self) -> None:
        while self._committed:
            batch, self._committed = self._committed, []
            ids = {fresh.entry_id for fresh in batch}
            self._publishing |= ids
            try:
                await self._publish(batch)
            except (RedisError, SQLAlchemyError, OSError) as exc:
                # Committed rows stay unpublished: the relay retries them after the grace.
                log.warning("queue_publish_deferred", entries=len(batch), error=type(exc).__name__)
            finally:
                self._publishing -= ids

    async def _publish(self, entries: Sequence[_Fresh]) -> None:
        await self._ensure_groups()
        async with self._redis.pipeline(transaction=False) as pipe:
            for fresh in entries:
                pipe.xadd(
                    self.stream(fresh.priority),
                    _fields(fresh.entry_id, fresh.kind, fresh.order_id),
                )
            stream_ids = await pipe.execute()
        table = cast(Table, QueueEntryRow.__table__)
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.published_at.is_(None))
            .values(published_at=bindparam("b_at"), stream_id=bindparam("b_sid"))
        )
        now = _utcnow()
        async with self._db() as session, session.begin():
            await session.execute(
                statement,
                [
                    {"b_id": fresh.entry_id, "b_at": now, "b_sid": str(sid)}
                    for fresh, sid in zip(entries, stream_ids, strict=True)
                ],
            )

    async def relay_once(self, limit: int = 500) -> int:
        """Publish committed rows nobody published (older than the grace); returns how many.

        The rows are locked (skip locked) while published and marked, so two relays in two
        processes do not publish the same row."""
        cutoff = _utcnow() - timedelta(seconds=self.relay_grace)
        skip = self._publishing | {fresh.entry_id for fresh in self._committed}
        async with self._db() as session, session.begin():
            rows = [
                row
                for row in (
                    await session.scalars(
                        select(QueueEntryRow)
                        .where(
                            # "claimed": left by the embedded queue before a switch to Redis
                            QueueEntryRow.status.in_(("ready", "claimed")),
                            QueueEntryRow.published_at.is_(None),
                            QueueEntryRow.created_at <= cutoff,
                        )
                        .order_by(QueueEntryRow.id)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if row.id not in skip
            ]
            if not rows:
                return 0
            await self._ensure_groups()
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(
                        self.stream(Priority(row.priority)),
                        _fields(row.id, row.kind, row.order_id),
                    )
                stream_ids = await pipe.execute()
            now = _utcnow()
            for row, sid in zip(rows, stream_ids, strict=True):
                row.status = "ready"
                row.published_at = now
                row.stream_id = str(sid)
        log.info("queue_entries_relayed", count=len(rows))
        return len(rows)

    async def run_relay(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Background task (API and worker processes): keep publishing stragglers."""
        while not stop.is_set():
            try:
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage is retried, never fatal
                log.warning("queue_relay_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    # -- waiters ------------------------------------------------------------------------------
    def _expect(self, entry_id: int) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[entry_id].append(future)
        return future

    def forget(self, entry_id: int) -> None:
        for future in self._waiters.pop(entry_id, []):
            future.cancel()

    def _resolve(self, entry_id: int, outcome: Outcome) -> None:
        for future in self._waiters.pop(entry_id, []):
            if not future.done():
                future.set_result(outcome)

    async def _row_outcome(self, entry_id: int) -> Outcome | None:
        """The entry's fate from its row: gone = done, dead = failed, else None."""
        async with self._db() as session:
            row = await session.get(QueueEntryRow, entry_id)
            if row is None:
                return Outcome(True)
            if row.status == "dead":
                return Outcome(False, ErrorCode.MAX_RETRIES_EXHAUSTED.value, row.last_error)
            return None

    async def wait_processed(self, entry_id: int, timeout: float) -> Outcome | None:
        """Wait for the entry's outcome: from a local ack, the outcome channel, or (if a
        message was missed) its row. None when the time ran out."""
        if timeout <= 0:
            self.forget(entry_id)
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        registered = self._waiters.get(entry_id)
        future = registered[0] if registered else self._expect(entry_id)
        try:
            if not registered:  # enqueued elsewhere or earlier: it may be done already
                found = await self._row_outcome(entry_id)
                if found is not None:
                    return found
            # With the subscriber up the row is only a safety net; without it, the only way.
            delay, ceiling = (0.25, 1.0) if self.listening.is_set() else (0.01, 0.25)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(delay, remaining))
                except TimeoutError:
                    pass
                found = await self._row_outcome(entry_id)
                if found is not None:
                    return found
                delay = min(delay * 2, ceiling)
        finally:
            self.forget(entry_id)

    async def run_outcome_listener(self, stop: asyncio.Event) -> None:
        """Background task: one subscriber per process resolving the waiters of entries that
        workers in other processes finished."""
        delay = 0.5
        while not stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.outcomes_channel)
                self.listening.set()
                delay = 0.5
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_outcome(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect with back-off
                log.warning("queue_outcome_listener_failed", error=type(exc).__name__)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)

    def _on_outcome(self, data: Any) -> None:
        try:
            decoded = json.loads(data)
            entry_id = int(decoded["e"])
        except (TypeError, ValueError, KeyError):
            log.warning("queue_outcome_unreadable")
            return
        if entry_id in self._waiters:
            self._resolve(
                entry_id, Outcome(bool(decoded.get("ok")), decoded.get("c"), decoded.get("m"))
            )

    @staticmethod
    def _outcome_json(entry_id: int, outcome: Outcome) -> str:
        return json.dumps(
            {"e": entry_id, "ok": outcome.ok, "c": outcome.error_code, "m": outcome.message}
        )

    # -- claim --------------------------------------------------------------------------------
    async def claim(self, worker_id: str, limit: int) -> list[QueueMessage]:
        """Up to ``limit`` entries, HIGH before NORMAL before LOW (non-blocking); entries a
        dead worker left idle past ``claim_idle`` are taken over first, now and then."""
        limit = max(1, limit)
        self._consumer = worker_id
        await self._ensure_groups()
        pool = self._stash.pop(worker_id, [])
        if time.monotonic() - self._last_autoclaim >= self._autoclaim_every:
            self._last_autoclaim = time.monotonic()
            pool.extend(await self._autoclaim(worker_id, self.claim_idle, limit))
        taken: list[_Candidate] = []
        for priority in Priority:
            taken.extend(c for c in pool if c.priority is priority)
            room = limit - len(taken)
            if room > 0:
                taken.extend(await self._read_new(worker_id, {priority: room}, None))
        if len(taken) > limit:
            self._stash[worker_id] = taken[limit:]
            taken = taken[:limit]
        return list(await self._admit(taken))

    async def _read_new(
        self, consumer: str, counts: dict[Priority, int], block_ms: int | None
    ) -> list[_Candidate]:
        by_stream = {self.stream(p): p for p in counts}
        try:
            if block_ms is None:
                [(priority, count)] = counts.items()
                response = await self._redis.xreadgroup(
                    GROUP, consumer, {self.stream(priority): ">"}, count=count
                )
            else:
                response = await self._redis.xreadgroup(
                    GROUP,
                    consumer,
                    {stream: ">" for stream in by_stream},
                    count=1,
                    block=block_ms,
                )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: recreate, read next time
                self._groups_ready = False
                await self._ensure_groups()
                return []
            raise
        found = [
            _Candidate(by_stream[stream], str(message_id), _entry_id(fields), 1)
            for stream, entries in _stream_entries(response)
            for message_id, fields in entries
        ]
        found.sort(key=lambda c: c.priority)
        return found

    async def _autoclaim(self, consumer: str, min_idle: float, count: int) -> list[_Candidate]:
        """Take over entries idle longer than ``min_idle`` seconds in anyone's pending list,
        with how often each was delivered (for the dead-letter rule)."""
        found: list[_Candidate] = []
        for priority in Priority:
            stream = self.stream(priority)
            start = "0-0"
            while True:
                response = await self._redis.xautoclaim(
                    stream,
                    GROUP,
                    consumer,
                    min_idle_time=max(1, int(min_idle * 1000)),
                    start_id=start,
                    count=count,
                )
                start, claimed = str(response[0]), response[1]
                live = [(str(mid), fields) for mid, fields in claimed if fields is not None]
                if live:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for mid, _ in live:
                            pipe.xpending_range(stream, GROUP, min=mid, max=mid, count=1)
                        details = await pipe.execute()
                    for (mid, fields), detail in zip(live, details, strict=True):
                        deliveries = int(detail[0]["times_delivered"]) if detail else 1
                        found.append(_Candidate(priority, mid, _entry_id(fields), deliveries))
                if start in ("0-0", "0") or len(found) >= count:
                    break
            if len(found) >= count:
                break
        if found:
            log.warning("queue_entries_taken_over", count=len(found), consumer=consumer)
        return found

    async def _admit(self, candidates: list[_Candidate]) -> list[StreamMessage]:
        """Turn claimed stream messages into queue messages from their rows; drop stale
        duplicates (row gone or dead) and dead-letter entries that exhausted their tries."""
        if not candidates:
            return []
        ids = {c.entry_id for c in candidates if c.entry_id is not None}
        async with self._db() as session:
            rows = {
                row.id: row
                for row in (
                    await session.scalars(select(QueueEntryRow).where(QueueEntryRow.id.in_(ids)))
                ).all()
            }
        messages: list[StreamMessage] = []
        stale: list[_Candidate] = []
        seen: set[int] = set()
        now = _utcnow()
        for candidate in candidates:
            row = rows.get(candidate.entry_id) if candidate.entry_id is not None else None
            if row is None or row.status != "ready" or row.id in seen:
                stale.append(candidate)
                continue
            seen.add(row.id)
            message = StreamMessage(
                entry_id=row.id,
                kind=row.kind,
                order_id=row.order_id,
                priority=Priority(row.priority),
                payload=dict(row.payload or {}),
                attempts=row.attempts + candidate.deliveries,
                correlation_id=row.correlation_id,
                stream_id=candidate.stream_id,
            )
            observe_first_claim(message.attempts, row.created_at, now)
            if message.attempts - 1 >= self.max_attempts:
                # Delivered again and again to workers that died before finishing it.
                await self._dead_letter(
                    message,
                    row.last_error or f"delivered {candidate.deliveries} times without an outcome",
                )
                continue
            messages.append(message)
        if stale:
            DUPLICATES_SKIPPED.inc(len(stale))
            await self._drop(stale)
        return messages

    async def _drop(self, candidates: Iterable[_Candidate]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for candidate in candidates:
                stream = self.stream(candidate.priority)
                pipe.xack(stream, GROUP, candidate.stream_id)
                pipe.xdel(stream, candidate.stream_id)
            await pipe.execute()

    async def wait_for_work(self, timeout: float) -> None:
        """Block on all three streams until something arrives (or ``timeout``); what the
        read delivered is kept for the next ``claim`` of the same worker."""
        consumer = self._consumer
        if consumer is None or self._stash.get(consumer):
            return  # nobody claimed yet, or work is already waiting in the stash
        await self._ensure_groups()
        found = await self._read_new(
            consumer, dict.fromkeys(Priority, 1), max(1, int(timeout * 1000))
        )
        if found:
            self._stash[consumer].extend(found)

    # -- outcomes -----------------------------------------------------------------------------
    async def ack(self, message: QueueMessage, outcome: Outcome) -> None:
        """The outcome is committed: remove the row, wake waiters, then XACK and publish."""
        async with self._db() as session, session.begin():
            await session.execute(delete(QueueEntryRow).where(QueueEntryRow.id == message.entry_id))
        self._resolve(message.entry_id, outcome)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if isinstance(message, StreamMessage) and message.stream_id:
                    stream = self.stream(message.priority)
                    pipe.xack(stream, GROUP, message.stream_id)
                    pipe.xdel(stream, message.stream_id)
                pipe.publish(self.outcomes_channel, self._outcome_json(message.entry_id, outcome))
                await pipe.execute()
        except RedisError as exc:
            # The row is gone: a redelivery of this message is recognised and dropped.
            log.warning("queue_ack_deferred", entry_id=message.entry_id, error=type(exc).__name__)

    async def release(self, message: QueueMessage, error: str) -> None:
        """A failed attempt that left nothing half done: retry at once, dead after N."""
        if message.attempts >= self.max_attempts:
            await self._dead_letter(message, error)
            return
        async with self._db() as session, session.begin():
            await session.execute(
                update(QueueEntryRow)
                .where(QueueEntryRow.id == message.entry_id, QueueEntryRow.status == "ready")
                .values(attempts=message.attempts, last_error=error[:2000])
            )
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                stream = self.stream(message.priority)
                pipe.xadd(stream, _fields(message.entry_id, message.kind, message.order_id))
                if isinstance(message, StreamMessage) and message.stream_id:
                    pipe.xack(stream, GROUP, message.stream_id)
                    pipe.xdel(stream, message.stream_id)
                await pipe.execute()
        except RedisError as exc:
            # Still pending under this worker: taken over after claim_idle.
            log.warning(
                "queue_release_deferred", entry_id=message.entry_id, error=type(exc).__name__
            )

    async def _dead_letter(self, message: QueueMessage, error: str) -> None:
        """Row marked dead (durable) first, then the dead-letter stream, XACK, outcome."""
        async with self._db() as session, session.begin():
            await session.execute(
                update(QueueEntryRow)
                .where(QueueEntryRow.id == message.entry_id)
                .values(status="dead", attempts=message.attempts, last_error=error[:2000])
            )
        outcome = Outcome(False, ErrorCode.MAX_RETRIES_EXHAUSTED.value, error[:2000])
        DEAD_LETTERS.inc()
        log.error(
            "queue_entry_dead_lettered",
            entry_id=message.entry_id,
            order_id=message.order_id,
            kind=message.kind,
            attempts=message.attempts,
        )
        self._resolve(message.entry_id, outcome)
        stream = self.stream(message.priority)
        stream_id = message.stream_id if isinstance(message, StreamMessage) else ""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    self.dead_stream,
                    {
                        **_fields(message.entry_id, message.kind, message.order_id),
                        "priority": message.priority.name,
                        "attempts": str(message.attempts),
                        "error": error[:2000],
                        "stream": stream,
                        "stream_id": stream_id,
                        "dead_at": _utcnow().isoformat(),
                    },
                )
                if stream_id:
                    pipe.xack(stream, GROUP, stream_id)
                    pipe.xdel(stream, stream_id)
                pipe.publish(self.outcomes_channel, self._outcome_json(message.entry_id, outcome))
                await pipe.execute()
        except RedisError as exc:
            log.warning(
                "queue_dead_letter_deferred", entry_id=message.entry_id, error=type(exc).__name__
            )

    # -- operations ---------------------------------------------------------------------------
    async def recover(self, stale_after: timedelta | None = None) -> int:
        """Take over entries idle longer than ``stale_after`` (default ``claim_idle``) in any
        consumer's pending list (for ``consumer_name``'s next claim) and publish committed
        rows nobody published. Other workers may be alive: only stale entries move."""
        idle = stale_after.total_seconds() if stale_after is not None else self.claim_idle
        await self._ensure_groups()
        taken = await self._autoclaim(self.consumer_name, idle, 1000)
        if taken:
            self._stash[self.consumer_name].extend(taken)
        relayed = await self.relay_once()
        return len(taken) + relayed

    async def requeue_dead(self, entry_id: int) -> None:
        """Publish a dead entry again (its row was already set back to ready) and remove it
        from the dead-letter stream."""
        async with self._db() as session:
            row = await session.get(QueueEntryRow, entry_id)
            if row is None:
                return
            fresh = _Fresh(row.id, row.kind, row.order_id, Priority(row.priority))
        await self._publish([fresh])
        stale: list[str] = []
        cursor = "-"
        while True:
            batch = await self._redis.xrange(self.dead_stream, min=cursor, count=500)
            if not batch:
                break
            stale.extend(str(mid) for mid, fields in batch if _entry_id(fields) == entry_id)
            if len(batch) < 500:
                break
            cursor = "(" + str(batch[-1][0])
        if stale:
            await self._redis.xdel(self.dead_stream, *stale)

    async def depth(self) -> dict[str, int]:
        """Per priority: messages waiting and delivered-but-unacknowledged; dead letters;
        committed rows not yet published."""
        await self._ensure_groups()
        async with self._redis.pipeline(transaction=False) as pipe:
            for priority in Priority:
                pipe.xlen(self.stream(priority))
                pipe.xpending(self.stream(priority), GROUP)
            pipe.xlen(self.dead_stream)
            answers = await pipe.execute()
        result: dict[str, int] = {"ready": 0, "claimed": 0}
        for index, priority in enumerate(Priority):
            length, pending = int(answers[2 * index]), int(answers[2 * index + 1]["pending"])
            name = priority.name.lower()
            result[f"{name}_ready"] = max(0, length - pending)
            result[f"{name}_pending"] = pending
            result["ready"] += max(0, length - pending)
            result["claimed"] += pending
            QUEUE_DEPTH.labels(name, "ready").set(max(0, length - pending))
            QUEUE_DEPTH.labels(name, "pending").set(pending)
        result["dead"] = int(answers[-1])
        QUEUE_DEPTH.labels("dead", "dead").set(result["dead"])
        async with self._db() as session:
            result["unpublished"] = int(
                await session.scalar(
                    select(func.count())
                    .select_from(QueueEntryRow)
                    .where(QueueEntryRow.status == "ready", QueueEntryRow.published_at.is_(None))
                )
                or 0
            )
        return result

    async def close(self) -> None:
        """Finish publishing, hand entries read but never claimed back to the streams, and
        close the connections."""
        if self._flush_task is not None and not self._flush_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flush_task), 5.0)
        stashed = [c for candidates in self._stash.values() for c in candidates]
        self._stash.clear()
        if stashed:
            with contextlib.suppress(RedisError, OSError):
                async with self._redis.pipeline(transaction=True) as pipe:
                    for candidate in stashed:
                        stream = self.stream(candidate.priority)
                        if candidate.entry_id is not None:
                            pipe.xadd(stream, {"entry_id": str(candidate.entry_id)})
                        pipe.xack(stream, GROUP, candidate.stream_id)
                        pipe.xdel(stream, candidate.stream_id)
                    await pipe.execute()
        with contextlib.suppress(Exception):
            await self._redis.aclose()


# -- construction and administration ----------------------------------------------------------
def build_queue(
    settings: Settings, db: async_sessionmaker[AsyncSession]
) -> EmbeddedQueue | RedisStreamsQueue:
    """The queue QUEUE_BACKEND asks for (``auto``: Redis Streams exactly when REDIS_URL is
    set, so a setup without Redis keeps the embedded queue and behaves as before)."""
    if settings.effective_queue_backend == "redis":
        if not settings.redis_url:
            raise ConfigurationError("QUEUE_BACKEND=redis needs REDIS_URL")
        return RedisStreamsQueue(
            db,
            settings.redis_url,
            prefix=settings.queue_prefix,
            claim_idle=settings.queue_claim_idle_seconds,
            max_attempts=settings.queue_max_attempts,
            relay_grace=settings.queue_relay_grace_seconds,
        )
    return EmbeddedQueue(db, max_attempts=settings.queue_max_attempts)


@dataclass(slots=True)
class DeadLetter:
    """A dead-lettered entry as operators see it (from its row: the durable record, the
    same for both queue backends)."""

    entry_id: int
    kind: str
    order_id: str
    priority: str
    attempts: int
    error: str | None
    created_at: datetime
    order_status: str | None  # None: the order no longer exists
    user_id: str | None
    retryable: bool


def _retry_refusal(kind: str, order_status: str | None) -> str | None:
    """Why an entry may not be requeued, or None. A placement is retried only while its
    order is still PENDING (it never reached the broker); a cancel or modify only while the
    order is still working."""
    if order_status is None:
        return "its order no longer exists"
    status = OrderStatus(order_status)
    if kind == "place" and status is not OrderStatus.PENDING:
        return f"its order is {status.value}, not PENDING: it may have reached the broker"
    if kind != "place" and status.is_final:
        return f"its order is already {status.value}"
    return None


async def list_dead_letters(
    db: async_sessionmaker[AsyncSession], limit: int = 100
) -> list[DeadLetter]:
    """Dead entries, newest first, with their order's current status."""
    async with db() as session:
        found = await session.execute(
            select(QueueEntryRow, OrderRow.status, OrderRow.user_id)
            .outerjoin(OrderRow, OrderRow.id == QueueEntryRow.order_id)
            .where(QueueEntryRow.status == "dead")
            .order_by(QueueEntryRow.id.desc())
            .limit(limit)
        )
        return [
            DeadLetter(
                entry_id=row.id,
                kind=row.kind,
                order_id=row.order_id,
                priority=Priority(row.priority).name,
                attempts=row.attempts,
                error=row.last_error,
                created_at=row.created_at,
                order_status=status,
                user_id=user_id,
                retryable=_retry_refusal(row.kind, status) is None,
            )
            for row, status, user_id in found.all()
        ]


async def retry_dead_letter(
    db: async_sessionmaker[AsyncSession],
    queue: EmbeddedQueue | RedisStreamsQueue,
    entry_id: int,
    *,
    actor: str | None = None,
    ip: str | None = None,
) -> None:
    """Put a dead entry back on its queue with fresh attempts (audited). Refused with
    NOT_FOUND when there is no such dead entry and CONFLICT when its order moved on."""
    async with db() as session, session.begin():
        row = await session.scalar(
            select(QueueEntryRow).where(QueueEntryRow.id == entry_id).with_for_update()
        )
        if row is None or row.status != "dead":
            raise DomainError(f"no dead-lettered queue entry {entry_id}", ErrorCode.NOT_FOUND)
        order = await session.get(OrderRow, row.order_id)
        refusal = _retry_refusal(row.kind, order.status if order is not None else None)
        if refusal is not None:
            raise DomainError(
                f"queue entry {entry_id} cannot be retried: {refusal}", ErrorCode.CONFLICT
            )
        row.status = "ready"
        row.attempts = 0
        row.claimed_by = None
        row.published_at = None
        row.stream_id = None
        await add_audit(
            session,
            "queue.retried",
            user_id=actor,
            target=str(entry_id),
            data={"order_id": row.order_id, "kind": row.kind, "error": row.last_error},
            ip=ip,
        )
    if isinstance(queue, RedisStreamsQueue):
        try:
            await queue.requeue_dead(entry_id)
        except RedisError as exc:  # committed as ready: the relay publishes it later
            log.warning("queue_retry_publish_deferred", entry_id=entry_id, error=type(exc).__name__)
    else:
        queue.notify()
    log.info("queue_entry_retried", entry_id=entry_id, actor=actor)
