"""Dead letters of the Redis Streams queue, visible and retryable by administrators through
the API and the CLI; requeueing is refused once the order moved on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from tests.api.conftest import Account
from tests.conftest import make_settings
from tests.execution.test_redis_queue import prefix, redis_queue  # noqa: F401 - fixture
from tests.helpers import order
from trading_backend.domain import OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.storage.models import AuditLogRow, QueueEntryRow

ROOT = Path(__file__).resolve().parents[2]
DEAD_LETTERS = "/api/v1/admin/queue/dead-letters"


@pytest.fixture
async def runtime(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    prefix: str,  # noqa: F811 - the imported fixture
) -> AsyncIterator[Runtime]:
    """The API's runtime on the Redis Streams queue, without a worker (the test is one)."""
    settings = make_settings(
        tmp_path,
        database_url,
        redis_url=redis_url,
        queue_backend="redis",
        queue_prefix=prefix,
        queue_max_attempts=1,
        queue_relay_grace_seconds=60.0,
        rate_limit_enabled=False,
    )
    rt = Runtime(settings)
    await rt.start(worker=False, market=False, health_monitor=False)
    try:
        yield rt
    finally:
        await rt.stop()


def dead_letter_count() -> float:
    return REGISTRY.get_sample_value("trading_backend_queue_dead_letters_total") or 0.0


async def kill_entry(runtime: Runtime, error: str) -> int:
    """Let the (only) delivery of the next entry fail: with one attempt allowed, it dies."""
    queue = redis_queue(runtime)
    await queue.flush()
    [message] = await queue.claim("test-worker", 1)
    await queue.release(message, error)
    return message.entry_id


async def cli(runtime: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    """``trading-backend queue ...`` in its own process, on this test's database and Redis."""
    settings = runtime.settings
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DATABASE_URL=settings.effective_database_url,
        REDIS_URL=settings.redis_url or "",
        QUEUE_BACKEND="redis",
        QUEUE_PREFIX=settings.queue_prefix,
        TRADING_BACKEND_DATA_DIR=str(settings.data_dir),
        MASTER_ENCRYPTION_KEY=settings.master_encryption_key or "",
        JWT_SECRET_KEY=settings.jwt_secret_key or "",
        ENVIRONMENT="test",
        PYTHONPATH=str(ROOT),
        COLUMNS="200",
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "trading_backend.cli", "queue", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_dead_letters_are_listed_retried_and_refused_once_the_order_moved_on(
    client: httpx.AsyncClient, alice: Account, bob: Account, runtime: Runtime
) -> None:
    admin, user = alice, bob  # the first account registered is the administrator
    queue = redis_queue(runtime)
    before = dead_letter_count()
    placed = await runtime.orders.place(admin.user_id, admin.config_id, order(), wait=0)
    order_id = placed.order.order_id
    entry_id = await kill_entry(runtime, "RuntimeError: the broker adapter crashed")
    assert dead_letter_count() == before + 1

    refused = await client.get(DEAD_LETTERS, headers=user.headers)
    assert (refused.status_code, refused.json()["error_code"]) == (403, "FORBIDDEN")
    listed = await client.get(DEAD_LETTERS, headers=admin.headers)
    assert listed.status_code == 200, listed.text
    [dead] = listed.json()
    assert {k: dead[k] for k in ("entry_id", "kind", "order_id", "priority", "attempts")} == {
        "entry_id": entry_id,
        "kind": "place",
        "order_id": order_id,
        "priority": "NORMAL",
        "attempts": 1,
    }
    assert dead["error"] == "RuntimeError: the broker adapter crashed"
    assert (dead["order_status"], dead["retryable"]) == ("PENDING", True)
    depth = await client.get("/api/v1/admin/queue/depth", headers=admin.headers)
    assert depth.json()["backend"] == "redis" and depth.json()["depth"]["dead"] == 1

    missing = await client.post(f"{DEAD_LETTERS}/999999/retry", headers=admin.headers)
    assert (missing.status_code, missing.json()["error_code"]) == (404, "NOT_FOUND")
    forbidden = await client.post(f"{DEAD_LETTERS}/{entry_id}/retry", headers=user.headers)
    assert forbidden.status_code == 403

    # The order is still PENDING: requeued with fresh attempts, off the dead-letter stream.
    retried = await client.post(f"{DEAD_LETTERS}/{entry_id}/retry", headers=admin.headers)
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"entry_id": entry_id, "status": "requeued"}
    assert (await client.get(DEAD_LETTERS, headers=admin.headers)).json() == []
    assert await queue.redis.xlen(queue.dead_stream) == 0
    [again] = await queue.claim("test-worker", 1)
    assert (again.entry_id, again.attempts) == (entry_id, 1)
    async with runtime.db() as session:
        audit = await session.scalar(
            select(AuditLogRow).where(AuditLogRow.action == "queue.retried")
        )
        assert audit is not None and (audit.user_id, audit.target) == (admin.user_id, str(entry_id))

    # Dead again, and the order cancelled meanwhile: requeueing it is refused.
    await queue.release(again, "RuntimeError: crashed again")
    await runtime.orders.cancel(admin.user_id, order_id)
    conflict = await client.post(f"{DEAD_LETTERS}/{entry_id}/retry", headers=admin.headers)
    assert (conflict.status_code, conflict.json()["error_code"]) == (409, "CONFLICT")
    assert "CANCELLED" in conflict.json()["message"]
    [dead] = (await client.get(DEAD_LETTERS, headers=admin.headers)).json()
    assert (dead["order_status"], dead["retryable"]) == (OrderStatus.CANCELLED.value, False)

    # The same through the CLI.
    listed_cli = await cli(runtime, "dead-letters", "--json")
    assert listed_cli.returncode == 0, listed_cli.stderr
    assert [(d["entry_id"], d["order_status"]) for d in json.loads(listed_cli.stdout)] == [
        (entry_id, "CANCELLED")
    ]
    refused_cli = await cli(runtime, "retry", str(entry_id))
    assert refused_cli.returncode == 1
    assert "CONFLICT" in refused_cli.stderr
    depth_cli = await cli(runtime, "depth", "--json")
    assert depth_cli.returncode == 0, depth_cli.stderr
    assert json.loads(depth_cli.stdout)["depth"]["dead"] == 1
    async with runtime.db() as session:
        row = await session.get(QueueEntryRow, entry_id)
        assert row is not None and row.status == "dead"


async def test_cli_retry_requeues_a_pending_orders_entry(alice: Account, runtime: Runtime) -> None:
    queue = redis_queue(runtime)
    await runtime.orders.place(alice.user_id, alice.config_id, order(), wait=0)
    entry_id = await kill_entry(runtime, "boom")
    retried = await cli(runtime, "retry", str(entry_id))
    assert retried.returncode == 0, retried.stderr
    assert f"queue entry {entry_id} requeued" in retried.stdout
    [message] = await queue.claim("test-worker", 1)
    assert message.entry_id == entry_id
