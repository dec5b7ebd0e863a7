"""Database-backed ``StateStore`` for broker adapters (the paper exchange keeps its book here).

Besides plain ``load``/``save``, the stores offer ``locked(key)``: a transaction that holds
the row ``key`` exclusively while an adapter reads it, decides and writes. Several worker
processes share one paper account through it (issue #7): without the lock two processes
would each load the account, change it and save, and the second save would silently drop
the first one's orders and cash.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.storage.models import BrokerStateRow, utcnow

__all__ = ["DatabaseStateStore", "LockedState", "MemoryStateStore"]


class LockedState(abc.ABC):
    """The view of a ``locked(key)`` block: ``state`` is the value of ``key`` read under the
    lock (``None`` when there is none yet); other keys can be read in the same transaction;
    ``stage`` collects writes, applied together when the block ends without an exception.
    A block that stages nothing writes nothing (its transaction is rolled back)."""

    def __init__(self, key: str, state: dict[str, Any] | None) -> None:
        self.key = key
        self.state = state
        self.staged: dict[str, dict[str, Any]] = {}

    def stage(self, items: dict[str, dict[str, Any]]) -> None:
        self.staged.update(items)

    @abc.abstractmethod
    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Other keys, read in the same transaction (each store reads its own way)."""

    @abc.abstractmethod
    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every key under ``prefix``, read in the same transaction."""


class _DatabaseLockedState(LockedState):
    def __init__(self, session: AsyncSession, key: str, state: dict[str, Any] | None) -> None:
        super().__init__(key, state)
        self._session = session

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await _load_many(self._session, keys)

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        return await _load_prefix(self._session, prefix)


async def _load_many(session: AsyncSession, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = list(dict.fromkeys(keys))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), 500):  # stay far below bind-parameter limits
        rows = await session.execute(
            select(BrokerStateRow.key, BrokerStateRow.state).where(
                BrokerStateRow.key.in_(wanted[start : start + 500])
            )
        )
        found.update({key: dict(state) for key, state in rows.all()})
    return found


async def _load_prefix(session: AsyncSession, prefix: str) -> dict[str, dict[str, Any]]:
    rows = await session.execute(
        select(BrokerStateRow.key, BrokerStateRow.state).where(
            BrokerStateRow.key.startswith(prefix, autoescape=True)
        )
    )
    return {key: dict(state) for key, state in rows.all()}


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _upsert(session: AsyncSession, items: dict[str, dict[str, Any]]) -> None:
    """One INSERT ... ON CONFLICT DO UPDATE per key, on SQLite and PostgreSQL."""
    insert = postgresql_insert if _is_postgres(session) else sqlite_insert
    now = utcnow()
    for key, state in items.items():
        statement = insert(BrokerStateRow).values(key=key, state=state, updated_at=now)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[BrokerStateRow.key],
                set_={"state": statement.excluded.state, "updated_at": now},
            )
        )


class DatabaseStateStore:
    def __init__(self, db: async_sessionmaker[AsyncSession], *, shared: bool | None = None) -> None:
        """``shared``: whether other processes may write the same keys, so adapters must
        re-read before answering (default: true except on SQLite, which is one process)."""
        self._db = db
        if shared is None:
            bind = db.kw.get("bind")
            dialect = getattr(getattr(bind, "dialect", None), "name", None)
            shared = dialect != "sqlite"
        self.shared = shared

    async def load(self, key: str) -> dict[str, Any] | None:
        async with self._db() as session:
            row = await session.get(BrokerStateRow, key)
            return dict(row.state) if row is not None else None

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        async with self._db() as session:
            return await _load_many(session, keys)

    async def save(self, key: str, state: dict[str, Any]) -> None:
        await self.save_many({key: state})

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None:
        """Upsert several keys in one transaction (all or nothing)."""
        async with self._db() as session, session.begin():
            await _upsert(session, items)

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        async with self._db() as session:
            return await _load_prefix(session, prefix)

    async def delete(self, key: str) -> None:
        async with self._db() as session, session.begin():
            row = await session.get(BrokerStateRow, key)
            if row is not None:
                await session.delete(row)

    @asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[LockedState]:
        """Hold ``key`` exclusively for the block (see ``LockedState``).

        PostgreSQL: ``SELECT ... FOR UPDATE`` on the row; a missing row is first created
        as ``{}`` with ``INSERT ... ON CONFLICT DO NOTHING``, which waits for a concurrent
        creator to commit, so two processes can never both believe they create the key
        (the placeholder is rolled back unless the block stages the key itself).
        SQLite: the same insert opens a write transaction at once, and SQLite has one
        writer, so the read that follows is already exclusive (``BEGIN IMMEDIATE`` in
        effect). The yielded ``state`` is ``None`` for a key with no value yet.
        """
        async with self._db() as session:
            async with session.begin() as transaction:
                postgres = _is_postgres(session)
                state = await self._select(session, key, lock=postgres) if postgres else None
                if state is None:
                    insert = postgresql_insert if postgres else sqlite_insert
                    await session.execute(
                        insert(BrokerStateRow)
                        .values(key=key, state={}, updated_at=utcnow())
                        .on_conflict_do_nothing(index_elements=[BrokerStateRow.key])
                    )
                    state = await self._select(session, key, lock=postgres)
                view = _DatabaseLockedState(session, key, state or None)
                yield view
                if view.staged:
                    await _upsert(session, view.staged)
                else:
                    await transaction.rollback()

    @staticmethod
    async def _select(session: AsyncSession, key: str, *, lock: bool) -> dict[str, Any] | None:
        statement = select(BrokerStateRow.state).where(BrokerStateRow.key == key)
        if lock:
            statement = statement.with_for_update()
        state = (await session.execute(statement)).scalar_one_or_none()
        return dict(state) if state is not None else None


class _MemoryLockedState(LockedState):
    def __init__(self, store: MemoryStateStore, key: str, state: dict[str, Any] | None) -> None:
        super().__init__(key, state)
        self._store = store

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {k: self._store.data[k] for k in keys if k in self._store.data}

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        return await self._store.load_prefix(prefix)


class MemoryStateStore:
    """For tests and throwaway accounts (one process: ``locked`` is an asyncio lock)."""

    shared = False

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {k: self.data[k] for k in keys if k in self.data}

    async def save(self, key: str, state: dict[str, Any]) -> None:
        self.data[key] = state

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None:
        self.data.update(items)

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    @asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[LockedState]:
        async with self._locks.setdefault(key, asyncio.Lock()):
            view = _MemoryLockedState(self, key, self.data.get(key) or None)
            yield view
            self.data.update(view.staged)
