"""Roles (the permission matrix) and rotation of the encryption keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.conftest import make_settings
from tests.security.support import PASSWORD, ClientFactory, bearer, register
from trading_backend.accounts.key_rotation import rotate_secrets
from trading_backend.accounts.vault import Vault
from trading_backend.domain import DomainError
from trading_backend.runtime import Runtime
from trading_backend.storage.models import BrokerConfig, User


async def login(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


async def test_permission_matrix(make_client: ClientFactory) -> None:
    async with make_client() as (client, runtime):
        root = await register(client, "root")  # first user: ADMIN
        await register(client, "alice")
        await register(client, "bob")
        admin = bearer(root["access_token"])
        alice = await login(client, "alice")
        users = {
            u["username"]: u
            for u in (await client.get("/api/v1/admin/users", headers=admin)).json()
        }
        assert set(users) == {"root", "alice", "bob"}
        assert all("password" not in str(u) for u in users.values())
        assert (await client.get("/api/v1/admin/users", headers=alice)).status_code == 403

        # ADMIN manages USERs but not administrators.
        disabled = await client.patch(
            f"/api/v1/admin/users/{users['bob']['user_id']}",
            json={"is_active": False},
            headers=admin,
        )
        assert disabled.status_code == 200 and disabled.json()["is_active"] is False
        assert (
            await client.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD})
        ).status_code == 401
        promote = await client.patch(
            f"/api/v1/admin/users/{users['alice']['user_id']}",
            json={"role": "ADMIN"},
            headers=admin,
        )
        assert promote.status_code == 403
        make_admin = await client.post(
            "/api/v1/admin/users",
            json={"username": "eve", "password": PASSWORD, "role": "ADMIN"},
            headers=admin,
        )
        assert make_admin.status_code == 403
        made_user = await client.post(
            "/api/v1/admin/users", json={"username": "carl", "password": PASSWORD}, headers=admin
        )
        assert made_user.status_code == 201 and made_user.json()["role"] == "USER"

        # Only a SUPER_ADMIN manages admins; the machine's operator makes the first one.
        async with runtime.db() as session, session.begin():
            row = await session.get(User, users["root"]["user_id"])
            assert row is not None
            row.role = "SUPER_ADMIN"
        superuser = await login(client, "root")
        promote = await client.patch(
            f"/api/v1/admin/users/{users['alice']['user_id']}",
            json={"role": "ADMIN"},
            headers=superuser,
        )
        assert promote.status_code == 200 and promote.json()["role"] == "ADMIN"
        assert (
            await client.get("/api/v1/auth/me", headers=alice)
        ).status_code == 401  # sessions ended
        self_demote = await client.patch(
            f"/api/v1/admin/users/{users['root']['user_id']}",
            json={"role": "USER"},
            headers=superuser,
        )
        assert self_demote.status_code == 409
        missing = await client.patch(
            "/api/v1/admin/users/nobody", json={"is_active": False}, headers=superuser
        )
        assert missing.status_code == 404


async def test_risk_permission_matrix(make_client: ClientFactory) -> None:
    """The risk rows of the matrix: users tighten their own limits and hit their own kill
    switches; administrators set USERs' ceilings and reset; only a SUPER_ADMIN stops or
    resumes everyone. An API key needs the admin scope for what needs the role."""
    async with make_client() as (client, runtime):
        root = await register(client, "root")  # first user: ADMIN
        alice = await register(client, "alice")
        admin, user = bearer(root["access_token"]), bearer(alice["access_token"])
        ceiling = f"/api/v1/admin/risk/limits/{alice['user_id']}"
        reset_alice = {"scope": f"user:{alice['user_id']}"}

        async def status(method: str, url: str, headers: dict[str, str], body: Any = None) -> int:
            response = await client.request(method, url, json=body, headers=headers)
            return response.status_code

        assert await status("PUT", "/api/v1/risk/limits", user, {"limits": {}}) == 200
        assert await status("POST", "/api/v1/risk/kill-switch", user, {"scope": "user"}) == 200
        assert await status("GET", ceiling, user) == 403
        assert await status("POST", "/api/v1/risk/reset", user, reset_alice) == 403
        assert await status("POST", "/api/v1/risk/kill-switch", user, {"scope": "global"}) == 403

        assert await status("PUT", ceiling, admin, {"limits": {"max_order_value": 1000}}) == 200
        own_ceiling = f"/api/v1/admin/risk/limits/{root['user_id']}"
        assert await status("GET", own_ceiling, admin) == 403  # administrators: SUPER_ADMIN
        assert await status("POST", "/api/v1/risk/kill-switch", admin, {"scope": "global"}) == 403
        assert await status("POST", "/api/v1/risk/reset", admin, {"scope": "global"}) == 403
        key = await client.post(
            "/api/v1/auth/api-keys", json={"name": "ops", "scopes": ["trade"]}, headers=admin
        )
        trade_key = {"X-API-Key": key.json()["key"]}
        scoped = await client.post("/api/v1/risk/reset", json=reset_alice, headers=trade_key)
        assert scoped.status_code == 403 and scoped.json()["error_code"] == "INSUFFICIENT_SCOPE"
        assert await status("POST", "/api/v1/risk/reset", admin, reset_alice) == 200

        async with runtime.db() as session, session.begin():
            row = await session.get(User, root["user_id"])
            assert row is not None
            row.role = "SUPER_ADMIN"
        assert await status("GET", own_ceiling, admin) == 200
        assert await status("POST", "/api/v1/risk/kill-switch", admin, {"scope": "global"}) == 200
        assert await status("POST", "/api/v1/risk/reset", admin, {"scope": "global"}) == 200


async def test_admins_can_be_required_to_use_two_factor(make_client: ClientFactory) -> None:
    async with make_client(require_admin_2fa=True) as (client, _):
        root = await register(client, "root")
        refused = await client.get("/api/v1/admin/users", headers=bearer(root["access_token"]))
        assert refused.status_code == 403 and "two-factor" in refused.json()["message"]
        reset = await client.post(
            "/api/v1/risk/reset",
            json={"scope": f"user:{root['user_id']}"},
            headers=bearer(root["access_token"]),
        )
        assert reset.status_code == 403 and "two-factor" in reset.json()["message"]


async def test_rotation_re_encrypts_every_secret_under_the_newest_key(
    tmp_path: Path, database_url: str
) -> None:
    old_key = Fernet.generate_key().decode()
    first = Runtime(make_settings(tmp_path, database_url, master_encryption_key=old_key))
    await first.start(worker=False, market=False, health_monitor=False)
    user = await first.accounts.create_user("alice", PASSWORD)
    for n in range(5):
        await first.accounts.create_config(
            user.id, "paper", f"p{n}", credentials={"api_key": f"SECRET-{n}"}
        )
    await first.stop()

    new_key = Fernet.generate_key().decode()
    second = Runtime(
        make_settings(tmp_path, database_url, master_encryption_key=f"{new_key},{old_key}")
    )
    await second.start(worker=False, market=False, health_monitor=False)
    seen: list[int] = []
    report = await rotate_secrets(second.db, second.vault, batch=2, progress=seen.append)
    assert report.rotated["broker_configs"] == 5 and sum(seen) == 5
    again = await rotate_secrets(second.db, second.vault, batch=2)  # rerun is harmless
    assert again.rotated["broker_configs"] == 5
    only_new, only_old = Vault([new_key]), Vault([old_key])
    async with second.db() as session:
        rows = (await session.scalars(select(BrokerConfig))).all()
    values: list[Any] = []
    for row in rows:
        values.append(only_new.decrypt(row.credentials_encrypted)["api_key"])
        with pytest.raises(DomainError):
            only_old.decrypt(row.credentials_encrypted)
    assert sorted(values) == [f"SECRET-{n}" for n in range(5)]
    await second.stop()
