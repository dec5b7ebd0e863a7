"""The tamper-evident audit log: what gets recorded, the hash chain and its verification,
the read API (own rows vs everybody's), the ``audit`` CLI and concurrent appends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from tests.api.conftest import Account, register
from tests.security.support import PASSWORD
from trading_backend.accounts import audit_cli
from trading_backend.accounts.audit import GENESIS_HASH, row_hash, scrub, verify_chain
from trading_backend.api.app import create_app
from trading_backend.api.routers import audit as audit_router
from trading_backend.runtime import Runtime
from trading_backend.settings import get_settings
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.models import AuditChainHeadRow, AuditLogRow, utcnow
from trading_backend.storage.repositories import add_audit

AUDIT = AuditLogRow.__table__


def with_audit_router(app: FastAPI) -> FastAPI:
    if not any(getattr(r, "path", "").startswith("/api/v1/audit") for r in app.routes):
        app.include_router(audit_router.router)
    return app


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The API client of tests/api/conftest.py, with the audit router mounted."""
    app = with_audit_router(create_app(runtime=runtime))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def all_rows(runtime: Runtime) -> list[dict[str, Any]]:
    async with runtime.engine.connect() as conn:
        result = await conn.execute(select(AUDIT).order_by(AUDIT.c.id))
        return [dict(r._mapping) for r in result]


async def tamper(runtime: Runtime, statement: Any) -> None:
    """Change the table behind the application's back (no ORM, no session events)."""
    async with runtime.engine.begin() as conn:
        await conn.execute(statement)


async def setup_accounts(client: httpx.AsyncClient) -> tuple[Account, Account, Account]:
    root = await register(client, "root")  # the first user of a deployment is an ADMIN
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    return root, alice, bob


def order_body(config_id: str) -> dict[str, Any]:
    return {
        "config_id": config_id,
        "order": {
            "symbol": "TCS",
            "exchange": "NSE",
            "side": "BUY",
            "order_type": "MARKET",
            "product_type": "DELIVERY",
            "quantity": 1,
        },
    }


async def test_actions_are_recorded_with_ip_and_correlation_id(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    _, alice, _ = await setup_accounts(client)
    login = await client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": PASSWORD},
        headers={"X-Correlation-ID": "cid-login-ok"},
    )
    assert login.status_code == 200, login.text
    failed = await client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": "not-her-password"},
        headers={"X-Correlation-ID": "cid-login-bad"},
    )
    assert failed.status_code == 401
    placed = await client.post(
        "/api/v1/brokers/orders/place",
        json=order_body(alice.config_id),
        headers={**alice.headers, "X-Correlation-ID": "cid-order"},
    )
    assert placed.status_code == 201, placed.text

    rows = await all_rows(runtime)
    by_cid = {r["correlation_id"]: r for r in rows}
    ok = by_cid["cid-login-ok"]
    assert (ok["action"], ok["user_id"], ok["ip"]) == ("auth.login", alice.user_id, "127.0.0.1")
    bad = by_cid["cid-login-bad"]
    assert (bad["action"], bad["user_id"], bad["ip"]) == (
        "auth.login_failed",
        alice.user_id,
        "127.0.0.1",
    )
    assert "not-her-password" not in str(rows)
    order = by_cid["cid-order"]
    assert order["action"] == "order.placed" and order["target"] == placed.json()["order_id"]
    assert order["user_id"] == alice.user_id and order["ip"] == "127.0.0.1"
    assert order["data"]["symbol"] == "TCS"
    actions = {(r["action"], r["user_id"]) for r in rows}
    assert ("user.created", alice.user_id) in actions
    assert ("broker_config.added", alice.user_id) in actions
    # Every action ran without an explicit correlation id argument somewhere: the request's
    # id was picked up from the context, so no row is left without one.
    assert all(r["correlation_id"] for r in rows)

    # The chain: ids in order, each row linked to the one before, the head on the last.
    prev = GENESIS_HASH
    for r in rows:
        assert r["prev_hash"] == prev and r["hash"] and len(r["hash"]) == 64
        prev = r["hash"]
    async with runtime.db() as session:
        head = await session.get(AuditChainHeadRow, 1)
    assert head is not None and (head.last_id, head.last_hash) == (rows[-1]["id"], prev)
    result = await verify_chain(runtime.db)
    assert result.ok and result.rows_checked == len(rows), result


