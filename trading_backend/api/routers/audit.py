"""The audit log, read-only: users see their own rows, administrators everybody's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from trading_backend.accounts.audit import list_rows
from trading_backend.api.deps import AuthDep, RuntimeDep, admin_user
from trading_backend.domain import DomainError

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

MAX_ID = 2**63 - 1  # BIGINT (and SQLite INTEGER) range
NAME_PATTERN = r"^[A-Za-z0-9_.:@-]+$"  # user ids and action names


class AuditRowOut(BaseModel):
    id: int
    user_id: str | None
    action: str
    target: str | None
    data: dict[str, Any]
    ip: str | None
    correlation_id: str | None
    created_at: datetime
    hash: str | None


async def _sees_everyone(auth: AuthDep, runtime: RuntimeDep) -> bool:
    """Reading everybody's rows takes exactly what the admin routes take (role, the
    ``admin`` scope for an API key, 2FA when required); otherwise own rows only."""
    try:
        await admin_user(auth, runtime)
    except DomainError:
        return False
    return True


@router.get("", response_model=list[AuditRowOut])
async def list_audit(
    auth: AuthDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500, description="rows per page")] = 100,
    before_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="cursor: only rows with a smaller id")
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, pattern=NAME_PATTERN, description="only this action"),
    ] = None,
    user_id: Annotated[
        str | None,
        Query(max_length=64, pattern=NAME_PATTERN, description="only this user (administrators)"),
    ] = None,
) -> list[AuditRowOut]:
    """Audit rows, newest first. Page with ``before_id`` = the smallest id received.
    Non-administrators always get their own rows, whatever ``user_id`` says."""
    if not await _sees_everyone(auth, runtime):
        user_id = auth.user.id
    rows = await list_rows(
        runtime.db, user_id=user_id, action=action, before_id=before_id, limit=limit
    )
    return [
        AuditRowOut(
            id=row.id,
            user_id=row.user_id,
            action=row.action,
            target=row.target,
            data=row.data or {},
            ip=row.ip,
            correlation_id=row.correlation_id,
            created_at=row.created_at,
            hash=row.hash,
        )
        for row in rows
    ]
