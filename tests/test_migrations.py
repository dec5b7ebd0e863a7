"""The migrations and the models agree: after ``upgrade head`` Alembic finds nothing to
autogenerate, and every migration downgrades cleanly back to an empty schema."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from trading_backend.storage.database import alembic_config, create_engine, upgrade_database
from trading_backend.storage.models import Base


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return list(compare_metadata(context, Base.metadata))


def _downgrade(connection: Connection) -> list[str]:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "base")
    return [t for t in inspect(connection).get_table_names() if t != "alembic_version"]


async def test_models_match_the_migrations_and_downgrade_to_nothing(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_database(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
        async with engine.begin() as connection:
            assert await connection.run_sync(_downgrade) == []
        await upgrade_database(engine)
    finally:
        await engine.dispose()
