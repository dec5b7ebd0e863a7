"""User administration.

Permission matrix (also in the README):

| action                                   | USER | ADMIN | SUPER_ADMIN |
|------------------------------------------|------|-------|-------------|
| own configs, orders, positions, keys     | yes  | yes   | yes         |
| system status, user list, audit (all)    | no   | yes   | yes         |
| create USERs, enable/disable USERs       | no   | yes   | yes         |
| grant/revoke ADMIN, manage admins        | no   | no    | yes         |
| own risk limits, own kill switches       | yes  | yes   | yes         |
| USERs' risk ceilings, reset user/account | no   | yes   | yes         |
| global kill switch and reset             | no   | no    | yes         |
| read another user's broker secrets       | no   | no    | no          |
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from trading_backend.api.deps import AdminDep, RuntimeDep, client_ip
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.models import User
from trading_backend.storage.repositories import add_audit

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

Role = Literal["USER", "ADMIN", "SUPER_ADMIN"]


class AdminUserOut(BaseModel):
    user_id: str
    username: str
    role: str
    is_active: bool
    totp_enabled: bool
    created_at: datetime


class AdminUserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    role: Role = "USER"


class AdminUserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    is_active: bool | None = None


def _out(user: User) -> AdminUserOut:
    return AdminUserOut(
        user_id=user.id,
        username=user.username,
        role=user.role,
        is_active=user.is_active,
        totp_enabled=user.totp_enabled,
        created_at=user.created_at,
    )


@router.get("/users", response_model=list[AdminUserOut])
async def list_users(_: AdminDep, runtime: RuntimeDep) -> list[AdminUserOut]:
    """Every user (no secrets: no password hashes, no broker credentials)."""
    async with runtime.db() as session:
        users = (await session.scalars(select(User).order_by(User.created_at))).all()
        return [_out(u) for u in users]


@router.post("/users", status_code=201, response_model=AdminUserOut)
async def create_user(
    body: AdminUserIn, admin: AdminDep, runtime: RuntimeDep, request: Request
) -> AdminUserOut:
    if body.role != "USER" and admin.role != "SUPER_ADMIN":
        raise DomainError("only a SUPER_ADMIN creates administrators", ErrorCode.FORBIDDEN)
    info = await runtime.accounts.create_user(
        body.username, body.password, role=body.role, ip=client_ip(request)
    )
    async with runtime.db() as session:
        user = await session.get(User, info.id)
        assert user is not None
        return _out(user)


@router.patch("/users/{user_id}", response_model=AdminUserOut)
async def update_user(
    user_id: str, body: AdminUserPatch, admin: AdminDep, runtime: RuntimeDep, request: Request
) -> AdminUserOut:
    """Change a user's role or disable/enable them. Disabling ends every session."""
    async with runtime.db() as session, session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise DomainError(f"user {user_id!r} not found", ErrorCode.USER_NOT_FOUND)
        touches_admin = user.role != "USER" or (body.role not in (None, "USER"))
        if touches_admin and admin.role != "SUPER_ADMIN":
            raise DomainError("only a SUPER_ADMIN manages administrators", ErrorCode.FORBIDDEN)
        if user.id == admin.id and (body.is_active is False or body.role not in (None, admin.role)):
            raise DomainError("you cannot demote or disable yourself", ErrorCode.CONFLICT)
        if user.role == "SUPER_ADMIN" and body.role not in (None, "SUPER_ADMIN"):
            remaining = await session.scalar(
                select(func.count()).select_from(User).where(User.role == "SUPER_ADMIN")
            )
            if (remaining or 0) <= 1:
                raise DomainError("the last SUPER_ADMIN cannot be demoted", ErrorCode.CONFLICT)
        changes: dict[str, object] = {}
        if body.role is not None and body.role != user.role:
            changes["role"] = (user.role, body.role)
            user.role = body.role
        if body.is_active is not None and body.is_active != user.is_active:
            changes["is_active"] = (user.is_active, body.is_active)
            user.is_active = body.is_active
        if changes:
            await add_audit(
                session,
                "admin.user_changed",
                user_id=admin.id,
                target=user.id,
                data={k: list(v) for k, v in changes.items()},
                ip=client_ip(request),
            )
        result = _out(user)
    if "is_active" in changes or "role" in changes:
        await runtime.auth_sessions.revoke_all(user_id, "changed_by_admin")
    return result
