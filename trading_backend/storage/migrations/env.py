"""Alembic environment: runs on a connection handed over by ``upgrade_database`` or, from the
alembic command line, on ``sqlalchemy.url`` (sync drivers are chosen automatically)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from trading_backend.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs batch mode to alter tables
        compare_type=True,
    )


connection = config.attributes.get("connection")
if connection is not None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = config.get_main_option("sqlalchemy.url") or ""
    url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(url)
    with engine.begin() as sync_connection:
        _configure(sync_connection)
        with context.begin_transaction():
            context.run_migrations()
