"""Engine, sessions and migrations for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# -- dbdown (issue #7): PostgreSQL engine limits (create_engine's keyword arguments override)
CONNECT_TIMEOUT_SECONDS = 5
POOL_TIMEOUT_SECONDS = 10.0
POOL_RECYCLE_SECONDS = 1800
HEALTH_CHECK_TIMEOUT_SECONDS = 5.0
# SQLSTATEs meaning "the server cannot serve us now", not "the statement is wrong": class 08
# (connection exception), 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now:
# a restart or recovery in progress) and 53300 (too many connections).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# -- end dbdown


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The engine for ``url``: SQLite tuned for one writer; PostgreSQL with a pool that
    rides out the server going away (see the dbdown block). ``kwargs`` override."""
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).parent.mkdir(
            parents=True, exist_ok=True
        ) if "///" in url and ":memory:" not in url else None
        # SQLite has one writer. Concurrent write transactions on separate connections make
        # SQLite's busy handler sleep (milliseconds at a time), so one connection is shared
        # and transactions queue in asyncio instead: measured 2-3x the order throughput.
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", 60)
        # Sessions always end in commit or rollback, so the pool need not roll back again.
        kwargs.setdefault("pool_reset_on_return", None)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the single writer; foreign keys are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # -- dbdown (issue #7): survive PostgreSQL going away and coming back, no restart needed.
    # Pre-ping checks a pooled connection before handing it out, so one dropped by a
    # restart, a failover or pg_terminate_backend is replaced instead of failing a request.
    kwargs.setdefault("pool_pre_ping", True)
    # A request waits this long for a free pooled connection, then fails fast (503) instead
    # of piling up behind an exhausted pool.
    kwargs.setdefault("pool_timeout", POOL_TIMEOUT_SECONDS)
    # Replace connections older than this: firewalls and NAT drop long-idle TCP flows silently.
    kwargs.setdefault("pool_recycle", POOL_RECYCLE_SECONDS)
    connect_args = dict(kwargs.pop("connect_args", None) or {})
    parsed = make_url(url)
    # asyncpg waits 60 s for a connection by default (psycopg: for ever); an unreachable
    # database should be reported (503) within seconds and tried again on the next request.
    timeout_arg = {"asyncpg": "timeout", "psycopg": "connect_timeout"}.get(parsed.get_driver_name())
    if timeout_arg is not None and timeout_arg not in parsed.query:
        connect_args.setdefault(timeout_arg, CONNECT_TIMEOUT_SECONDS)
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    event.listen(engine.sync_engine, "do_connect", _connect_failures_as_dbapi_errors)
    return engine
    # -- end dbdown


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def check_database(
    engine: AsyncEngine, timeout: float = HEALTH_CHECK_TIMEOUT_SECONDS
) -> bool:
    """Whether the database answers ``SELECT 1`` within ``timeout`` seconds, connecting
    included (a health check must answer even when the server does not)."""

    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(probe(), timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - health checks report, they do not raise
        return False


# -- dbdown (issue #7): telling "the database is away" from every other database error
def _connect_failures_as_dbapi_errors(
    dialect: Any, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]
) -> Any:
    """asyncpg lets a refused or timed-out connection attempt escape as a bare ``OSError``
    (``ConnectionRefusedError``, ``TimeoutError``), which SQLAlchemy passes through unwrapped.
    Raise the driver's ``OperationalError`` instead (the ``OSError`` as its cause), like
    psycopg does, so "cannot reach the database" always arrives as a SQLAlchemy
    ``OperationalError`` and the pool's error handling sees it."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.OperationalError(
            f"cannot connect to the database: {type(exc).__name__}: {exc}"
        ) from exc


def is_database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached right now (down, restarting,
    connection dropped, refused, timed out, pool exhausted, too many connections) rather than
    a fault in the statement or the data. Such a failure happened before anything was
    committed by the failing statement, and the same request can be retried later.

    Looks through SQLAlchemy's wrapper (``.orig``) and the exception chain, since the
    driver's error is usually the cause of what reaches the caller."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        # Pool exhausted (QueuePool timeout) or a connection the pool could not revive.
        if isinstance(current, sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return True
        if isinstance(current, OSError):  # refused, reset, unreachable, TimeoutError
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
        if type(current).__module__.startswith("asyncpg") and (
            "connection is closed" in str(current) or "connection was closed" in str(current)
        ):
            return True
        pending.extend((getattr(current, "orig", None), current.__cause__, current.__context__))
    return False


# -- end dbdown
