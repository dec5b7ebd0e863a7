"""API keys for programs and webhooks.

A key reads ``tb_<prefix>_<secret>``. The prefix (public, unique, indexed) finds the one row
to check, so authentication never scans other keys; the row keeps only the SHA-256 of the
whole key, compared in constant time. SHA-256 rather than argon2 is deliberate: a key holds
about 190 random bits, so a slow hash adds no protection against guessing and would cost
every authenticated request tens of milliseconds.

Scopes are ranked ``read`` < ``trade`` < ``admin``: a ``trade`` key can also read. Which
scope a request needs is decided by :func:`required_scope` from its method and path.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.service import UserInfo
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import ApiKeyRow, User
from trading_backend.storage.repositories import add_audit

SCOPES = ("read", "trade", "admin")
KEY_RE = re.compile(r"^tb_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,64})$")
MAX_KEYS_PER_USER = 50
# Writing last_used_at on every request would turn each read into a write; a minute's
# precision is what an operator needs to spot an unused or misused key.
LAST_USED_PRECISION = timedelta(minutes=1)
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: admin routes need ``admin``, reads ``read``, the rest
    (placing, modifying, cancelling, configuring) ``trade``."""
    if path.startswith("/api/v1/admin"):
        return "admin"
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "trade"


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        now = datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    info: ApiKeyInfo
    key: str  # the only time the whole key exists outside the caller's hands


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _normalise_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise DomainError(
            f"scopes must be a non-empty subset of {list(SCOPES)}",
            ErrorCode.VALIDATION_ERROR,
            unknown=unknown,
        )
    return [s for s in SCOPES if s in scopes]


class ApiKeyService:
    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self._db = db

    async def create(
        self,
        user: UserInfo,
        name: str,
        scopes: list[str],
        *,
        expires_at: datetime | None = None,
        ip: str | None = None,
    ) -> CreatedApiKey:
        wanted = _normalise_scopes(scopes)
        if "admin" in wanted and not user.is_admin:
            raise DomainError(
                "only administrators may create admin-scoped keys", ErrorCode.FORBIDDEN
            )
        now = datetime.now(UTC)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= now:
                raise DomainError("expires_at must be in the future", ErrorCode.VALIDATION_ERROR)
        prefix = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(12))
        key = f"tb_{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiKeyRow(
            id=f"key_{uuid.uuid4().hex[:16]}",
            user_id=user.id,
            name=name,
            prefix=prefix,
            key_hash=_hash(key),
            scopes=wanted,
            created_at=now,
            expires_at=expires_at,
        )
        async with self._db() as session, session.begin():
            active = await session.scalar(
                select(func.count())
                .select_from(ApiKeyRow)
                .where(ApiKeyRow.user_id == user.id, ApiKeyRow.revoked_at.is_(None))
            )
            if (active or 0) >= MAX_KEYS_PER_USER:
                raise DomainError(
                    f"at most {MAX_KEYS_PER_USER} active API keys per user; revoke one first",
                    ErrorCode.CONFLICT,
                )
            session.add(row)
            await add_audit(
                session,
                "api_key.created",
                user_id=user.id,
                target=row.id,
                data={"name": name, "scopes": wanted, "prefix": prefix},
                ip=ip,
            )
        return CreatedApiKey(info=_info(row), key=key)

    async def list_keys(self, user_id: str) -> list[ApiKeyInfo]:
        async with self._db() as session:
            rows = await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.user_id == user_id)
                .order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
            )
            return [_info(row) for row in rows]

    async def revoke(self, user_id: str, key_id: str, *, ip: str | None = None) -> ApiKeyInfo:
        """Revoke one of the caller's keys; another user's key id is simply not found."""
        async with self._db() as session, session.begin():
            row = await session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.user_id == user_id)
            )
            if row is None:
                raise DomainError("API key not found", ErrorCode.NOT_FOUND)
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
                await add_audit(
                    session,
                    "api_key.revoked",
                    user_id=user_id,
                    target=key_id,
                    data={"prefix": row.prefix},
                    ip=ip,
                )
            return _info(row)

    async def authenticate(self, key: str) -> tuple[UserInfo, list[str]]:
        """The key's user and scopes; any failure is the same ``API_KEY_INVALID``."""
        match = KEY_RE.match(key)
        async with self._db() as session:
            row = (
                await session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == match.group(1)))
                if match
                else None
            )
            # Compare even when nothing matched, so timing says nothing about prefixes.
            good = hmac.compare_digest(_hash(key), row.key_hash if row else _DUMMY_HASH)
            now = datetime.now(UTC)
            if row is None or not good:
                raise DomainError("invalid API key", ErrorCode.API_KEY_INVALID)
            if row.revoked_at is not None:
                raise DomainError("this API key was revoked", ErrorCode.API_KEY_INVALID)
            if row.expires_at is not None and row.expires_at <= now:
                raise DomainError("this API key has expired", ErrorCode.API_KEY_INVALID)
            user = await session.get(User, row.user_id)
            if user is None or not user.is_active:
                raise DomainError("invalid API key", ErrorCode.API_KEY_INVALID)
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_PRECISION:
                await session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(last_used_at=now)
                )
                await session.commit()
            scopes = list(row.scopes)
            # An admin key whose owner lost the admin role keeps only what the role allows.
            if user.role not in ("ADMIN", "SUPER_ADMIN"):
                scopes = [s for s in scopes if s != "admin"]
            return UserInfo(id=user.id, username=user.username, role=user.role), scopes
