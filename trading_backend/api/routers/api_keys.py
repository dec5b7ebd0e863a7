"""API keys: create (the key is shown once), list, revoke.

Keys are managed with a login session only: a leaked key must not be able to mint
more keys or outlive its own revocation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.accounts.api_keys import ApiKeyInfo
from trading_backend.api.deps import AuthContext, AuthDep, RuntimeDep, client_ip
from trading_backend.domain import DomainError, ErrorCode

router = APIRouter(prefix="/api/v1/auth/api-keys", tags=["api-keys"])

Scope = Literal["read", "trade", "admin"]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(
        default_factory=lambda: ["read"],
        min_length=1,
        max_length=3,
        description="read < trade < admin",
    )
    expires_at: datetime | None = Field(default=None, description="optional expiry (UTC if naive)")


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool


class CreatedApiKeyOut(ApiKeyOut):
    key: str = Field(description="the whole key: shown only in this response")


def _out(info: ApiKeyInfo) -> dict[str, object]:
    return {
        "key_id": info.id,
        "name": info.name,
        "prefix": info.prefix,
        "scopes": info.scopes,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "last_used_at": info.last_used_at,
        "revoked_at": info.revoked_at,
        "active": info.active,
    }


def _require_login_session(auth: AuthContext) -> None:
    if auth.via != "jwt":
        raise DomainError(
            "API keys are managed with a login session, not an API key", ErrorCode.FORBIDDEN
        )


@router.post("", status_code=201, response_model=CreatedApiKeyOut)
async def create_api_key(
    body: ApiKeyIn, auth: AuthDep, runtime: RuntimeDep, request: Request
) -> dict[str, object]:
    _require_login_session(auth)
    created = await runtime.api_keys.create(
        auth.user, body.name, list(body.scopes), expires_at=body.expires_at, ip=client_ip(request)
    )
    return {**_out(created.info), "key": created.key}


@router.get("", response_model=list[ApiKeyOut])
async def list_api_keys(auth: AuthDep, runtime: RuntimeDep) -> list[dict[str, object]]:
    return [_out(info) for info in await runtime.api_keys.list_keys(auth.user.id)]


@router.delete("/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(
    key_id: str, auth: AuthDep, runtime: RuntimeDep, request: Request
) -> dict[str, object]:
    _require_login_session(auth)
    return _out(await runtime.api_keys.revoke(auth.user.id, key_id, ip=client_ip(request)))
