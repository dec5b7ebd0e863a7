"""Registration, login, token refresh, logout and password change."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.accounts.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
from trading_backend.accounts.sessions import TokenPair
from trading_backend.api.deps import AuthDep, RuntimeDep, UserDep, _bearer, client_ip
from trading_backend.api.schemas import MessageOut, UserOut
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import User
from trading_backend.storage.repositories import add_audit

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class LoginIn(RegisterIn):
    totp_code: str | None = Field(
        default=None, max_length=32, description="two-factor code, once 2FA is enabled"
    )


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=256)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)
    totp_code: str | None = Field(default=None, max_length=32)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user_id: str
    role: str


class RegisterOut(TokenOut):
    username: str


def _tokens(pair: TokenPair, user_id: str, role: str) -> dict[str, object]:
    return {
        "access_token": pair.access_token,
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
        "refresh_expires_in": pair.refresh_expires_in,
        "user_id": user_id,
        "role": role,
    }


@router.post("/register", status_code=201, response_model=RegisterOut)
async def register(
    body: RegisterIn,
    runtime: RuntimeDep,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> dict[str, object]:
    """Create an account. The first account of a deployment is an ADMIN. With
    REGISTRATION_MODE=admin_only, only an admin (Bearer token) may register others."""
    ip = client_ip(request)
    if runtime.settings.registration_mode == "admin_only" and await runtime.accounts.list_users():
        if credentials is None:
            raise DomainError(
                "registration is by administrators only", ErrorCode.REGISTRATION_CLOSED
            )
        claims = runtime.tokens.verify(credentials.credentials)
        admin = await runtime.accounts.get_user(claims.user_id)
        if admin is None or not admin.is_admin:
            raise DomainError(
                "registration is by administrators only", ErrorCode.REGISTRATION_CLOSED
            )
    user = await runtime.accounts.create_user(body.username, body.password, ip=ip)
    pair = await runtime.auth_sessions.start(user, ip)
    return {**_tokens(pair, user.id, user.role), "username": user.username}


@router.post("/login", response_model=TokenOut)
async def login(body: LoginIn, runtime: RuntimeDep, request: Request) -> dict[str, object]:
    """Password (and, once enabled, the two-factor code) for an access token and a
    rotating refresh token."""
    user, pair = await runtime.logins.login(
        body.username, body.password, body.totp_code, client_ip(request)
    )
    return _tokens(pair, user.id, user.role)


@router.post("/refresh", response_model=TokenOut)
async def refresh(body: RefreshIn, runtime: RuntimeDep, request: Request) -> dict[str, object]:
    """Trade a refresh token for a new pair. Each refresh token works once; presenting a
    used one again revokes every token of that login."""
    pair = await runtime.auth_sessions.refresh(body.refresh_token, client_ip(request))
    claims = runtime.tokens.verify(pair.access_token)
    return _tokens(pair, claims.user_id, claims.role)


@router.post("/logout", response_model=MessageOut)
async def logout(auth: AuthDep, runtime: RuntimeDep, request: Request) -> MessageOut:
    """End this login: its refresh tokens and access tokens stop working."""
    if auth.session_id:
        await runtime.auth_sessions.revoke_family(auth.user.id, auth.session_id)
    async with runtime.db() as session, session.begin():
        await add_audit(session, "auth.logout", user_id=auth.user.id, ip=client_ip(request))
    return MessageOut(message="logged out")


@router.post("/logout-all", response_model=MessageOut)
async def logout_all(user: UserDep, runtime: RuntimeDep, request: Request) -> MessageOut:
    """End every login of this account."""
    await runtime.auth_sessions.revoke_all(user.id, "logout_all")
    async with runtime.db() as session, session.begin():
        await add_audit(session, "auth.logout_all", user_id=user.id, ip=client_ip(request))
    return MessageOut(message="all sessions ended")


@router.post("/password", response_model=MessageOut)
async def change_password(
    body: PasswordIn, auth: AuthDep, runtime: RuntimeDep, request: Request
) -> MessageOut:
    """Change the password; every session of the account ends (log in again)."""
    if auth.via != "jwt":
        raise DomainError("log in with your password to change it", ErrorCode.FORBIDDEN)
    if len(body.new_password) < MIN_PASSWORD_LENGTH:
        raise DomainError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters",
            ErrorCode.VALIDATION_ERROR,
        )
    async with runtime.db() as session:
        row = await session.get(User, auth.user.id)
    if row is None or not verify_password(body.current_password, row.password_hash):
        raise DomainError("current password is wrong", ErrorCode.NOT_AUTHENTICATED)
    if row.totp_enabled:
        if not body.totp_code:
            raise DomainError("two-factor code required", ErrorCode.TOTP_REQUIRED)
        await runtime.two_factor.verify_second_factor(row.id, body.totp_code, ip=client_ip(request))
    new_hash = hash_password(body.new_password)
    async with runtime.db() as session, session.begin():
        user = await session.get(User, auth.user.id)
        assert user is not None
        user.password_hash = new_hash
        await add_audit(session, "auth.password_changed", user_id=user.id, ip=client_ip(request))
    await runtime.auth_sessions.revoke_all(auth.user.id, "password_changed")
    return MessageOut(message="password changed; log in again")


@router.get("/me", response_model=UserOut)
async def me(user: UserDep) -> UserOut:
    return UserOut(user_id=user.id, username=user.username, role=user.role)