async def test_tampering_is_detected(runtime: Runtime, client: httpx.AsyncClient) -> None:
    await setup_accounts(client)
    for n in range(3):
        await client.post(
            "/api/v1/auth/login", json={"username": "bob", "password": PASSWORD + str(n)}
        )
    rows = await all_rows(runtime)
    assert len(rows) >= 8
    seen: list[tuple[int, int]] = []
    result = await verify_chain(runtime.db, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert result.ok and result.rows_checked == len(rows)
    assert seen and seen[-1] == (len(rows), len(rows))

    # 1. An edited row is caught at that row; putting it back restores the chain.
    victim = rows[3]
    await tamper(
        runtime, update(AUDIT).where(AUDIT.c.id == victim["id"]).values(data={"forged": True})
    )
    result = await verify_chain(runtime.db, batch_size=3)
    assert not result.ok and result.first_bad_id == victim["id"], result
    assert "modified" in (result.reason or "")
    assert result.rows_checked == 3
    await tamper(
        runtime, update(AUDIT).where(AUDIT.c.id == victim["id"]).values(data=victim["data"])
    )
    assert (await verify_chain(runtime.db)).ok

    # An edit that also recomputes the row's own hash breaks the link to the next row.
    forged = {**victim, "action": "auth.logout"}
    forged_row = AuditLogRow(**{k: v for k, v in forged.items() if k not in ("hash",)})
    await tamper(
        runtime,
        update(AUDIT)
        .where(AUDIT.c.id == victim["id"])
        .values(action="auth.logout", hash=row_hash(victim["prev_hash"], forged_row)),
    )
    result = await verify_chain(runtime.db)
    assert not result.ok and result.first_bad_id == rows[4]["id"], result
    await tamper(runtime, update(AUDIT).where(AUDIT.c.id == victim["id"]).values(**victim))
    assert (await verify_chain(runtime.db)).ok

    # 2. A row deleted in the middle is caught at the row after the gap.
    middle = rows[len(rows) // 2]
    await tamper(runtime, delete(AUDIT).where(AUDIT.c.id == middle["id"]))
    result = await verify_chain(runtime.db)
    following = rows[len(rows) // 2 + 1]
    assert not result.ok and result.first_bad_id == following["id"], result
    assert "deleted" in (result.reason or "")
    await tamper(runtime, insert(AUDIT).values(**middle))
    assert (await verify_chain(runtime.db)).ok

    # 3. Deleting the newest row leaves a consistent-looking chain: the head catches it.
    last = rows[-1]
    await tamper(runtime, delete(AUDIT).where(AUDIT.c.id == last["id"]))
    result = await verify_chain(runtime.db)
    assert not result.ok and result.first_bad_id == last["id"], result
    assert "end of the log" in (result.reason or "")
    await tamper(runtime, insert(AUDIT).values(**last))
    assert (await verify_chain(runtime.db)).ok

    # 4. A forged row appended with a correct hash, but without the head: caught.
    fake = AuditLogRow(
        id=last["id"] + 1000,
        user_id=None,
        action="admin.user_changed",
        target="usr_x",
        data={},
        ip=None,
        correlation_id=None,
        created_at=last["created_at"],
        prev_hash=last["hash"],
    )
    fake.hash = row_hash(last["hash"], fake)
    values = {c.name: getattr(fake, c.key) for c in AuditLogRow.__mapper__.columns}
    await tamper(runtime, insert(AUDIT).values(**values))
    result = await verify_chain(runtime.db)
    assert not result.ok and result.first_bad_id == fake.id, result
    await tamper(runtime, delete(AUDIT).where(AUDIT.c.id == fake.id))

    # 5. A changed head is caught too.
    await tamper(runtime, update(AuditChainHeadRow).values(last_hash="f" * 64))
    result = await verify_chain(runtime.db)
    assert not result.ok and result.first_bad_id == last["id"], result
    await tamper(runtime, update(AuditChainHeadRow).values(last_hash=last["hash"]))
    assert (await verify_chain(runtime.db)).ok


async def test_rolled_back_transactions_leave_no_trace(runtime: Runtime) -> None:
    async with runtime.db() as session, session.begin():
        await add_audit(session, "test.kept", user_id=None, data={"n": 1})
    with pytest.raises(RuntimeError):
        async with runtime.db() as session, session.begin():
            await add_audit(session, "test.lost", user_id=None)
            raise RuntimeError("business failure")
    async with runtime.db() as session, session.begin():
        await add_audit(session, "test.kept", user_id=None, data={"n": 2})
        nested = await session.begin_nested()
        await add_audit(session, "test.lost", user_id=None)
        await nested.rollback()
        await add_audit(session, "test.kept", user_id=None, data={"n": 3})
    rows = await all_rows(runtime)
    assert [r["action"] for r in rows] == ["test.kept"] * 3
    assert [r["data"]["n"] for r in rows] == [1, 2, 3]
    assert rows[1]["prev_hash"] == rows[0]["hash"] and rows[2]["prev_hash"] == rows[1]["hash"]
    assert (await verify_chain(runtime.db)).ok


async def test_secrets_are_scrubbed_from_data(runtime: Runtime) -> None:
    data = {
        "username": "alice",
        "password": "hunter22",
        "newPassword": "x",
        "nested": {"api_key": "k", "X-Api-Key": "k2", "pin": "1234", "pinned": True},
        "items": [{"refresh_token": "t"}, {"client_secret": "s"}],
        "spin": 3,
    }
    async with runtime.db() as session, session.begin():
        await add_audit(session, "test.scrub", user_id=None, data=data)
    (row,) = await all_rows(runtime)
    assert row["data"] == {
        "username": "alice",
        "password": "***",
        "newPassword": "***",
        "nested": {"api_key": "***", "X-Api-Key": "***", "pin": "***", "pinned": True},
        "items": [{"refresh_token": "***"}, {"client_secret": "***"}],
        "spin": 3,
    }
    assert scrub({"totally_fine": 1}) == {"totally_fine": 1}
    assert (await verify_chain(runtime.db)).ok


async def test_audit_api_scopes_rows_to_the_caller(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    root, alice, bob = await setup_accounts(client)
    await client.post(
        "/api/v1/brokers/orders/place", json=order_body(alice.config_id), headers=alice.headers
    )
    await client.post(
        "/api/v1/brokers/orders/place",
        json=order_body(bob.config_id),
        headers={**bob.headers, "X-Correlation-ID": "bob-order"},
    )
    assert (await client.get("/api/v1/audit")).status_code == 401

    mine = (await client.get("/api/v1/audit", headers=alice.headers)).json()
    assert mine and {r["user_id"] for r in mine} == {alice.user_id}
    assert {"user.created", "broker_config.added", "order.placed"} <= {r["action"] for r in mine}
    assert [r["id"] for r in mine] == sorted((r["id"] for r in mine), reverse=True)
    assert set(mine[0]) == {
        "id",
        "user_id",
        "action",
        "target",
        "data",
        "ip",
        "correlation_id",
        "created_at",
        "hash",
    }
    # Asking for somebody else's rows does not work for a USER: still only their own.
    snoop = await client.get(
        "/api/v1/audit", params={"user_id": bob.user_id}, headers=alice.headers
    )
    assert snoop.status_code == 200 and {r["user_id"] for r in snoop.json()} == {alice.user_id}
    bobs = (await client.get("/api/v1/audit", headers=bob.headers)).json()
    assert bobs and {r["user_id"] for r in bobs} == {bob.user_id}
    assert "bob-order" in {r["correlation_id"] for r in bobs}

    everything = (
        await client.get("/api/v1/audit", params={"limit": 500}, headers=root.headers)
    ).json()
    assert {alice.user_id, bob.user_id, root.user_id} <= {r["user_id"] for r in everything}
    assert len(everything) == len(await all_rows(runtime))
    only_bob = (
        await client.get("/api/v1/audit", params={"user_id": bob.user_id}, headers=root.headers)
    ).json()
    assert {r["user_id"] for r in only_bob} == {bob.user_id}
    orders = (
        await client.get("/api/v1/audit", params={"action": "order.placed"}, headers=root.headers)
    ).json()
    assert {r["user_id"] for r in orders} == {alice.user_id, bob.user_id}
    assert {r["action"] for r in orders} == {"order.placed"}

    # Cursor paging walks everything exactly once, newest first.
    paged: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await client.get("/api/v1/audit", params=params, headers=root.headers)).json()
        if not page:
            break
        paged += [r["id"] for r in page]
        params["before_id"] = page[-1]["id"]
    assert paged == [r["id"] for r in everything]

    for bad in ({"limit": 0}, {"limit": 501}, {"before_id": "x"}):
        response = await client.get("/api/v1/audit", params=bad, headers=root.headers)
        assert response.status_code == 422, bad


def _cli(args: list[str], database_url: str, data_dir: Path) -> Any:
    env = {
        "DATABASE_URL": database_url,
        "TRADING_BACKEND_DATA_DIR": str(data_dir),
        "ENVIRONMENT": "test",
        "COLUMNS": "200",
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(audit_cli.app, args, env=env)
    finally:
        get_settings.cache_clear()


async def test_cli_verify_and_list(runtime: Runtime, database_url: str, tmp_path: Path) -> None:
    for n in range(4):
        async with runtime.db() as session, session.begin():
            await add_audit(session, f"test.cli{n % 2}", user_id="usr_cli", data={"n": n})
    data_dir = tmp_path / "cli-data"

    ok = await asyncio.to_thread(_cli, ["verify"], database_url, data_dir)
    assert ok.exit_code == 0, ok.output
    assert "audit chain intact: 4 rows" in ok.output

    listed = await asyncio.to_thread(
        _cli,
        ["list", "--user", "usr_cli", "--action", "test.cli1", "--limit", "1"],
        database_url,
        data_dir,
    )
    assert listed.exit_code == 0, listed.output
    assert "test.cli1" in listed.output and "test.cli0" not in listed.output
    assert '{"n":3}' in listed.output and '{"n":1}' not in listed.output

    rows = await all_rows(runtime)
    await tamper(runtime, update(AUDIT).where(AUDIT.c.id == rows[1]["id"]).values(ip="6.6.6.6"))
    broken = await asyncio.to_thread(_cli, ["verify"], database_url, data_dir)
    assert broken.exit_code == 1, broken.output
    assert f"#{rows[1]['id']}" in broken.output and "modified" in broken.output


async def test_concurrent_appends_form_one_chain(runtime: Runtime, database_url: str) -> None:
    async with runtime.db() as session, session.begin():
        await add_audit(session, "test.before", user_id=None)
    # A second engine stands in for a second process appending at the same time.
    other = create_engine(database_url)
    other_db = session_factory(other)

    async def append(i: int) -> None:
        db = runtime.db if i % 2 else other_db
        async with db() as session, session.begin():
            await add_audit(session, "test.concurrent", user_id=None, data={"i": i})
            await asyncio.sleep(0.01)  # keep the transactions overlapping
            await add_audit(session, "test.concurrent.second", user_id=None, data={"i": i})

    try:
        await asyncio.gather(*(append(i) for i in range(20)))
    finally:
        await other.dispose()
    rows = await all_rows(runtime)
    assert len(rows) == 41
    # Each transaction's two rows are adjacent and in id order: one total order.
    for first, second in zip(rows[1::2], rows[2::2], strict=True):
        assert first["action"] == "test.concurrent" and second["action"].endswith(".second")
        assert first["data"] == second["data"]
    assert sorted(r["data"]["i"] for r in rows[1::2]) == list(range(20))
    result = await verify_chain(runtime.db)
    assert result.ok and result.rows_checked == 41, result


async def test_migration_seals_rows_written_before_the_chain(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}")
    try:
        await upgrade_database(engine, "0002")
        async with engine.begin() as conn:
            for n in range(5):
                await conn.execute(
                    insert(AUDIT).values(
                        action="legacy", user_id=None, data={"n": n}, created_at=utcnow()
                    )
                )
        await upgrade_database(engine)
        db = session_factory(engine)
        result = await verify_chain(db, batch_size=2)
        assert result.ok and result.rows_checked == 5, result
        async with db() as session, session.begin():
            await add_audit(session, "after", user_id=None)
        result = await verify_chain(db)
        assert result.ok and result.rows_checked == 6, result
    finally:
        await engine.dispose()
