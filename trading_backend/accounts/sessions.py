"""Login sessions: short-lived access JWTs plus rotating refresh tokens.

A login starts a *family*. Each refresh uses up the presented token and issues its child
in the same family. Presenting a token that was already used means two parties hold it
(it was stolen): the whole family is revoked, so both are logged out. Logout revokes the
family; a password change revokes every family of the user and moves the user's
``sessions_valid_after``, which also kills access tokens issued before it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.service import UserInfo
from trading_backend.accounts.tokens import TokenService
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import RefreshTokenRow, User
from trading_backend.storage.repositories import add_audit


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    family_id: str


class SessionService:
    def __init__(
        self, db: async_sessionmaker[AsyncSession], tokens: TokenService, refresh_days: int = 30
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._refresh_lifetime = timedelta(days=refresh_days)

    async def start(self, user: UserInfo, ip: str | None = None) -> TokenPair:
        """A new family for a fresh login."""
        async with self._db() as session, session.begin():
            return await self._issue(session, user, uuid.uuid4().hex, None, ip)

    async def _issue(
        self,
        session: AsyncSession,
        user: UserInfo,
        family_id: str,
        parent_id: str | None,
        ip: str | None,
    ) -> TokenPair:
        raw = "tbr_" + secrets.token_urlsafe(40)
        now = datetime.now(UTC)
        session.add(
            RefreshTokenRow(
                id=uuid.uuid4().hex,
                user_id=user.id,
                family_id=family_id,
                token_hash=_hash(raw),
                parent_id=parent_id,
                issued_at=now,
                expires_at=now + self._refresh_lifetime,
                ip=ip,
            )
        )
        return TokenPair(
            access_token=self._tokens.issue(user.id, user.role, session_id=family_id),
            refresh_token=raw,
            expires_in=self._tokens.minutes * 60,
            refresh_expires_in=int(self._refresh_lifetime.total_seconds()),
            family_id=family_id,
        )

    async def refresh(self, raw: str, ip: str | None = None) -> TokenPair:
        """Use up ``raw`` and return the next pair; reuse revokes the family."""
        now = datetime.now(UTC)
        async with self._db() as session, session.begin():
            row = await session.scalar(
                select(RefreshTokenRow)
                .where(RefreshTokenRow.token_hash == _hash(raw))
                .with_for_update()
            )
            if row is None:
                raise DomainError("invalid refresh token", ErrorCode.NOT_AUTHENTICATED)
            if row.revoked_at is not None:
                raise DomainError("this session was revoked", ErrorCode.TOKEN_REVOKED)
            if row.used_at is not None:
                await self._revoke_family(session, row.family_id, "reuse_detected", now)
                await add_audit(
                    session,
                    "auth.refresh_reuse",
                    user_id=row.user_id,
                    target=row.family_id,
                    ip=ip,
                )
                return_error = DomainError(
                    "refresh token already used: every session of this login is revoked",
                    ErrorCode.TOKEN_REVOKED,
                )
            elif row.expires_at <= now:
                raise DomainError("refresh token expired", ErrorCode.NOT_AUTHENTICATED)
            else:
                user = await session.get(User, row.user_id)
                if user is None or not user.is_active:
                    raise DomainError("user no longer active", ErrorCode.NOT_AUTHENTICATED)
                row.used_at = now
                return await self._issue(
                    session,
                    UserInfo(id=user.id, username=user.username, role=user.role),
                    row.family_id,
                    row.id,
                    ip,
                )
        raise return_error  # after the revocation committed

    async def _revoke_family(
        self, session: AsyncSession, family_id: str, reason: str, now: datetime
    ) -> None:
        await session.execute(
            update(RefreshTokenRow)
            .where(RefreshTokenRow.family_id == family_id, RefreshTokenRow.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )

    async def revoke_family(self, user_id: str, family_id: str, reason: str = "logout") -> None:
        async with self._db() as session, session.begin():
            await session.execute(
                update(RefreshTokenRow)
                .where(
                    RefreshTokenRow.family_id == family_id,
                    RefreshTokenRow.user_id == user_id,
                    RefreshTokenRow.revoked_at.is_(None),
                )
                .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
            )

    async def revoke_all(self, user_id: str, reason: str) -> None:
        """End every session of the user, access tokens included."""
        now = datetime.now(UTC)
        async with self._db() as session, session.begin():
            await session.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.user_id == user_id, RefreshTokenRow.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason)
            )
            await session.execute(
                update(User).where(User.id == user_id).values(sessions_valid_after=now)
            )

    async def is_revoked(self, family_id: str) -> bool:
        async with self._db() as session:
            revoked = await session.scalar(
                select(RefreshTokenRow.id)
                .where(
                    RefreshTokenRow.family_id == family_id,
                    RefreshTokenRow.revoked_at.is_not(None),
                )
                .limit(1)
            )
            return revoked is not None
