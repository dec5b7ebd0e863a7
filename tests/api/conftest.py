from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime


@dataclass
class Account:
    user_id: str
    username: str
    headers: dict[str, str]
    config_id: str


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def register(client: httpx.AsyncClient, username: str) -> Account:
    response = await client.post(
        "/api/v1/auth/register", json={"username": username, "password": "s3cret-pass"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    created = await client.post(
        "/api/v1/brokers/configs",
        json={"broker": "paper", "name": f"{username} paper"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    return Account(body["user_id"], username, headers, created.json()["config_id"])


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> Account:
    return await register(client, "alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await register(client, "bob")
