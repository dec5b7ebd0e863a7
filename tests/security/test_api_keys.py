"""API keys: shown once, stored hashed, scoped, revocable, expiring, never a way to mint keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, update

from tests.api.conftest import Account
from trading_backend.runtime import Runtime
from trading_backend.storage.models import ApiKeyRow, User

ORDER = {
    "symbol": "TCS",
    "exchange": "NSE",
    "side": "BUY",
    "order_type": "MARKET",
    "product_type": "DELIVERY",
    "quantity": 1,
}


async def _create(
    client: httpx.AsyncClient, who: Account, scopes: list[str], **extra: object
) -> dict[str, object]:
    response = await client.post(
        "/api/v1/auth/api-keys",
        json={"name": f"bot-{'-'.join(scopes)}", "scopes": scopes, **extra},
        headers=who.headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _key(created: dict[str, object]) -> dict[str, str]:
    return {"X-API-Key": str(created["key"])}


async def test_key_is_shown_once_and_stored_only_as_a_hash(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    created = await _create(client, alice, ["read"])
    key = str(created["key"])
    assert key.startswith(f"tb_{created['prefix']}_")

    listed = await client.get("/api/v1/auth/api-keys", headers=alice.headers)
    assert listed.status_code == 200
    assert [k["key_id"] for k in listed.json()] == [created["key_id"]]
    assert key not in listed.text and "key_hash" not in listed.text
    assert listed.json()[0]["last_used_at"] is None

    async with runtime.db() as session:
        row = (await session.scalars(select(ApiKeyRow))).one()
    assert key not in repr(vars(row)) and row.key_hash != key

    used = await client.get("/api/v1/brokers/orders", headers=_key(created))
    assert used.status_code == 200, used.text
    listed = await client.get("/api/v1/auth/api-keys", headers=alice.headers)
    assert listed.json()[0]["last_used_at"] is not None


async def test_scopes_decide_what_a_key_may_do(client: httpx.AsyncClient, alice: Account) -> None:
    reader = _key(await _create(client, alice, ["read"]))
    trader = _key(await _create(client, alice, ["trade"]))
    place = {"config_id": alice.config_id, "order": ORDER}

    assert (
        await client.get(
            "/api/v1/brokers/positions", params={"config_id": alice.config_id}, headers=reader
        )
    ).status_code == 200
    refused = await client.post("/api/v1/brokers/orders/place", json=place, headers=reader)
    assert refused.status_code == 403
    assert refused.json()["error_code"] == "INSUFFICIENT_SCOPE"

    placed = await client.post("/api/v1/brokers/orders/place", json=place, headers=trader)
    assert placed.status_code == 201, placed.text
    # trade includes read
    assert (await client.get("/api/v1/brokers/orders", headers=trader)).status_code == 200


async def test_admin_scope_needs_an_admin_and_still_needs_the_role(
    client: httpx.AsyncClient, alice: Account, bob: Account, runtime: Runtime
) -> None:
    # alice registered first: ADMIN; bob is a USER.
    refused = await client.post(
        "/api/v1/auth/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=bob.headers
    )
    assert refused.status_code == 403 and refused.json()["error_code"] == "FORBIDDEN"

    admin_key = _key(await _create(client, alice, ["admin"]))
    trade_key = _key(await _create(client, alice, ["trade"]))
    assert (await client.get("/api/v1/admin/users", headers=admin_key)).status_code == 200
    wrong_scope = await client.get("/api/v1/admin/users", headers=trade_key)
    assert wrong_scope.status_code == 403
    assert wrong_scope.json()["error_code"] == "INSUFFICIENT_SCOPE"

    async with runtime.db() as session, session.begin():
        await session.execute(update(User).where(User.id == alice.user_id).values(role="USER"))
    demoted = await client.get("/api/v1/admin/users", headers=admin_key)
    assert demoted.status_code == 403


async def test_revoked_expired_and_forged_keys_are_refused(
    client: httpx.AsyncClient, alice: Account, bob: Account, runtime: Runtime
) -> None:
    created = await _create(client, alice, ["read"])
    key = str(created["key"])

    # bob cannot see or revoke alice's key: it does not exist for him
    stolen = await client.delete(f"/api/v1/auth/api-keys/{created['key_id']}", headers=bob.headers)
    assert stolen.status_code == 404
    assert (await client.get("/api/v1/brokers/orders", headers=_key(created))).status_code == 200

    revoked = await client.delete(
        f"/api/v1/auth/api-keys/{created['key_id']}", headers=alice.headers
    )
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    after = await client.get("/api/v1/brokers/orders", headers={"X-API-Key": key})
    assert after.status_code == 401 and after.json()["error_code"] == "API_KEY_INVALID"

    expiring = await _create(
        client, alice, ["read"], expires_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()
    )
    assert (await client.get("/api/v1/brokers/orders", headers=_key(expiring))).status_code == 200
    async with runtime.db() as session, session.begin():
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == expiring["key_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    expired = await client.get("/api/v1/brokers/orders", headers=_key(expiring))
    assert expired.status_code == 401 and expired.json()["error_code"] == "API_KEY_INVALID"

    live = str((await _create(client, alice, ["read"]))["key"])
    prefix = live.split("_")[1]
    for forged in (f"tb_{prefix}_{'A' * 43}", "tb_nope", "x" * 300, ""):
        response = await client.get("/api/v1/brokers/orders", headers={"X-API-Key": forged})
        assert response.status_code == 401, forged
        assert response.json()["error_code"] in ("API_KEY_INVALID", "NOT_AUTHENTICATED")

    past = await client.post(
        "/api/v1/auth/api-keys",
        json={"name": "old", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"},
        headers=alice.headers,
    )
    assert past.status_code == 422 and past.json()["error_code"] == "VALIDATION_ERROR"


async def test_a_key_cannot_manage_keys(client: httpx.AsyncClient, alice: Account) -> None:
    created = await _create(client, alice, ["trade"])
    mint = await client.post(
        "/api/v1/auth/api-keys", json={"name": "more", "scopes": ["read"]}, headers=_key(created)
    )
    assert mint.status_code == 403
    revoke = await client.delete(
        f"/api/v1/auth/api-keys/{created['key_id']}", headers=_key(created)
    )
    assert revoke.status_code == 403
