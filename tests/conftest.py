"""Shared fixtures.

Storage and order-path tests run on SQLite always and on PostgreSQL when
TEST_DATABASE_URL is set (each run gets its own throwaway database). With
REQUIRE_SERVICES=1 (CI) a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trading_backend.runtime import Runtime
from trading_backend.settings import Settings, normalise_database_url
from trading_backend.storage.database import create_engine, upgrade_database
from trading_backend.storage.models import Base

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
PG_URL = os.environ.get("TEST_DATABASE_URL")
REDIS_URL = os.environ.get("TEST_REDIS_URL")


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE_SERVICES and not PG_URL:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but TEST_DATABASE_URL is not set")
    if REQUIRE_SERVICES and not REDIS_URL:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but TEST_REDIS_URL is not set")


@pytest.fixture
def redis_url() -> str:
    """TEST_REDIS_URL; tests that need Redis skip without it (fail under REQUIRE_SERVICES)."""
    if not REDIS_URL:
        if REQUIRE_SERVICES:
            pytest.fail("Redis required (REQUIRE_SERVICES=1) but TEST_REDIS_URL is not set")
        pytest.skip("Redis tests need TEST_REDIS_URL")
    return REDIS_URL


def _backends() -> list[str]:
    return ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test run, migrated once; dropped at the end."""
    if not PG_URL:
        yield None
        return
    base = make_url(normalise_database_url(PG_URL))
    name = f"tb_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        admin = create_engine(
            base.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        engine = create_engine(base.set(database=name).render_as_string(hide_password=False))
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()

    async def drop() -> None:
        admin = create_engine(
            base.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await admin.dispose()

    try:
        asyncio.run(create())
    except Exception as exc:  # noqa: BLE001 - database unusable: reported below
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at TEST_DATABASE_URL is not usable: {exc}")
        yield None
        return
    yield base.set(database=name).render_as_string(hide_password=False)
    asyncio.run(drop())


async def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=_backends())
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None
) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    if postgres_url is None:
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL required (REQUIRE_SERVICES=1) but unavailable")
        pytest.skip("PostgreSQL tests need TEST_DATABASE_URL")
    await _truncate_postgres(postgres_url)
    return postgres_url


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "data_dir": data_dir,
        "database_url": database_url,
        "master_encryption_key": Fernet.generate_key().decode(),
        "jwt_secret_key": "test-secret-" + uuid.uuid4().hex,
        "order_wait_seconds": 5.0,
        "market_seed": 7,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A migrated runtime with its order worker running; the market is driven by tests."""
    rt = Runtime(settings)
    await rt.start(worker=True, market=False, health_monitor=False)
    try:
        yield rt
    finally:
        await rt.stop()
