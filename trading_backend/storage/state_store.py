"""Database-backed ``StateStore`` for broker adapters (the paper exchange keeps its book here)."""

from __future__ import annotations

from typing import Any

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
        async with self._db() as session, session.begin():
            row = await session.get(BrokerStateRow, key)
            if row is None:
                session.add(BrokerStateRow(key=key, state=state, updated_at=utcnow()))
            else:
                row.state = state
                row.updated_at = utcnow()

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
