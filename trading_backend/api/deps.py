"""FastAPI dependencies: the runtime, the authenticated caller, role checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trading_backend.accounts.service import UserInfo
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="JWT from POST /api/v1/auth/login")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def current_user(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UserInfo:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise DomainError("missing bearer token", ErrorCode.NOT_AUTHENTICATED)
    claims = runtime.tokens.verify(credentials.credentials)
    user = await runtime.accounts.get_user(claims.user_id)
    if user is None:
        raise DomainError("user no longer exists", ErrorCode.NOT_AUTHENTICATED)
    return user


UserDep = Annotated[UserInfo, Depends(current_user)]


async def admin_user(user: UserDep) -> UserInfo:
    if not user.is_admin:
        raise DomainError("admin role required", ErrorCode.FORBIDDEN)
    return user


AdminDep = Annotated[UserInfo, Depends(admin_user)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
