"""FastAPI dependencies: the runtime, the authenticated caller, role and scope checks.

A caller authenticates with ``Authorization: Bearer <access JWT>`` or with
``X-API-Key: <key>``. A JWT is refused once its login session was revoked (logout, refresh
token reuse) or when it predates the user's last password change. An API key only reaches
routes its scopes allow (``read`` < ``trade`` < ``admin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from trading_backend.accounts.service import UserInfo
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.runtime import Runtime
from trading_backend.storage.models import User

_bearer = HTTPBearer(auto_error=False, description="JWT from POST /api/v1/auth/login")
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key from POST /api/v1/auth/api-keys"
)

SCOPE_RANK = {"read": 0, "trade": 1, "admin": 2}


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True, slots=True)
class AuthContext:
    user: UserInfo
    via: str  # "jwt" or "api_key"
    scopes: frozenset[str] = field(default_factory=frozenset)
    session_id: str | None = None
    totp_enabled: bool = False


def _allows(scopes: frozenset[str], needed: str) -> bool:
    return any(SCOPE_RANK.get(s, -1) >= SCOPE_RANK[needed] for s in scopes)


async def resolve_auth(
    runtime: Runtime, token: str | None, api_key: str | None, method: str, path: str
) -> AuthContext:
    """The caller behind a bearer token or an API key (HTTP requests and WebSockets)."""
    if api_key:
        from trading_backend.accounts.api_keys import required_scope

        user, scopes = await runtime.api_keys.authenticate(api_key)
        needed = required_scope(method, path)
        if not _allows(frozenset(scopes), needed):
            raise DomainError(
                f"this API key lacks the {needed!r} scope", ErrorCode.INSUFFICIENT_SCOPE
            )
        return AuthContext(user=user, via="api_key", scopes=frozenset(scopes))
    if token:
        claims = runtime.tokens.verify(token)
        async with runtime.db() as session:
            row = await session.get(User, claims.user_id)
        if row is None or not row.is_active:
            raise DomainError("user no longer exists or is disabled", ErrorCode.NOT_AUTHENTICATED)
        valid_after = row.sessions_valid_after
        if valid_after is not None and claims.issued_at < valid_after.replace(microsecond=0):
            raise DomainError("this session was ended; log in again", ErrorCode.TOKEN_REVOKED)
        if claims.session_id and await runtime.auth_sessions.is_revoked(claims.session_id):
            raise DomainError("this session was revoked; log in again", ErrorCode.TOKEN_REVOKED)
        user = UserInfo(id=row.id, username=row.username, role=row.role)
        return AuthContext(
            user=user,
            via="jwt",
            scopes=frozenset(SCOPE_RANK),
            session_id=claims.session_id,
            totp_enabled=row.totp_enabled,
        )
    raise DomainError("missing bearer token or API key", ErrorCode.NOT_AUTHENTICATED)


async def authenticate(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> AuthContext:
    token = (
        credentials.credentials
        if credentials is not None and credentials.scheme.lower() == "bearer"
        else None
    )
    context = await resolve_auth(runtime, token, api_key, request.method, request.url.path)
    request.state.auth = context
    return context


AuthDep = Annotated[AuthContext, Depends(authenticate)]


async def current_user(auth: AuthDep) -> UserInfo:
    return auth.user


UserDep = Annotated[UserInfo, Depends(current_user)]


async def admin_user(auth: AuthDep, runtime: RuntimeDep) -> UserInfo:
    if not auth.user.is_admin:
        raise DomainError("admin role required", ErrorCode.FORBIDDEN)
    if not _allows(auth.scopes, "admin"):
        raise DomainError("this API key lacks the 'admin' scope", ErrorCode.INSUFFICIENT_SCOPE)
    if runtime.settings.require_admin_2fa and auth.via == "jwt" and not auth.totp_enabled:
        raise DomainError(
            "administrators must enable two-factor authentication first (/api/v1/auth/2fa)",
            ErrorCode.FORBIDDEN,
        )
    return auth.user


AdminDep = Annotated[UserInfo, Depends(admin_user)]


async def super_admin_user(user: AdminDep) -> UserInfo:
    if user.role != "SUPER_ADMIN":
        raise DomainError("super-admin role required", ErrorCode.FORBIDDEN)
    return user


SuperAdminDep = Annotated[UserInfo, Depends(super_admin_user)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
