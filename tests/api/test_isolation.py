"""Per-user isolation, checked on every route of the OpenAPI document: user B using user A's
ids gets 404 (never 200, never a 403 that would reveal the id exists), and A's data is
untouched afterwards. New routes are covered automatically."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx

from tests.api.conftest import Account
from trading_backend.runtime import Runtime

PUBLIC_OR_SELF = {
    ("/health", "get"),
    ("/api/v1/auth/register", "post"),
    ("/api/v1/auth/login", "post"),
    ("/api/v1/auth/me", "get"),
    ("/api/v1/brokers/admin/status", "get"),  # role-guarded; no ids
}
# Routes guarded by role (403 for a USER whatever the id): the permission matrix test in
# tests/security covers them.
ROLE_GUARDED_PREFIX = "/api/v1/admin/"
# Path parameters that name shared things (instruments), not something a user owns.
NOT_OWNED = {"symbol", "underlying"}
# Query parameters that name something a user owns (each checked with Alice's id).
OWNED_QUERY = {"config_id", "broker_config_id", "strategy_id"}


def _body(path: str, method: str, alice: Account) -> dict[str, Any] | None:
    if path.endswith("/orders/place"):
        order = {
            "symbol": "TCS",
            "exchange": "NSE",
            "side": "BUY",
            "order_type": "MARKET",
            "product_type": "DELIVERY",
            "quantity": 1,
        }
        return {"config_id": alice.config_id, "order": order}
    if path.endswith("/brokers/add"):
        return {"config_id": alice.config_id}
    if path == "/api/v1/risk/limits" and method == "put":
        return {"config_id": alice.config_id, "limits": {"max_order_value": 1}}
    if path == "/api/v1/risk/kill-switch":
        return {"scope": "account", "config_id": alice.config_id, "reason": "bob's"}
    if path == "/api/v1/strategies" and method == "post":
        return {"name": "bob's", "kind": "dca", "config_id": alice.config_id}
    if method == "patch":
        return {"name": "renamed by bob"}
    if method == "put":
        return {"quantity": 2}
    return None


async def test_other_users_ids_are_not_found_on_every_route(
    client: httpx.AsyncClient, alice: Account, bob: Account, runtime: Runtime
) -> None:
    # Alice owns a session, a resting order and a trade.
    await client.post(
        "/api/v1/brokers/add", json={"config_id": alice.config_id}, headers=alice.headers
    )
    ltp = runtime.market.quote("TCS", "NSE").ltp
    low = str((ltp * Decimal("0.96")).quantize(Decimal("0.1")))
    order = {
        "symbol": "TCS",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "LIMIT",
        "product_type": "DELIVERY",
        "quantity": 1,
        "price": low,
    }
    resting = await client.post(
        "/api/v1/brokers/orders/place",
        json={"config_id": alice.config_id, "order": order},
        headers=alice.headers,
    )
    order_id = resting.json()["order_id"]
    key = await client.post(
        "/api/v1/auth/api-keys",
        json={"name": "alice bot", "scopes": ["read"]},
        headers=alice.headers,
    )
    key_id = key.json()["key_id"]
    strategy = await client.post(
        "/api/v1/strategies",
        json={"name": "alice dca", "kind": "dca", "config_id": alice.config_id},
        headers=alice.headers,
    )
    assert strategy.status_code == 201, strategy.text
    strategy_id = strategy.json()["strategy_id"]
    backtest = await client.post(
        "/api/v1/backtests",
        json={
            "strategy": "sma_crossover",
            "params": {"symbol": "INFY", "fast_period": 5, "slow_period": 20},
            "symbols": ["NSE:INFY"],
            "timeframe": "1d",
            "start": "2024-01-01",
            "end": "2024-03-01",
            "data_source": "paper",
        },
        headers=alice.headers,
    )
    assert backtest.status_code == 202, backtest.text
    ids = {
        "config_id": alice.config_id,
        "order_id": order_id,
        "symbol": "TCS",
        "underlying": "NIFTY",
        "key_id": key_id,
        "strategy_id": strategy_id,
        "backtest_id": backtest.json()["backtest_id"],
    }

    schema = (await client.get("/openapi.json")).json()
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if (path, method) in PUBLIC_OR_SELF or path.startswith(ROLE_GUARDED_PREFIX):
                continue
            params = {p["name"]: p for p in operation.get("parameters", [])}
            body = _body(path, method, alice)
            uses_id = (
                bool(set(re.findall(r"\{(\w+)\}", path)) - NOT_OWNED)
                or bool(OWNED_QUERY & set(params))
                or (body is not None and "config_id" in body)
            )
            if not uses_id:
                continue
            unknown = set(re.findall(r"\{(\w+)\}", path)) - set(ids) - NOT_OWNED
            assert not unknown, f"give the isolation walk an id of Alice's for {unknown} ({path})"
            url = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
            query = {
                name: alice.config_id if "config" in name else strategy_id
                for name in OWNED_QUERY & set(params)
            } or None
            response = await client.request(
                method.upper(), url, params=query, json=body, headers=bob.headers
            )
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.json()["error_code"].endswith("NOT_FOUND"), response.text
            checked += 1
    assert checked >= 10, checked

    # Nothing of Alice's changed.
    mine = await client.get(f"/api/v1/brokers/orders/{order_id}", headers=alice.headers)
    assert mine.status_code == 200 and mine.json()["status"] == "OPEN"
    assert len((await client.get("/api/v1/brokers/sessions", headers=alice.headers)).json()) == 1
    kept = await client.get(f"/api/v1/strategies/{strategy_id}", headers=alice.headers)
    assert kept.status_code == 200, kept.text
    assert kept.json()["name"] == "alice dca" and kept.json()["status"] == "STOPPED"
    assert len((await client.get("/api/v1/brokers/configs", headers=alice.headers)).json()) == 1
    risk = await client.get(
        "/api/v1/risk/limits", params={"config_id": alice.config_id}, headers=alice.headers
    )
    assert risk.json()["own"] is None and risk.json()["effective"]["max_order_value"] > 1
    assert runtime.risk_engine.effective_state(alice.user_id, alice.config_id)[0] == "ACTIVE"
    keys = (await client.get("/api/v1/auth/api-keys", headers=alice.headers)).json()
    assert [k["key_id"] for k in keys if k["active"]] == [key_id]
    # And Bob's own listings show nothing of Alice's.
    assert (await client.get("/api/v1/auth/api-keys", headers=bob.headers)).json() == []
    assert (await client.get("/api/v1/brokers/orders", headers=bob.headers)).json() == []
    assert (await client.get("/api/v1/brokers/trades", headers=bob.headers)).json() == []
    assert [
        c["config_id"]
        for c in (await client.get("/api/v1/brokers/configs", headers=bob.headers)).json()
    ] == [bob.config_id]
