"""Helpers for the security tests: a client on a runtime with chosen settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import make_settings
from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime

ClientFactory = Callable[..., Any]
PASSWORD = "s3cret-pass"


def client_factory(tmp_path: Path, database_url: str) -> ClientFactory:
    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        runtime = Runtime(make_settings(tmp_path, database_url, **overrides))
        await runtime.start(worker=True, market=False, health_monitor=False)
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client, runtime
        finally:
            await runtime.stop()

    return factory


async def register(client: httpx.AsyncClient, username: str, **headers: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/register", json={"username": username, "password": PASSWORD}, headers=headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
