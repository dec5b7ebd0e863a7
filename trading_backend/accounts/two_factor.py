"""Two-factor authentication with TOTP (RFC 6238) and one-time recovery codes.

Life cycle: ``enrol`` stores a new secret (vault-encrypted, not yet enabled) and returns
it with its ``otpauth://`` URI and QR code; ``confirm`` checks a first code against it,
enables 2FA and hands out the recovery codes, once. From then on every password login
(and a password change) also needs ``verify_second_factor``: a current TOTP code or an
unused recovery code. ``disable`` needs the password and a code.

Replay: each accepted TOTP code's time step is stored in ``users.totp_last_step``; a code
is only accepted for a strictly later step. The check and the write are one conditional
``UPDATE ... WHERE totp_last_step IS NULL OR totp_last_step < :step``, so two concurrent
logins with the same code cannot both pass (PostgreSQL re-checks the condition on the
locked row; SQLite has one writer). Recovery codes are spent the same way
(``UPDATE ... WHERE used_at IS NULL``).

The secret and the codes never go into logs, audit data or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pyotp
import segno
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.passwords import verify_password
from trading_backend.accounts.vault import Vault
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import RecoveryCodeRow, User, utcnow
from trading_backend.storage.repositories import add_audit

ISSUER = "trading-backend"
VALID_WINDOW = 1  # accept the previous and the next 30-second step too (clock drift)
RECOVERY_CODE_COUNT = 10
# No 0/1/i/l/o: nothing to confuse when the codes are read off paper.
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
RECOVERY_GROUP = 5  # two groups: xxxxx-xxxxx, 10 characters, about 49.5 bits
_TOTP_RE = re.compile(r"^[0-9]{6}$")
_SEPARATORS = re.compile(r"[\s-]+")
_VAULT_FIELD = "totp_secret"


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A pending enrolment: show it to the user once, then forget it."""

    secret: str
    otpauth_uri: str
    qr_svg: str

    def __repr__(self) -> str:  # never print the secret by accident
        return "Enrolment(secret='***', otpauth_uri='***', qr_svg='...')"


def qr_svg(uri: str, *, xml_declaration: bool = False) -> str:
    """The QR code of ``uri`` as a standalone SVG document (with its namespace, so it
    works inline in HTML, in an <img> data URI or served as ``image/svg+xml``)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer, kind="svg", scale=5, border=4, xmldecl=xml_declaration, svgclass=None
    )
    return buffer.getvalue().decode()


def hash_recovery_code(user_id: str, code: str) -> str:
    """SHA-256 over the user id and the normalised code.

    Why not argon2 like passwords: slow hashes exist to protect *low-entropy*, human-chosen
    secrets. Recovery codes are 10 characters drawn by ``secrets`` from a 31-symbol
    alphabet (about 49.5 bits each), only usable together with the account's password
    (itself argon2-hashed), and only ten per user. A fast hash lets us look a code up
    directly (one indexed query, no loop of ten argon2 verifications costing up to a
    second per attempt) and spend it with a single conditional UPDATE. Salting with the
    user id means a guessed hash is only ever worth one account.
    """
    return hashlib.sha256(f"{user_id}:{code}".encode()).hexdigest()


def _normalise(code: str) -> str:
    return _SEPARATORS.sub("", code).lower()


def _new_recovery_code() -> str:
    chars = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(2 * RECOVERY_GROUP))
    return f"{chars[:RECOVERY_GROUP]}-{chars[RECOVERY_GROUP:]}"


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _matching_steps(secret: str, code: str, now: datetime | float | None) -> list[int]:
    """The time steps (within the valid window around ``now``) at which ``code`` is the
    right code; compared in constant time."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now if now is not None else datetime.now(UTC))
    return [
        step
        for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1)
        if step >= 0 and hmac.compare_digest(totp.generate_otp(step), code)
    ]


