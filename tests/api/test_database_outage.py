"""The API while PostgreSQL is away (issue #7).

The app talks to PostgreSQL through a TCP proxy the test controls: cutting it drops every
connection and refuses new ones, as a restarted or unreachable server does, without touching
the PostgreSQL server the other tests share. While it is cut, every request answers 503
DATABASE_UNAVAILABLE (never a 500); once it is restored the same requests succeed with nothing
restarted; every order that got a 2xx is stored exactly once and none that got a 503 exists.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncpg import exceptions as asyncpg_exc  # type: ignore[import-untyped]
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.api.conftest import Account, register
from tests.conftest import _truncate_postgres, make_settings
from trading_backend.api.app import create_app
from trading_backend.domain import Order, OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.storage.database import create_engine, is_database_unavailable
from trading_backend.storage.models import OrderRow

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
UNAVAILABLE = "DATABASE_UNAVAILABLE"
PLACE = "/api/v1/brokers/orders/place"


class PgProxy:
    """A TCP proxy from a local port to PostgreSQL that the test can cut and restore.

    ``cut()`` aborts every proxied connection (the app's pooled connections break, as in a
    server restart) and stops listening, so new connections are refused; ``restore()``
    listens on the same port again."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()

    def cut_now(self) -> None:
        """Refuse new connections and break every open one (callable from sync code)."""
        assert self._server is not None
        self._server.close()  # stops listening at once: new connections are refused
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def cut(self) -> None:
        server = self._server
        self.cut_now()
        assert server is not None
        await server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        self._server = None
        await self.start()

    async def close(self) -> None:
        if self._server is not None and self._server.is_serving():
            await self.cut()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.fixture
async def pg_url(postgres_url: str | None) -> str:
    """The run's throwaway PostgreSQL database, emptied (this module is PostgreSQL only)."""
    if postgres_url is None:
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL required (REQUIRE_SERVICES=1) but unavailable")
        pytest.skip("database outage tests need TEST_DATABASE_URL")
    await _truncate_postgres(postgres_url)
    return postgres_url


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[PgProxy]:
    url = make_url(pg_url)
    running = PgProxy(url.host or "127.0.0.1", url.port or 5432)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def runtime(tmp_path: Path, pg_url: str, proxy: PgProxy) -> AsyncIterator[Runtime]:
    """A runtime (order worker included) whose every database connection goes through
    the proxy."""
    through_proxy = (
        make_url(pg_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    rt = Runtime(make_settings(tmp_path, through_proxy))
    await rt.start(worker=True, market=False, health_monitor=False)
    try:
        yield rt
    finally:
        await rt.stop()
        await rt.engine.dispose()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def order_body(account: Account, client_order_id: str) -> dict[str, Any]:
    return {
        "config_id": account.config_id,
        "intentional": True,  # identical orders on purpose: no duplicate-order refusal
        "order": {
            "symbol": "TCS",
            "exchange": "NSE",
            "side": "BUY",
            "order_type": "MARKET",
            "product_type": "DELIVERY",
            "quantity": 1,
            "client_order_id": client_order_id,
        },
    }


async def stored_client_order_ids(pg_url: str, user_id: str) -> list[str]:
    """Straight from PostgreSQL, not through the proxy or the app."""
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(OrderRow.client_order_id).where(OrderRow.user_id == user_id)
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error_code"] == UNAVAILABLE
    assert "database" in body["message"] and "Traceback" not in response.text
    # Nothing about where the database is or how it failed leaks to the client.
    assert "127.0.0.1" not in response.text and "asyncpg" not in response.text
    assert int(response.headers["Retry-After"]) > 0


async def test_api_answers_503_while_postgres_is_away_and_recovers_by_itself(
    client: httpx.AsyncClient, runtime: Runtime, proxy: PgProxy, pg_url: str
) -> None:
    alice = await register(client, "alice")
    login = {"username": "alice", "password": "s3cret-pass"}
    placed_ok: list[str] = []
    refused: list[str] = []

    async def place(client_order_id: str) -> httpx.Response:
        response = await client.post(
            PLACE, json=order_body(alice, client_order_id), headers=alice.headers
        )
        if response.is_success:
            placed_ok.append(client_order_id)
        else:
            refused.append(client_order_id)
        return response

    # Before: orders go through and are carried out by the worker.
    for n in range(3):
        response = await place(f"before-{n}")
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "FILLED"

    runtime.worker_failed.clear()
    await proxy.cut()
    # The order worker meets the outage too (woken, it tries to claim work and fails).
    runtime.queue.notify()
    await asyncio.wait_for(runtime.worker_failed.wait(), timeout=10)

    # While PostgreSQL is away: a clear 503 for everything that needs it, never a 500.
    assert_unavailable(await client.post("/api/v1/auth/login", json=login))
    assert_unavailable(await client.get("/api/v1/brokers/orders", headers=alice.headers))
    for n in range(3):
        assert_unavailable(await place(f"during-{n}"))
    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["database"]["ok"] is False

    await proxy.restore()

    # Back: the same requests succeed, nothing restarted. A refused order placed again with
    # its client_order_id is created now (it did not exist).
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/api/v1/auth/login", json=login)).status_code == 200
    retried = await place("during-0")
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "FILLED"  # the worker came back by itself too
    workers = [t for t in runtime._tasks if t.get_name() == "order-worker"]
    assert workers and not workers[0].done()
    for n in range(2):
        response = await place(f"after-{n}")
        assert response.status_code == 201, response.text
    again = await place("before-0")  # an accepted order placed again: the same order
    assert again.status_code == 200 and again.json()["client_order_id"] == "before-0"
    book = await client.get("/api/v1/brokers/orders", headers=alice.headers)
    assert book.status_code == 200

    # Nothing accepted is lost, nothing refused was kept, nothing is doubled.
    stored = await stored_client_order_ids(pg_url, alice.user_id)
    expected = {"before-0", "before-1", "before-2", "during-0", "after-0", "after-1"}
    assert sorted(stored) == sorted(expected)
    assert set(placed_ok) == expected
    assert {"during-1", "during-2"} & set(stored) == set()
    assert sorted(o["client_order_id"] for o in book.json()) == sorted(expected)


async def test_terminated_backend_connections_are_replaced_by_pre_ping(
    client: httpx.AsyncClient, runtime: Runtime, pg_url: str
) -> None:
    alice = await register(client, "alice")
    first = await client.get("/api/v1/brokers/orders", headers=alice.headers)
    assert first.status_code == 200
    # Name the app's connections so that only they are terminated (the server is shared).
    async with runtime.engine.connect() as connection:
        database = await connection.scalar(text("SELECT current_database()"))
    admin = create_engine(pg_url)
    try:
        async with admin.connect() as connection:
            mine = await connection.scalar(text("SELECT pg_backend_pid()"))
            killed = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :database AND pid <> :mine"
                ),
                {"database": database, "mine": mine},
            )
    finally:
        await admin.dispose()
    assert killed >= 1  # the pooled connection the app used is gone

    # The pool pings each connection before use and replaces the dead ones: no error at all.
    book = await client.get("/api/v1/brokers/orders", headers=alice.headers)
    assert book.status_code == 200, book.text
    placed = await client.post(
        PLACE, json=order_body(alice, f"after-kill-{uuid.uuid4().hex[:8]}"), headers=alice.headers
    )
    assert placed.status_code == 201, placed.text
    assert len(await stored_client_order_ids(pg_url, alice.user_id)) == 1


