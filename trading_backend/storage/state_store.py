"""Database-backed ``StateStore`` for broker adapters (the paper exchange keeps its book here)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.storage.models import BrokerStateRow, utcnow


class DatabaseStateStore:
    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self._db = db

    async def load(self, key: str) -> dict[str, Any] | None:
        async with self._db() as session:
            row = await session.get(BrokerStateRow, key)
            return dict(row.state) if row is not None else None

    async def save(self, key: str, state: dict[str, Any]) -> None:
        await self.save_many({key: state})

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None:
        """Upsert several keys in one transaction (all or nothing), one INSERT ... ON
        CONFLICT DO UPDATE statement per key on SQLite and PostgreSQL."""
        async with self._db() as session, session.begin():
            dialect = session.bind.dialect.name
            insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
            now = utcnow()
            for key, state in items.items():
                statement = insert(BrokerStateRow).values(key=key, state=state, updated_at=now)
                await session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[BrokerStateRow.key],
                        set_={"state": statement.excluded.state, "updated_at": now},
                    )
                )

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        async with self._db() as session:
            rows = await session.execute(
                select(BrokerStateRow.key, BrokerStateRow.state).where(
                    BrokerStateRow.key.startswith(prefix, autoescape=True)
                )
            )
            return {key: dict(state) for key, state in rows.all()}

    async def delete(self, key: str) -> None:
        async with self._db() as session, session.begin():
            row = await session.get(BrokerStateRow, key)
            if row is not None:
                await session.delete(row)


class MemoryStateStore:
    """For tests and throwaway accounts."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    async def load(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    async def save(self, key: str, state: dict[str, Any]) -> None:
        self.data[key] = state

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None:
        self.data.update(items)

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}
