"""Broker sessions shared between processes (issue #7).

Why: in production several API and worker processes, maybe on several machines, act for
the same broker account. If each logged in on its own, an account would see one login per
process per day (and again after every session error), while brokers limit logins per
second and may lock an account that logs in too often; and Angel One's ``logout`` ends the
session for everybody holding its tokens. So one process logs in and the others use its
tokens:

* ``SessionTokenStore`` keeps each broker config's tokens (``Broker.export_session``) in
  the database, encrypted with the vault, with their expiry and a ``version`` that every
  write increments. It is written after every successful login or refresh.
* ``LoginLocks`` serialises logins per (broker, account) across processes: a
  ``RedisLock`` when REDIS_URL is set, else an asyncio lock (one process, embedded mode).
* ``SharedSession`` links one adapter instance to both. Opening a session first tries the
  stored tokens (``Broker.restore_session``). A login or refresh (first login, expiry, a
  session error such as AG8001) goes through ``SharedSession.gate``: take the lock,
  re-read the store, and if another process stored tokens this one has not seen (a newer
  version) adopt them instead of logging in; otherwise log in and store the new tokens.
  So N processes hitting the same dead token cause exactly one login.

Tokens never appear in logs; the row holds only ciphertext.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.vault import Vault
from trading_backend.brokers.base import Broker, BrokerUnavailable
from trading_backend.domain import DomainError
from trading_backend.storage.models import BrokerSessionTokens

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "LoginLocks",
    "SessionTokenStore",
    "SharedSession",
    "StoredSession",
    "shares_sessions",
]

log = structlog.get_logger(__name__)


def shares_sessions(broker: Broker) -> bool:
    """Whether the adapter can export its session (the paper broker cannot: nothing to
    share, so it keeps the plain, lock-free path)."""
    return type(broker).export_session is not Broker.export_session


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One config's stored tokens (decrypted; ``data`` is never shown by ``repr``)."""

    config_id: str
    version: int
    data: dict[str, Any] = field(repr=False)
    expires_at: datetime | None = None


def _expiry(data: dict[str, Any]) -> datetime | None:
    value = data.get("expires_at")
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class SessionTokenStore:
    """Session tokens per broker config, encrypted at rest, versioned."""

    def __init__(self, db: async_sessionmaker[AsyncSession], vault: Vault) -> None:
        self._db = db
        self._vault = vault

    async def load(self, config_id: str) -> StoredSession | None:
        """The stored tokens, or None (none stored, or not decryptable with the current
        keys: then a fresh login simply replaces them)."""
        async with self._db() as db:
            row = await db.scalar(
                select(BrokerSessionTokens).where(BrokerSessionTokens.config_id == config_id)
            )
        if row is None:
            return None
        try:
            payload = self._vault.decrypt(row.tokens_encrypted)
            data = json.loads(payload["session"])
        except (DomainError, KeyError, TypeError, ValueError):
            log.warning("broker_session_tokens_unreadable", config_id=config_id)
            return None
        if not isinstance(data, dict):
            return None
        return StoredSession(config_id, row.version, data, row.expires_at)

    async def save(self, config_id: str, broker: str, data: dict[str, Any]) -> int:
        """Store ``data`` (encrypted) as the config's tokens; returns the new version."""
        encrypted = self._vault.encrypt({"session": json.dumps(data, sort_keys=True)})
        values = {
            "broker": broker,
            "tokens_encrypted": encrypted,
            "expires_at": _expiry(data),
            "updated_at": datetime.now(UTC),
        }
        for _attempt in range(2):
            try:
                async with self._db() as db, db.begin():
                    result = await db.execute(
                        update(BrokerSessionTokens)
                        .where(BrokerSessionTokens.config_id == config_id)
                        .values(version=BrokerSessionTokens.version + 1, **values)
                    )
                    if getattr(result, "rowcount", 0):
                        version = await db.scalar(
                            select(BrokerSessionTokens.version).where(
                                BrokerSessionTokens.config_id == config_id
                            )
                        )
                        return int(version or 0)
                    db.add(BrokerSessionTokens(config_id=config_id, version=1, **values))
                return 1
            except IntegrityError:
                continue  # another process inserted the row first: update it instead
        raise RuntimeError(f"could not store the session tokens of config {config_id!r}")

    async def delete(self, config_id: str, *, version: int | None = None) -> bool:
        """Forget the config's tokens; with ``version``, only if they are still that
        version (tokens another process stored since are left alone)."""
        query = delete(BrokerSessionTokens).where(BrokerSessionTokens.config_id == config_id)
        if version is not None:
            query = query.where(BrokerSessionTokens.version == version)
        async with self._db() as db, db.begin():
            result = await db.execute(query)
        return bool(getattr(result, "rowcount", 0))


# Per event loop (tests run many loops), per lock name: the lock without Redis.
_LOCAL_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _local_lock(name: str) -> asyncio.Lock:
    locks = _LOCAL_LOCKS.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(name)
    if lock is None:
        lock = locks[name] = asyncio.Lock()
    return lock