async def test_an_order_committed_just_before_the_outage_is_kept_and_never_doubled(
    client: httpx.AsyncClient, runtime: Runtime, proxy: PgProxy, pg_url: str
) -> None:
    """The one case where a 503 hides an accepted order: PostgreSQL goes away right after
    the order's transaction committed, before the API read it back. The order is kept (and
    carried out); placing it again with its client_order_id returns it instead of placing
    a second one."""
    alice = await register(client, "alice")
    cid = "committed-then-cut"

    def cut_after_the_order_commits(session: Session) -> None:
        if session.info.pop("dbdown_order", None) == cid:
            proxy.cut_now()

    def note_the_order(session: Session, _context: object) -> None:
        for row in session.new:
            if isinstance(row, OrderRow) and row.client_order_id == cid:
                session.info["dbdown_order"] = cid

    event.listen(Session, "after_flush", note_the_order)
    event.listen(Session, "after_commit", cut_after_the_order_commits)
    try:
        response = await client.post(
            PLACE, params={"wait": 0}, json=order_body(alice, cid), headers=alice.headers
        )
    finally:
        event.remove(Session, "after_flush", note_the_order)
        event.remove(Session, "after_commit", cut_after_the_order_commits)
    assert_unavailable(response)
    assert await stored_client_order_ids(pg_url, alice.user_id) == [cid]  # accepted anyway

    filled = asyncio.Event()

    def watch(order: Order) -> None:
        if order.client_order_id == cid and order.status is OrderStatus.FILLED:
            filled.set()

    runtime.recorder.add_listener(watch)
    try:
        await proxy.restore()
        again = await client.post(PLACE, json=order_body(alice, cid), headers=alice.headers)
        assert again.status_code == 200, again.text  # seen before: the first order, not new
        assert again.json()["client_order_id"] == cid
        # The accepted order is carried out once the worker reaches the database again.
        await asyncio.wait_for(filled.wait(), timeout=15)
    finally:
        runtime.recorder.remove_listener(watch)
    assert await stored_client_order_ids(pg_url, alice.user_id) == [cid]


async def test_only_connection_failures_count_as_the_database_being_away(pg_url: str) -> None:
    """A 503 tells the client to retry, so it is kept for failures to reach the database; a
    bad statement stays a 500 (retrying would not help)."""
    # A pool with no free connection within pool_timeout.
    engine = create_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(sa_exc.TimeoutError) as exhausted:
                async with engine.connect():
                    pass
        assert is_database_unavailable(exhausted.value)
        # A statement error from a live server is not an outage.
        async with engine.connect() as connection:
            with pytest.raises(sa_exc.ProgrammingError) as bad:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not is_database_unavailable(bad.value)
        # What a restarting server answers, through SQLAlchemy's asyncpg adapter.
        dbapi = engine.dialect.loaded_dbapi
        for error in (
            asyncpg_exc.CannotConnectNowError("the database system is starting up"),
            asyncpg_exc.AdminShutdownError("terminating connection due to administrator"),
            asyncpg_exc.TooManyConnectionsError("sorry, too many clients already"),
            asyncpg_exc.ConnectionDoesNotExistError("connection was closed"),
        ):
            wrapped = sa_exc.OperationalError("SELECT 1", None, dbapi.OperationalError("x", error))
            wrapped.orig.__cause__ = error  # type: ignore[union-attr]
            assert is_database_unavailable(wrapped), type(error).__name__
        unique = asyncpg_exc.UniqueViolationError("duplicate key")
        assert not is_database_unavailable(
            sa_exc.IntegrityError("INSERT", None, dbapi.IntegrityError("x", unique))
        )
    finally:
        await engine.dispose()
    # Refused at connect: asyncpg's bare OSError arrives as an OperationalError.
    closed = create_engine(make_url(pg_url).set(port=1).render_as_string(hide_password=False))
    try:
        with pytest.raises(sa_exc.OperationalError) as refused:
            async with closed.connect():
                pass
        assert is_database_unavailable(refused.value)
    finally:
        await closed.dispose()
