"""Password login with lock-out, back-off and the second factor.

Failed attempts are recorded per username (whether or not the account exists, so a lock
reveals nothing) and per IP address. After ``max_failures`` failures in a row an account
name is locked for ``lockout_minutes``, doubling with each further failure (capped at a
day); an address with ``ip_max_failures`` failures in the window is refused altogether.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.passwords import DUMMY_HASH, verify_password
from trading_backend.accounts.service import UserInfo
from trading_backend.accounts.sessions import SessionService, TokenPair
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import LoginAttemptRow, User
from trading_backend.storage.repositories import add_audit

SecondFactor = Callable[[str, str, str | None], Awaitable[None]]
MAX_LOCK = timedelta(days=1)


class LoginService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        sessions: SessionService,
        second_factor: SecondFactor,
        *,
        max_failures: int = 5,
        lockout_minutes: float = 15.0,
        ip_max_failures: int = 20,
        ip_window_minutes: float = 15.0,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._second_factor = second_factor
        self.max_failures = max_failures
        self.lockout = timedelta(minutes=lockout_minutes)
        self.ip_max_failures = ip_max_failures
        self.ip_window = timedelta(minutes=ip_window_minutes)

    async def _locked_for(self, session: AsyncSession, username: str, ip: str | None) -> float:
        """Seconds until a login may be tried again (0: now)."""
        now = datetime.now(UTC)
        if ip is not None:
            ip_failures = await session.scalar(
                select(func.count())
                .select_from(LoginAttemptRow)
                .where(
                    LoginAttemptRow.ip == ip,
                    LoginAttemptRow.success.is_(False),
                    LoginAttemptRow.created_at > now - self.ip_window,
                )
            )
            if (ip_failures or 0) >= self.ip_max_failures:
                return self.ip_window.total_seconds()
        last_success = await session.scalar(
            select(func.max(LoginAttemptRow.created_at)).where(
                LoginAttemptRow.username == username, LoginAttemptRow.success.is_(True)
            )
        )
        since = max(last_success or now - MAX_LOCK, now - MAX_LOCK)
        failures, last_failure = (
            await session.execute(
                select(func.count(), func.max(LoginAttemptRow.created_at)).where(
                    LoginAttemptRow.username == username,
                    LoginAttemptRow.success.is_(False),
                    LoginAttemptRow.created_at > since,
                )
            )
        ).one()
        if not failures or failures < self.max_failures or last_failure is None:
            return 0.0
        if last_failure.tzinfo is None:
            last_failure = last_failure.replace(tzinfo=UTC)
        lock = min(self.lockout * (2 ** (failures - self.max_failures)), MAX_LOCK)
        return max(0.0, (last_failure + lock - now).total_seconds())

    async def _record(
        self, username: str, ip: str | None, success: bool, user_id: str | None, action: str
    ) -> None:
        async with self._db() as session, session.begin():
            session.add(
                LoginAttemptRow(
                    username=username[:64], ip=ip, success=success, created_at=datetime.now(UTC)
                )
            )
            await add_audit(
                session, action, user_id=user_id, data={"username": username[:64]}, ip=ip
            )

    async def login(
        self, username: str, password: str, totp_code: str | None = None, ip: str | None = None
    ) -> tuple[UserInfo, TokenPair]:
        async with self._db() as session:
            wait = await self._locked_for(session, username, ip)
            user = await session.scalar(select(User).where(User.username == username))
        if wait > 0:
            raise DomainError(
                "too many failed logins; try again later",
                ErrorCode.ACCOUNT_LOCKED,
                retry_after=math.ceil(wait),
            )
        ok = verify_password(password, user.password_hash if user else DUMMY_HASH)
        if user is None or not ok or not user.is_active:
            await self._record(username, ip, False, user.id if user else None, "auth.login_failed")
            raise DomainError("invalid username or password", ErrorCode.NOT_AUTHENTICATED)
        if user.totp_enabled:
            if not totp_code:
                raise DomainError(
                    "this account needs its two-factor code (totp_code)", ErrorCode.TOTP_REQUIRED
                )
            try:
                await self._second_factor(user.id, totp_code, ip)
            except DomainError:
                await self._record(username, ip, False, user.id, "auth.login_failed_2fa")
                raise
        info = UserInfo(id=user.id, username=user.username, role=user.role)
        await self._record(username, ip, True, user.id, "auth.login")
        return info, await self._sessions.start(info, ip)