class TwoFactorService:
    def __init__(self, db: async_sessionmaker[AsyncSession], vault: Vault) -> None:
        self._db = db
        self._vault = vault

    # -- helpers ---------------------------------------------------------------------------
    def _decrypt(self, token: str) -> str:
        secret = self._vault.decrypt(token).get(_VAULT_FIELD)
        if not secret:
            raise DomainError("the stored two-factor secret is unreadable", ErrorCode.SYSTEM_ERROR)
        return secret

    async def _user(self, user_id: str) -> User:
        async with self._db() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise DomainError("user not found", ErrorCode.USER_NOT_FOUND)
        return user

    async def _store_new_codes(self, session: AsyncSession, user_id: str) -> list[str]:
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        await session.execute(delete(RecoveryCodeRow).where(RecoveryCodeRow.user_id == user_id))
        now = utcnow()
        session.add_all(
            RecoveryCodeRow(
                user_id=user_id,
                code_hash=hash_recovery_code(user_id, _normalise(code)),
                created_at=now,
            )
            for code in codes
        )
        return codes

    # -- queries ---------------------------------------------------------------------------
    async def is_enabled(self, user_id: str) -> bool:
        async with self._db() as session:
            enabled = await session.scalar(select(User.totp_enabled).where(User.id == user_id))
        return bool(enabled)

    async def recovery_codes_left(self, user_id: str) -> int:
        async with self._db() as session:
            left = await session.scalar(
                select(func.count())
                .select_from(RecoveryCodeRow)
                .where(RecoveryCodeRow.user_id == user_id, RecoveryCodeRow.used_at.is_(None))
            )
        return int(left or 0)

    async def pending_enrolment(self, user_id: str) -> Enrolment:
        """The enrolment started but not yet confirmed (to show its QR code again).
        Refused once 2FA is enabled: an enabled secret is never shown again."""
        user = await self._user(user_id)
        if user.totp_enabled:
            raise DomainError(
                "two-factor authentication is already enabled; its secret is not shown again",
                ErrorCode.CONFLICT,
            )
        if not user.totp_secret_encrypted:
            raise DomainError(
                "no two-factor enrolment in progress; start one with POST /api/v1/auth/2fa/enrol",
                ErrorCode.NOT_FOUND,
            )
        return self._enrolment(self._decrypt(user.totp_secret_encrypted), user.username)

    @staticmethod
    def _enrolment(secret: str, username: str) -> Enrolment:
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)
        return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=qr_svg(uri))

    # -- enrolment -------------------------------------------------------------------------
    async def enrol(self, user_id: str, ip: str | None = None) -> Enrolment:
        """Start (or restart) enrolment with a fresh secret; 2FA stays off until
        ``confirm``. Refused with CONFLICT once 2FA is enabled (disable it first)."""
        user = await self._user(user_id)
        if user.totp_enabled:
            raise DomainError("two-factor authentication is already enabled", ErrorCode.CONFLICT)
        secret = pyotp.random_base32()
        async with self._db() as session, session.begin():
            # Conditional: a concurrent confirm must not have its verified secret replaced.
            result = await session.execute(
                update(User)
                .where(User.id == user_id, User.totp_enabled.is_(False))
                .values(
                    totp_secret_encrypted=self._vault.encrypt({_VAULT_FIELD: secret}),
                    totp_last_step=None,
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                raise DomainError(
                    "two-factor authentication is already enabled", ErrorCode.CONFLICT
                )
            await add_audit(session, "2fa.enrol_started", user_id=user_id, target=user_id, ip=ip)
        return self._enrolment(secret, user.username)

    async def confirm(
        self,
        user_id: str,
        code: str,
        ip: str | None = None,
        now: datetime | float | None = None,
    ) -> list[str]:
        """Check the first code against the pending secret, enable 2FA and return the
        recovery codes (the only time they are ever shown)."""
        user = await self._user(user_id)
        if user.totp_enabled:
            raise DomainError("two-factor authentication is already enabled", ErrorCode.CONFLICT)
        token = user.totp_secret_encrypted
        if not token:
            raise DomainError(
                "no two-factor enrolment in progress; start one with POST /api/v1/auth/2fa/enrol",
                ErrorCode.TOTP_NOT_ENABLED,
            )
        normalised = _normalise(code)
        steps = (
            _matching_steps(self._decrypt(token), normalised, now)
            if _TOTP_RE.fullmatch(normalised)
            else []
        )
        if not steps:
            raise DomainError("wrong two-factor code", ErrorCode.INVALID_TOTP)
        async with self._db() as session, session.begin():
            # Enable only the very secret that was verified, and only once.
            result = await session.execute(
                update(User)
                .where(
                    User.id == user_id,
                    User.totp_enabled.is_(False),
                    User.totp_secret_encrypted == token,
                )
                .values(totp_enabled=True, totp_last_step=max(steps))
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                raise DomainError(
                    "the enrolment changed meanwhile (enabled or restarted); check its state",
                    ErrorCode.CONFLICT,
                )
            codes = await self._store_new_codes(session, user_id)
            await add_audit(
                session,
                "2fa.enabled",
                user_id=user_id,
                target=user_id,
                data={"recovery_codes": len(codes)},
                ip=ip,
            )
        return codes

    # -- verification ----------------------------------------------------------------------
    async def verify_second_factor(
        self,
        user_id: str,
        code: str,
        ip: str | None = None,
        now: datetime | float | None = None,
    ) -> None:
        """Accept a current TOTP code (each time step once) or an unused recovery code;
        raise INVALID_TOTP otherwise. ``now`` (datetime or UNIX time) is for tests."""
        user = await self._user(user_id)
        if not user.totp_enabled or not user.totp_secret_encrypted:
            raise DomainError(
                "two-factor authentication is not enabled", ErrorCode.TOTP_NOT_ENABLED
            )
        normalised = _normalise(code)
        if _TOTP_RE.fullmatch(normalised):
            await self._spend_totp(user, normalised, now)
        elif normalised:
            await self._spend_recovery_code(user_id, normalised, ip)
        else:
            raise DomainError("wrong two-factor code", ErrorCode.INVALID_TOTP)

    async def _spend_totp(self, user: User, code: str, now: datetime | float | None) -> None:
        assert user.totp_secret_encrypted is not None
        steps = _matching_steps(self._decrypt(user.totp_secret_encrypted), code, now)
        if not steps:
            raise DomainError("wrong two-factor code", ErrorCode.INVALID_TOTP)
        last = user.totp_last_step
        fresh = [s for s in steps if last is None or s > last]
        already_used = DomainError(
            "this two-factor code was already used; wait for the next one",
            ErrorCode.INVALID_TOTP,
        )
        if not fresh:
            raise already_used
        step = max(fresh)
        async with self._db() as session, session.begin():
            result = await session.execute(
                update(User)
                .where(
                    User.id == user.id,
                    User.totp_enabled.is_(True),
                    User.totp_secret_encrypted == user.totp_secret_encrypted,
                    or_(User.totp_last_step.is_(None), User.totp_last_step < step),
                )
                .values(totp_last_step=step)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:  # a concurrent request spent this step (or later)
                raise already_used

    async def _spend_recovery_code(self, user_id: str, code: str, ip: str | None) -> None:
        async with self._db() as session, session.begin():
            result = await session.execute(
                update(RecoveryCodeRow)
                .where(
                    RecoveryCodeRow.user_id == user_id,
                    RecoveryCodeRow.code_hash == hash_recovery_code(user_id, code),
                    RecoveryCodeRow.used_at.is_(None),
                )
                .values(used_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != 1:
                raise DomainError(
                    "wrong two-factor code (or a recovery code that was already used)",
                    ErrorCode.INVALID_TOTP,
                )
            left = await session.scalar(
                select(func.count())
                .select_from(RecoveryCodeRow)
                .where(RecoveryCodeRow.user_id == user_id, RecoveryCodeRow.used_at.is_(None))
            )
            await add_audit(
                session,
                "2fa.recovery_code_used",
                user_id=user_id,
                target=user_id,
                data={"recovery_codes_left": int(left or 0)},
                ip=ip,
            )

    # -- management ------------------------------------------------------------------------
    async def disable(self, user_id: str, password: str, code: str, ip: str | None = None) -> None:
        """Turn 2FA off: needs the current password and a code (TOTP or recovery)."""
        user = await self._user(user_id)
        if not user.totp_enabled:
            raise DomainError(
                "two-factor authentication is not enabled", ErrorCode.TOTP_NOT_ENABLED
            )
        if not verify_password(password, user.password_hash):
            raise DomainError("current password is wrong", ErrorCode.NOT_AUTHENTICATED)
        await self.verify_second_factor(user_id, code, ip=ip)
        async with self._db() as session, session.begin():
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(totp_enabled=False, totp_secret_encrypted=None, totp_last_step=None)
                .execution_options(synchronize_session=False)
            )
            await session.execute(delete(RecoveryCodeRow).where(RecoveryCodeRow.user_id == user_id))
            await add_audit(session, "2fa.disabled", user_id=user_id, target=user_id, ip=ip)

    async def reset(self, user_id: str, *, by: str) -> bool:
        """Operator reset after a lost device (no password or code: the operator vouches).
        Ends the user's sessions too, since whoever holds the device may be logged in.
        Returns whether 2FA was on."""
        async with self._db() as session, session.begin():
            had = await session.scalar(
                select(User.totp_enabled).where(User.id == user_id).with_for_update()
            )
            if had is None:
                raise DomainError("user not found", ErrorCode.USER_NOT_FOUND)
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(totp_enabled=False, totp_secret_encrypted=None, totp_last_step=None)
                .execution_options(synchronize_session=False)
            )
            await session.execute(delete(RecoveryCodeRow).where(RecoveryCodeRow.user_id == user_id))
            await add_audit(session, "2fa.reset", user_id=None, target=user_id, data={"by": by})
        return bool(had)

    async def regenerate_recovery_codes(
        self, user_id: str, code: str, ip: str | None = None
    ) -> list[str]:
        """Replace every recovery code (used or not) with ten new ones; needs a code."""
        await self.verify_second_factor(user_id, code, ip=ip)
        async with self._db() as session, session.begin():
            enabled = await session.scalar(
                select(User.totp_enabled).where(User.id == user_id).with_for_update()
            )
            if not enabled:  # disabled meanwhile
                raise DomainError(
                    "two-factor authentication is not enabled", ErrorCode.TOTP_NOT_ENABLED
                )
            codes = await self._store_new_codes(session, user_id)
            await add_audit(
                session,
                "2fa.recovery_codes_regenerated",
                user_id=user_id,
                target=user_id,
                data={"recovery_codes": len(codes)},
                ip=ip,
            )
        return codes
