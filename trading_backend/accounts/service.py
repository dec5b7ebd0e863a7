"""Users and broker configs: creation, login, and per-user config management."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.passwords import (
    DUMMY_HASH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    verify_password,
)
from trading_backend.accounts.vault import Vault, mask
from trading_backend.brokers.registry import BrokerRegistry
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import BrokerConfig, OrderRow, User, utcnow
from trading_backend.storage.repositories import add_audit, find_user

ROLES = ("USER", "ADMIN", "SUPER_ADMIN")
LIVE_STATUSES = ("PENDING", "SUBMITTED", "OPEN", "PARTIALLY_FILLED", "UNKNOWN")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{3,64}$")
ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: str
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role in ("ADMIN", "SUPER_ADMIN")


def _info(user: User) -> UserInfo:
    return UserInfo(id=user.id, username=user.username, role=user.role)


class AccountService:
    def __init__(self, db: async_sessionmaker[AsyncSession], vault: Vault) -> None:
        self._db = db
        self._vault = vault

    async def create_user(
        self,
        username: str,
        password: str,
        *,
        role: str | None = None,
        user_id: str | None = None,
        ip: str | None = None,
    ) -> UserInfo:
        """Create a user. The very first user of a deployment becomes an ADMIN."""
        if not USERNAME_RE.match(username or ""):
            raise DomainError(
                "username must be 3-64 letters, digits or _ . @ -", ErrorCode.VALIDATION_ERROR
            )
        if len(password or "") < MIN_PASSWORD_LENGTH:
            raise DomainError(
                f"password must be at least {MIN_PASSWORD_LENGTH} characters",
                ErrorCode.VALIDATION_ERROR,
            )
        if role is not None and role not in ROLES:
            raise DomainError(f"role must be one of {', '.join(ROLES)}", ErrorCode.VALIDATION_ERROR)
        if user_id is not None and not ID_RE.match(user_id):
            raise DomainError(
                "user id must be 1-64 of A-Z a-z 0-9 _ . -", ErrorCode.VALIDATION_ERROR
            )
        password_hash = hash_password(password)
        try:
            async with self._db() as session, session.begin():
                if await find_user(session, username) is not None or (
                    user_id and await find_user(session, user_id) is not None
                ):
                    raise DomainError("username already taken", ErrorCode.CONFLICT)
                first = (await session.scalar(select(func.count()).select_from(User))) == 0
                user = User(
                    id=user_id or f"usr_{uuid.uuid4().hex[:16]}",
                    username=username,
                    password_hash=password_hash,
                    role=role or ("ADMIN" if first else "USER"),
                    is_active=True,
                    created_at=utcnow(),
                )
                session.add(user)
                await session.flush()
                await add_audit(session, "user.created", user_id=user.id, target=user.id, ip=ip)
                return _info(user)
        except IntegrityError:
            raise DomainError("username already taken", ErrorCode.CONFLICT) from None

    async def authenticate(self, username: str, password: str, ip: str | None = None) -> UserInfo:
        async with self._db() as session, session.begin():
            user = await session.scalar(select(User).where(User.username == username))
            ok = verify_password(password, user.password_hash if user else DUMMY_HASH)
            if user is None or not ok or not user.is_active:
                await add_audit(
                    session,
                    "auth.login_failed",
                    user_id=user.id if user else None,
                    data={"username": username[:64]},
                    ip=ip,
                )
                raise DomainError("invalid username or password", ErrorCode.NOT_AUTHENTICATED)
            await add_audit(session, "auth.login", user_id=user.id, ip=ip)
            return _info(user)

    async def get_user(self, user_id: str) -> UserInfo | None:
        async with self._db() as session:
            user = await session.get(User, user_id)
            return _info(user) if user is not None and user.is_active else None

    async def resolve_user(self, id_or_username: str) -> UserInfo | None:
        async with self._db() as session:
            user = await find_user(session, id_or_username)
            return _info(user) if user is not None and user.is_active else None

    async def list_users(self) -> list[UserInfo]:
        async with self._db() as session:
            return [
                _info(u)
                for u in (await session.scalars(select(User).order_by(User.created_at))).all()
            ]

    # -- broker configs ------------------------------------------------------------------
    async def create_config(
        self,
        user_id: str,
        broker: str,
        name: str,
        *,
        credentials: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        config_id: str | None = None,
        ip: str | None = None,
    ) -> dict[str, Any]:
        broker_cls = BrokerRegistry.get(broker)  # BROKER_NOT_SUPPORTED for an unknown name
        try:
            broker_cls.validate_settings(dict(settings or {}))
        except (DomainError, ValueError, TypeError) as exc:
            message = exc.message if isinstance(exc, DomainError) else str(exc)
            raise DomainError(f"invalid settings: {message}", ErrorCode.VALIDATION_ERROR) from None
        name = (name or "").strip()
        if not name or len(name) > 100:
            raise DomainError("name must be 1-100 characters", ErrorCode.VALIDATION_ERROR)
        if config_id is not None and not ID_RE.match(config_id):
            raise DomainError(
                "config id must be 1-64 of A-Z a-z 0-9 _ . -", ErrorCode.VALIDATION_ERROR
            )
        creds = {str(k): str(v) for k, v in (credentials or {}).items()}
        try:
            async with self._db() as session, session.begin():
                if config_id and await session.get(BrokerConfig, config_id) is not None:
                    raise DomainError("config id already in use", ErrorCode.CONFLICT)
                duplicate = await session.scalar(
                    select(BrokerConfig.id).where(
                        BrokerConfig.user_id == user_id,
                        BrokerConfig.name == name,
                    )
                )
                if duplicate is not None:
                    raise DomainError(
                        f"you already have a broker config named {name!r}", ErrorCode.CONFLICT
                    )
                row = BrokerConfig(
                    id=config_id or f"cfg_{uuid.uuid4().hex[:16]}",
                    user_id=user_id,
                    broker=broker,
                    name=name,
                    credentials_encrypted=self._vault.encrypt(creds) if creds else None,
                    settings=settings or {},
                    is_active=True,
                    created_at=utcnow(),
                )
                session.add(row)
                await session.flush()
                await add_audit(
                    session,
                    "broker_config.added",
                    user_id=user_id,
                    target=row.id,
                    data={"broker": broker, "name": name},
                    ip=ip,
                )
                return self.describe_config(row)
        except IntegrityError:
            raise DomainError("config id or name already in use", ErrorCode.CONFLICT) from None

    def describe_config(self, row: BrokerConfig) -> dict[str, Any]:
        """A config as the API shows it: credentials masked, never in clear."""
        creds = self._vault.decrypt(row.credentials_encrypted) if row.credentials_encrypted else {}
        return {
            "config_id": row.id,
            "broker": row.broker,
            "name": row.name,
            "settings": row.settings or {},
            "credentials": {k: mask(v) for k, v in creds.items()},
            "created_at": row.created_at,
        }

    async def list_configs(self, user_id: str) -> list[dict[str, Any]]:
        async with self._db() as session:
            rows = (
                await session.scalars(
                    select(BrokerConfig)
                    .where(BrokerConfig.user_id == user_id, BrokerConfig.is_active.is_(True))
                    .order_by(BrokerConfig.created_at)
                )
            ).all()
            return [self.describe_config(r) for r in rows]

    async def delete_config(self, user_id: str, config_id: str, ip: str | None = None) -> None:
        """Deactivate (orders and trades keep their history) and forget the credentials."""
        async with self._db() as session, session.begin():
            row = await session.scalar(
                select(BrokerConfig).where(
                    BrokerConfig.id == config_id,
                    BrokerConfig.user_id == user_id,
                    BrokerConfig.is_active.is_(True),
                )
            )
            if row is None:
                raise DomainError(
                    f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND
                )
            live = await session.scalar(
                select(func.count())
                .select_from(OrderRow)
                .where(OrderRow.config_id == config_id, OrderRow.status.in_(LIVE_STATUSES))
            )
            if live:
                raise DomainError(
                    f"broker config {config_id!r} has {live} order(s) still working;"
                    " cancel them (or let them finish) first",
                    ErrorCode.CONFLICT,
                )
            row.is_active = False
            row.credentials_encrypted = None
            row.name = f"{row.name} (deleted {row.id})"[:100]
            await add_audit(
                session, "broker_config.removed", user_id=user_id, target=config_id, ip=ip
            )
