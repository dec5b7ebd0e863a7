"""One live broker session per (user, broker config), with a health monitor that
re-authenticates expired sessions.

Sessions are shared between processes (issue #7, ``session_store``): an adapter that can
export its tokens (Angel One) first tries the tokens another process stored, and every
login goes through a cross-process lock per (broker, account) that adopts tokens stored
meanwhile instead of logging in again. Closing a session (the user's request) logs out and
deletes the stored tokens; a process shutting down (``close_all``) leaves a shared session
alive for the other processes and the next start.

Configs are always loaded with the caller's user id: a config of another user is
CONFIG_NOT_FOUND, never "forbidden", so its existence is not revealed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.vault import Vault
from trading_backend.brokers.base import (
    Broker,
    BrokerAuthError,
    BrokerConfigData,
    BrokerContext,
    BrokerError,
    BrokerName,
    OrderUpdate,
)
from trading_backend.brokers.registry import BrokerRegistry
from trading_backend.brokers.session_store import (
    LoginLocks,
    SessionTokenStore,
    SharedSession,
    shares_sessions,
)
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import BrokerConfig, BrokerSessionRow

log = structlog.get_logger(__name__)

HEALTHY = "healthy"
ERROR = "error"
EXPIRED = "expired"


@dataclass(slots=True)
class BrokerSession:
    session_id: str
    user_id: str
    config_id: str
    broker_name: BrokerName
    broker: Broker
    health_status: str = HEALTHY
    error_count: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_activity: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_error: str | None = None
    shared: SharedSession | None = field(default=None, repr=False)

    def touch(self) -> None:
        self.last_activity = datetime.now(UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "config_id": self.config_id,
            "broker_name": self.broker_name.value,
            "health_status": self.health_status,
            "error_count": self.error_count,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
        }


class SessionNotFound(DomainError):
    code = ErrorCode.SESSION_NOT_FOUND


class ConfigNotFound(DomainError):
    code = ErrorCode.CONFIG_NOT_FOUND


UpdateSink = Callable[[OrderUpdate], Awaitable[None]]


class BrokerSessionManager:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        vault: Vault,
        context: BrokerContext,
        on_update: UpdateSink | None = None,
        login_locks: LoginLocks | None = None,
    ) -> None:
        """``login_locks``: serialise logins across processes (a Redis URL); the default
        serialises them within this process only."""
        self._db = db
        self._vault = vault
        self._context = context
        self._on_update = on_update
        self.token_store = SessionTokenStore(db, vault)
        self.login_locks = login_locks or LoginLocks()
        self._sessions: dict[tuple[str, str], BrokerSession] = {}
        self._opening: dict[tuple[str, str], asyncio.Lock] = {}
        self.on_session_opened: list[Callable[[BrokerSession], Awaitable[None]]] = []

    def set_update_sink(self, sink: UpdateSink) -> None:
        self._on_update = sink
        for session in self._sessions.values():
            session.broker.set_order_update_handler(sink)

    async def load_config(self, user_id: str, config_id: str) -> BrokerConfigData:
        async with self._db() as session:
            row = await session.scalar(
                select(BrokerConfig).where(
                    BrokerConfig.id == config_id,
                    BrokerConfig.user_id == user_id,
                    BrokerConfig.is_active.is_(True),
                )
            )
            if row is None:
                raise ConfigNotFound(f"broker config {config_id!r} not found")
            return BrokerConfigData(
                config_id=row.id,
                user_id=row.user_id,
                broker=row.broker,
                name=row.name,
                credentials=self._vault.decrypt(row.credentials_encrypted),
                settings=dict(row.settings or {}),
            )

    async def open(self, user_id: str, config_id: str) -> BrokerSession:
        """Return the live session, creating and authenticating it if needed."""
        key = (user_id, config_id)
        existing = self._sessions.get(key)
        if existing is not None and existing.health_status == HEALTHY:
            existing.touch()
            return existing
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._sessions.get(key)
            if existing is not None:
                if existing.health_status != HEALTHY:
                    await self._reauthenticate(existing)
                    if existing.health_status != HEALTHY:
                        raise BrokerAuthError(
                            existing.last_error or "broker session is not healthy"
                        )
                existing.touch()
                return existing
            config = await self.load_config(user_id, config_id)
            broker_cls = BrokerRegistry.get(config.broker)
            broker = broker_cls(config, self._context)
            if self._on_update is not None:
                broker.set_order_update_handler(self._on_update)
            shared: SharedSession | None = None
            try:
                if shares_sessions(broker):
                    shared = SharedSession(broker, self.token_store, self.login_locks)
                    shared.gated = broker.set_session_gate(shared.gate)
                    # Stored tokens first; else authenticate() logs in through the gate
                    # (or, for an adapter without gate support, under it).
                    if await shared.restore() or shared.gated:
                        ok = await broker.authenticate()
                    else:
                        ok = await shared.authenticate()
                    if ok:
                        await shared.save_if_changed()
                else:
                    ok = await broker.authenticate()
            except BrokerError:
                await broker.close()
                raise
            except Exception as exc:
                await broker.close()
                log.exception("broker_authenticate_crashed", config_id=config_id)
                raise BrokerError(f"broker login failed: {type(exc).__name__}") from None
            if not ok:
                await broker.close()
                raise BrokerAuthError("broker rejected the credentials")
            session = BrokerSession(
                session_id=uuid.uuid4().hex,
                user_id=user_id,
                config_id=config_id,
                broker_name=BrokerName(config.broker),
                broker=broker,
                shared=shared,
            )
            self._sessions[key] = session
            await self._persist(session)
            log.info("broker_session_opened", user_id=user_id, config_id=config_id)
            for callback in self.on_session_opened:
                await callback(session)
            return session

    def get(self, user_id: str, config_id: str) -> BrokerSession:
        session = self._sessions.get((user_id, config_id))
        if session is None:
            raise SessionNotFound(f"no broker session for config {config_id!r}")
        return session

    def find(self, user_id: str, config_id: str) -> BrokerSession | None:
        return self._sessions.get((user_id, config_id))

    async def close(self, user_id: str, config_id: str, *, logout: bool = True) -> BrokerSession:
        """End the session here. ``logout`` (a user's request) also ends it at the broker
        and deletes the stored tokens; without it (this process shutting down) a shared
        session stays usable by the other processes."""
        session = self._sessions.pop((user_id, config_id), None)
        if session is None:
            raise SessionNotFound(f"no broker session for config {config_id!r}")
        if logout or session.shared is None:
            try:
                await self._shutdown_broker(session)
            finally:
                if session.shared is not None:
                    await session.shared.forget()
        else:
            await session.broker.close()
        async with self._db() as db, db.begin():
            await db.execute(
                update(BrokerSessionRow)
                .where(BrokerSessionRow.id == session.session_id)
                .values(closed_at=datetime.now(UTC), health_status="closed")
            )
        log.info("broker_session_closed", user_id=user_id, config_id=config_id)
        return session

    async def close_all(self) -> None:
        """Process shutdown: close every session; shared ones are not logged out (other
        processes and the next start keep using their tokens)."""
        for key in list(self._sessions):
            try:
                await self.close(*key, logout=False)
            except Exception:
                log.exception("broker_session_close_failed", config_id=key[1])
        await self.login_locks.aclose()

    @staticmethod
    async def _shutdown_broker(session: BrokerSession) -> None:
        try:
            await session.broker.logout()
        finally:
            await session.broker.close()

    def sessions(self, user_id: str | None = None) -> list[BrokerSession]:
        return [s for s in self._sessions.values() if user_id is None or s.user_id == user_id]

    def record_error(self, session: BrokerSession, error: Exception) -> None:
        session.error_count += 1
        session.last_error = str(error)
        if isinstance(error, BrokerAuthError):
            session.health_status = EXPIRED

    async def _persist(self, session: BrokerSession) -> None:
        async with self._db() as db, db.begin():
            db.add(
                BrokerSessionRow(
                    id=session.session_id,
                    user_id=session.user_id,
                    config_id=session.config_id,
                    broker=session.broker_name.value,
                    health_status=session.health_status,
                    error_count=session.error_count,
                    created_at=session.created_at,
                    last_activity=session.last_activity,
                )
            )

    async def _reauthenticate(self, session: BrokerSession) -> None:
        try:
            shared = session.shared
            if shared is not None and not shared.gated:
                ok = await shared.authenticate()
            else:
                ok = await session.broker.authenticate()
            if ok and shared is not None:
                await shared.save_if_changed()
        except Exception as exc:  # noqa: BLE001 - recorded on the session
            ok = False
            session.last_error = str(exc) if isinstance(exc, DomainError) else type(exc).__name__
        if ok:
            session.health_status = HEALTHY
            log.info("broker_session_reauthenticated", config_id=session.config_id)
        else:
            session.health_status = ERROR
            session.error_count += 1

    async def check_health(self) -> None:
        """One pass of the health monitor: re-authenticate every session that expired."""
        for session in list(self._sessions.values()):
            try:
                valid = await session.broker.is_session_valid()
            except Exception as exc:  # noqa: BLE001 - a failing check marks the session unhealthy
                valid = False
                session.last_error = type(exc).__name__
            if valid and session.health_status == HEALTHY:
                continue
            session.health_status = EXPIRED
            await self._reauthenticate(session)
            async with self._db() as db, db.begin():
                await db.execute(
                    update(BrokerSessionRow)
                    .where(BrokerSessionRow.id == session.session_id)
                    .values(
                        health_status=session.health_status,
                        error_count=session.error_count,
                        last_activity=session.last_activity,
                    )
                )

    async def run_health_monitor(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_health()
            except Exception:
                log.exception("health_monitor_pass_failed")

    def system_status(self, background_tasks: int = 0) -> dict[str, Any]:
        sessions = list(self._sessions.values())
        by_broker: dict[str, dict[str, int]] = {}
        for s in sessions:
            stats = by_broker.setdefault(s.broker_name.value, {"total": 0, "healthy": 0})
            stats["total"] += 1
            stats["healthy"] += s.health_status == HEALTHY
        users = sorted({s.user_id for s in sessions})
        return {
            "total_users": len(users),
            "total_sessions": len(sessions),
            "healthy_sessions": sum(s.health_status == HEALTHY for s in sessions),
            "error_sessions": sum(s.health_status == ERROR for s in sessions),
            "expired_sessions": sum(s.health_status == EXPIRED for s in sessions),
            "background_tasks": background_tasks,
            "by_broker": by_broker,
            "users": users,
        }
