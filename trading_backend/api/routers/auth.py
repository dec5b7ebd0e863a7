"""Registration and login (minimal; the security issue adds refresh tokens, 2FA, API keys)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from trading_backend.api.deps import RuntimeDep, UserDep, client_ip
from trading_backend.api.schemas import Credentials, RegisterOut, TokenOut, UserOut

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/register", status_code=201, response_model=RegisterOut)
async def register(body: Credentials, runtime: RuntimeDep, request: Request) -> RegisterOut:
    """Create an account. The first account of a deployment is an ADMIN."""
    user = await runtime.accounts.create_user(body.username, body.password, ip=client_ip(request))
    return RegisterOut(
        access_token=runtime.tokens.issue(user.id, user.role),
        expires_in=runtime.tokens.minutes * 60,
        user_id=user.id,
        username=user.username,
        role=user.role,
    )


@router.post("/login", response_model=TokenOut)
async def login(body: Credentials, runtime: RuntimeDep, request: Request) -> TokenOut:
    user = await runtime.accounts.authenticate(body.username, body.password, ip=client_ip(request))
    return TokenOut(
        access_token=runtime.tokens.issue(user.id, user.role),
        expires_in=runtime.tokens.minutes * 60,
        user_id=user.id,
        role=user.role,
    )


@router.get("/me", response_model=UserOut)
async def me(user: UserDep) -> UserOut:
    return UserOut(user_id=user.id, username=user.username, role=user.role)