class LoginLocks:
    """One login at a time per (broker, account), across processes.

    With a Redis URL (or client) a ``RedisLock`` named ``<prefix>login:<broker>:<account>``;
    without, an asyncio lock shared by everything in this process. ``ttl`` bounds how long
    a crashed holder blocks the others and must exceed a login (Angel One's refused-TOTP
    retry alone waits up to 30 s); waiting longer than ``timeout`` is ``BrokerUnavailable``.
    If Redis cannot be reached the login goes ahead under the local lock (better one extra
    login than no trading while Redis is away).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        redis: Redis | None = None,
        prefix: str = "tb:",
        ttl: float = 60.0,
        timeout: float = 90.0,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.ttl = ttl
        self.timeout = timeout
        self._redis = redis
        self._owns_redis = redis is None

    @property
    def distributed(self) -> bool:
        return self._redis is not None or bool(self.redis_url)

    def _client(self) -> Redis | None:
        if self._redis is None and self.redis_url:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(self.redis_url)
        return self._redis

    def name(self, broker: str, account: str) -> str:
        return f"{self.prefix}login:{broker}:{account}"

    @contextlib.asynccontextmanager
    async def hold(self, broker: str, account: str) -> AsyncIterator[None]:
        from trading_backend.execution.leases import TRANSPORT_ERRORS, LockTimeout, RedisLock

        name = self.name(broker, account)
        redis = self._client()
        lock: RedisLock | None = None
        if redis is not None:
            lock = RedisLock(redis, name, ttl=self.ttl, timeout=self.timeout)
            try:
                await lock.acquire()
            except LockTimeout:
                raise BrokerUnavailable(
                    "another process has been logging in to this broker account for too"
                    " long; try again shortly",
                    broker=broker,
                ) from None
            except TRANSPORT_ERRORS as exc:
                log.warning("login_lock_unreachable", lock=name, error=type(exc).__name__)
                lock = None
        if lock is None:
            async with _local_lock(name):
                yield
            return
        try:
            yield
        finally:
            try:
                await lock.release()
            except TRANSPORT_ERRORS as exc:  # it expires after its ttl
                log.warning("login_lock_release_failed", lock=name, error=type(exc).__name__)

    async def aclose(self) -> None:
        """Close the Redis client this object created (a later ``hold`` makes a new one)."""
        redis, self._redis = self._redis, None
        if redis is not None and self._owns_redis:
            with contextlib.suppress(Exception):
                await redis.aclose()
        elif redis is not None:
            self._redis = redis


Renew = Callable[[], Awaitable[None]]


class SharedSession:
    """One adapter instance's link to the shared tokens (see the module docstring).

    ``version`` is the stored version this instance last adopted or wrote: a stored
    version different from it means another process logged in (or refreshed) since.
    """

    def __init__(self, broker: Broker, store: SessionTokenStore, locks: LoginLocks) -> None:
        self.broker = broker
        self.store = store
        self.locks = locks
        self.version: int | None = None
        self.restored = False  # the session in use came from the store
        self.gated = False  # the adapter routes its own logins through ``gate``
        self.adoptions = 0  # tokens adopted inside the gate instead of logging in
        self._saved: dict[str, Any] | None = None

    @property
    def config_id(self) -> str:
        return self.broker.config.config_id

    async def _load(self) -> StoredSession | None:
        try:
            return await self.store.load(self.config_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning(
                "broker_session_tokens_load_failed",
                config_id=self.config_id,
                error=type(exc).__name__,
            )
            return None

    def _adopt(self, stored: StoredSession | None) -> bool:
        if stored is None or not self.broker.restore_session(stored.data):
            return False
        self.version = stored.version
        self._saved = stored.data
        return True

    async def restore(self) -> bool:
        """Use the stored tokens if they are still valid (no lock: reading is harmless)."""
        self.restored = self._adopt(await self._load())
        if self.restored:
            log.info("broker_session_restored", config_id=self.config_id, version=self.version)
        return self.restored

    async def gate(self, renew: Renew) -> None:
        """The adapter's ``SessionGate``: under the (broker, account) lock, adopt tokens
        another process stored since we last looked, else run ``renew`` and store the
        result. ``renew`` runs in the caller's task (the adapter relies on that)."""
        async with self.locks.hold(self.broker.config.broker, self.account):
            stored = await self._load()
            if stored is not None and stored.version != self.version and self._adopt(stored):
                self.adoptions += 1
                log.info("broker_session_adopted", config_id=self.config_id, version=self.version)
                return
            await renew()
            await self.save_if_changed()

    async def authenticate(self) -> bool:
        """For adapters that do not route logins through the gate themselves: their
        ``authenticate()`` under the gate."""
        outcome: list[bool] = []

        async def renew() -> None:
            outcome.append(await self.broker.authenticate())

        await self.gate(renew)
        return outcome[-1] if outcome else True

    @property
    def account(self) -> str:
        return self.broker.session_account()

    async def save_if_changed(self) -> None:
        """Store the adapter's current tokens unless they are the ones already stored. A
        failure is logged, not raised: the session works here, others log in themselves."""
        data = self.broker.export_session()
        if data is None or data == self._saved:
            return
        try:
            self.version = await self.store.save(self.config_id, self.broker.config.broker, data)
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            log.warning(
                "broker_session_tokens_save_failed",
                config_id=self.config_id,
                error=type(exc).__name__,
            )
            return
        self._saved = data
        log.info("broker_session_stored", config_id=self.config_id, version=self.version)

    async def forget(self) -> None:
        """After a logout: delete the stored tokens if they are the ones we held (tokens
        another process stored since belong to a session that is still alive)."""
        if self.version is None:
            return
        try:
            await self.store.delete(self.config_id, version=self.version)
        except (SQLAlchemyError, OSError) as exc:
            log.warning(
                "broker_session_tokens_delete_failed",
                config_id=self.config_id,
                error=type(exc).__name__,
            )
        self.version = None
        self._saved = None
