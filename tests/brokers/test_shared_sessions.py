"""Broker sessions shared between processes (issue #7): two session managers, each with
its own broker context (as two processes would have), on one database (and one Redis when
TEST_REDIS_URL is set), against the fake Angel One server.

What must hold: one login serves every process; the tokens are encrypted at rest; after
the broker kills the session (AG8001) the processes recover with exactly one new login
between them; a user's logout deletes the stored tokens while a process shutdown leaves
them for the others; the paper broker is untouched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.brokers.angel_one.conftest import make_fake
from tests.brokers.angel_one.support import CLIENT_CODE
from tests.brokers.angel_one.test_adapter_support import credentials, fake_settings
from trading_backend.accounts.service import AccountService
from trading_backend.accounts.vault import Vault
from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.broker import AngelOneBroker
from trading_backend.brokers.angel_one.fake import running_fake
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.base import BrokerContext
from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.brokers.session_store import LoginLocks, SessionTokenStore
from trading_backend.brokers.sessions import BrokerSession, BrokerSessionManager
from trading_backend.settings import Settings, ensure_secrets
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.models import BrokerSessionTokens


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


@pytest.fixture
async def angel_fake() -> AsyncIterator[RunningFake]:
    """The fake SmartAPI with one client (as in ``tests/brokers/angel_one/conftest.py``)."""
    async with running_fake(make_fake()) as server:
        yield server


@pytest.fixture(params=["local", "redis"])
def lock_backend(request: pytest.FixtureRequest) -> str | None:
    """Logins serialised by an asyncio lock (embedded) or a Redis lock (production)."""
    if request.param == "local":
        return None
    return str(request.getfixturevalue("redis_url"))


@dataclass
class Env:
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    vault: Vault
    accounts: AccountService
    server: RunningFake
    redis_url: str | None
    prefix: str
    user_id: str = ""
    config_id: str = ""
    managers: list[BrokerSessionManager] = field(default_factory=list)

    def manager(self) -> BrokerSessionManager:
        """A session manager as another process would have it: its own broker context
        (market, adapters) and its own lock client, sharing only the database/Redis."""
        manager = BrokerSessionManager(
            self.db,
            self.vault,
            BrokerContext(market=SimulatedMarket(seed=7)),
            login_locks=LoginLocks(self.redis_url, prefix=self.prefix),
        )
        self.managers.append(manager)
        return manager

    async def stored_row(self) -> BrokerSessionTokens | None:
        async with self.db() as db:
            return await db.scalar(
                select(BrokerSessionTokens).where(BrokerSessionTokens.config_id == self.config_id)
            )


@pytest.fixture
async def env(
    settings: Settings, angel_fake: RunningFake, lock_backend: str | None
) -> AsyncIterator[Env]:
    settings = ensure_secrets(settings)
    engine = create_engine(settings.effective_database_url)
    await upgrade_database(engine)
    db = session_factory(engine)
    vault = Vault(settings.encryption_keys())
    accounts = AccountService(db, vault)
    env = Env(engine, db, vault, accounts, angel_fake, lock_backend, f"tbtest:{uuid.uuid4().hex}:")
    user = await accounts.create_user("ravi", "correct-horse-battery")
    config = await accounts.create_config(
        user.id,
        "angel_one",
        "ravi angel",
        credentials=credentials(),
        settings=fake_settings(angel_fake, order_updates="off"),
    )
    env.user_id, env.config_id = user.id, config["config_id"]
    try:
        yield env
    finally:
        for manager in env.managers:
            await manager.close_all()
        if lock_backend is not None:
            from redis.asyncio import Redis

            redis = Redis.from_url(lock_backend)
            try:
                keys = [k async for k in redis.scan_iter(match=f"{env.prefix}*")]
                if keys:
                    await redis.delete(*keys)
            finally:
                await redis.aclose()
        await engine.dispose()


def logins(env: Env) -> int:
    return len(env.server.fake.calls("login"))


def angel(session: BrokerSession) -> AngelOneBroker:
    assert isinstance(session.broker, AngelOneBroker)
    return session.broker


async def test_one_login_serves_two_processes_opening_at_once(env: Env) -> None:
    first, second = env.manager(), env.manager()
    a, b = await asyncio.gather(
        first.open(env.user_id, env.config_id), second.open(env.user_id, env.config_id)
    )
    assert logins(env) == 1
    # One of them logged in; the other adopted its tokens under the lock.
    assert sorted([angel(a).session.login_count, angel(b).session.login_count]) == [0, 1]
    assert angel(a).session.jwt == angel(b).session.jwt
    profiles = await asyncio.gather(angel(a).profile(), angel(b).profile())
    assert [p["clientcode"] for p in profiles] == [CLIENT_CODE, CLIENT_CODE]
    assert logins(env) == 1


async def test_a_later_process_restores_the_stored_session_without_logging_in(env: Env) -> None:
    first = await env.manager().open(env.user_id, env.config_id)
    second = await env.manager().open(env.user_id, env.config_id)
    assert logins(env) == 1
    assert second.shared is not None and second.shared.restored
    assert angel(second).session.login_count == 0
    balance = await second.broker.get_balance()
    assert "available_cash" in balance
    assert angel(first).session.jwt == angel(second).session.jwt


async def test_tokens_are_encrypted_at_rest(env: Env) -> None:
    session = await env.manager().open(env.user_id, env.config_id)
    tokens = angel(session).session
    secrets = [tokens.jwt, tokens.refresh_token, tokens.feed_token]
    assert all(secrets)
    async with env.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT * FROM broker_session_tokens"))).all()
    assert len(rows) == 1
    raw = " ".join(str(value) for value in rows[0])
    for secret in secrets:
        assert str(secret) not in raw
    row = await env.stored_row()
    assert row is not None and row.version == 1 and row.broker == "angel_one"
    assert row.expires_at == tokens.expires_at
    # ...and the vault reads them back.
    stored = await SessionTokenStore(env.db, env.vault).load(env.config_id)
    assert stored is not None
    assert (stored.data["jwt"], stored.data["feed_token"]) == (tokens.jwt, tokens.feed_token)
    assert str(tokens.jwt) not in repr(stored)


async def test_after_ag8001_both_processes_recover_with_exactly_one_login(env: Env) -> None:
    a = await env.manager().open(env.user_id, env.config_id)
    b = await env.manager().open(env.user_id, env.config_id)
    assert logins(env) == 1
    old_jwt = angel(a).session.jwt
    assert env.server.fake.faults.invalidate_tokens(CLIENT_CODE) == 1

    profiles = await asyncio.gather(angel(a).profile(), angel(b).profile())

    assert [p["clientcode"] for p in profiles] == [CLIENT_CODE, CLIENT_CODE]
    assert logins(env) == 2  # one new login between the two processes
    assert angel(a).session.jwt == angel(b).session.jwt != old_jwt
    profile_outcomes = [r.outcome for r in env.server.fake.calls("profile")]
    assert profile_outcomes.count("AG8001") == 2 and profile_outcomes.count("ok") == 2
    row = await env.stored_row()
    assert row is not None and row.version == 2
    # Both keep working on the new tokens.
    await asyncio.gather(a.broker.get_balance(), b.broker.get_balance())
    assert logins(env) == 2


async def test_a_token_refresh_is_stored_for_the_other_processes(env: Env) -> None:
    a = await env.manager().open(env.user_id, env.config_id)
    old_jwt = angel(a).session.jwt
    await angel(a).refresh_session()  # generateTokens: a new JWT, no login
    assert angel(a).session.jwt != old_jwt
    assert [r.outcome for r in env.server.fake.calls("generate_tokens")] == ["ok"]
    row = await env.stored_row()
    assert row is not None and row.version == 2
    b = await env.manager().open(env.user_id, env.config_id)
    assert angel(b).session.jwt == angel(a).session.jwt
    assert logins(env) == 1


async def test_logout_deletes_the_tokens_and_shutdown_keeps_them(env: Env) -> None:
    first = env.manager()
    await first.open(env.user_id, env.config_id)
    await first.close_all()  # this process stops: the shared session stays alive
    assert env.server.fake.calls("logout") == []
    assert await env.stored_row() is not None

    second = env.manager()
    session = await second.open(env.user_id, env.config_id)  # the next start: no login
    assert logins(env) == 1
    assert (await angel(session).profile())["clientcode"] == CLIENT_CODE

    await second.close(env.user_id, env.config_id)  # the user ends the session
    assert [r.outcome for r in env.server.fake.calls("logout")] == ["ok"]
    assert await env.stored_row() is None

    third = env.manager()
    await third.open(env.user_id, env.config_id)
    assert logins(env) == 2  # nothing left to restore: a fresh login


async def test_a_logout_leaves_tokens_another_process_stored_since(env: Env) -> None:
    a = await env.manager().open(env.user_id, env.config_id)
    other = env.manager()
    b = await other.open(env.user_id, env.config_id)
    env.server.fake.faults.invalidate_tokens(CLIENT_CODE)
    await angel(b).profile()  # b logs in again: version 2, a still holds version 1
    assert a.shared is not None and a.shared.version == 1
    manager_a = env.managers[0]
    await manager_a.close(env.user_id, env.config_id)
    row = await env.stored_row()
    assert row is not None and row.version == 2


async def test_stored_tokens_past_their_expiry_are_not_used(env: Env) -> None:
    await env.manager().open(env.user_id, env.config_id)
    store = SessionTokenStore(env.db, env.vault)
    stored = await store.load(env.config_id)
    assert stored is not None
    expired = dict(stored.data, expires_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    assert await store.save(env.config_id, "angel_one", expired) == 2

    session = await env.manager().open(env.user_id, env.config_id)
    assert session.shared is not None and not session.shared.restored
    assert logins(env) == 2
    assert (await angel(session).profile())["clientcode"] == CLIENT_CODE
    row = await env.stored_row()
    assert row is not None and row.version == 3


async def test_tokens_of_another_account_are_not_adopted(env: Env) -> None:
    await env.manager().open(env.user_id, env.config_id)
    store = SessionTokenStore(env.db, env.vault)
    stored = await store.load(env.config_id)
    assert stored is not None
    foreign: dict[str, Any] = dict(stored.data, account="someone-else")
    await store.save(env.config_id, "angel_one", foreign)
    session = await env.manager().open(env.user_id, env.config_id)
    assert session.shared is not None and not session.shared.restored
    assert logins(env) == 2


async def test_paper_configs_are_unaffected(env: Env) -> None:
    config = await env.accounts.create_config(env.user_id, "paper", "ravi paper")
    manager = env.manager()
    session = await manager.open(env.user_id, config["config_id"])
    assert session.shared is None
    assert "available_cash" in await session.broker.get_balance()
    async with env.db() as db:
        rows = (await db.scalars(select(BrokerSessionTokens))).all()
    assert rows == []
    await manager.close(env.user_id, config["config_id"])
    assert logins(env) == 0


async def test_two_runtimes_share_one_login_through_redis(
    tmp_path: Any, database_url: str, angel_fake: RunningFake, redis_url: str
) -> None:
    """The wiring in production: each Runtime (process) gets a Redis login lock from
    REDIS_URL and the token store from its database."""
    from tests.conftest import make_settings
    from trading_backend.runtime import Runtime

    prefix = f"tbtest:{uuid.uuid4().hex}:"
    settings = make_settings(
        tmp_path, database_url, redis_url=redis_url, queue_prefix=prefix, queue_backend="embedded"
    )
    first, second = Runtime(settings), Runtime(settings)
    try:
        await first.start(worker=False, market=False, health_monitor=False)
        await second.start(migrate=False, worker=False, market=False, health_monitor=False)
        assert first.sessions.login_locks.distributed
        user = await first.accounts.create_user("ravi", "correct-horse-battery")
        config = await first.accounts.create_config(
            user.id,
            "angel_one",
            "ravi angel",
            credentials=credentials(),
            settings=fake_settings(angel_fake, order_updates="off"),
        )
        a, b = await asyncio.gather(
            first.sessions.open(user.id, config["config_id"]),
            second.sessions.open(user.id, config["config_id"]),
        )
        assert len(angel_fake.fake.calls("login")) == 1
        angel_fake.fake.faults.invalidate_tokens(CLIENT_CODE)
        await asyncio.gather(angel(a).profile(), angel(b).profile())
        assert len(angel_fake.fake.calls("login")) == 2
    finally:
        await first.stop()
        await second.stop()
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()
