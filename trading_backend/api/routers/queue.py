"""The order queue for administrators: depth, dead letters, and requeueing one.

Dead letters are read from their rows (the durable record, the same for the embedded and
the Redis Streams queue). A dead placement is requeued only while its order is still
PENDING: one that moved on may have reached the broker, and sending it again could place
it twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from trading_backend.api.deps import AdminDep, RuntimeDep, client_ip
from trading_backend.execution.redis_queue import list_dead_letters, retry_dead_letter

router = APIRouter(prefix="/api/v1/admin/queue", tags=["admin"])

EntryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="queue entry id")]


class DeadLetterOut(BaseModel):
    entry_id: int
    kind: str
    order_id: str
    priority: str
    attempts: int
    error: str | None
    created_at: datetime
    order_status: str | None  # null: the order no longer exists
    user_id: str | None
    retryable: bool


class RetryOut(BaseModel):
    entry_id: int
    status: Literal["requeued"]


class QueueDepthOut(BaseModel):
    backend: str
    depth: dict[str, int]


@router.get("/depth", response_model=QueueDepthOut)
async def queue_depth(_: AdminDep, runtime: RuntimeDep) -> QueueDepthOut:
    """Entries waiting, being worked on, dead (and per priority on Redis Streams)."""
    return QueueDepthOut(
        backend=getattr(runtime.queue, "backend", "embedded"), depth=await runtime.queue.depth()
    )


@router.get("/dead-letters", response_model=list[DeadLetterOut])
async def dead_letters(
    _: AdminDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterOut]:
    """Entries that failed too often, newest first, with their order's current status."""
    found = await list_dead_letters(runtime.db, limit)
    return [
        DeadLetterOut(
            entry_id=d.entry_id,
            kind=d.kind,
            order_id=d.order_id,
            priority=d.priority,
            attempts=d.attempts,
            error=d.error,
            created_at=d.created_at,
            order_status=d.order_status,
            user_id=d.user_id,
            retryable=d.retryable,
        )
        for d in found
    ]


@router.post("/dead-letters/{entry_id}/retry", response_model=RetryOut)
async def retry(
    entry_id: EntryId, admin: AdminDep, runtime: RuntimeDep, request: Request
) -> RetryOut:
    """Requeue a dead entry with fresh attempts. 404 NOT_FOUND: no such dead entry;
    409 CONFLICT: its order is no longer PENDING (or, for a cancel or modify, is final)."""
    await retry_dead_letter(
        runtime.db, runtime.queue, entry_id, actor=admin.id, ip=client_ip(request)
    )
    return RetryOut(entry_id=entry_id, status="requeued")
