"""The REST API end to end: auth, configs, sessions, orders, book, positions, balance."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tests.api.conftest import Account
from trading_backend.risk import RiskLimits
from trading_backend.runtime import Runtime


def market(symbol: str = "TCS", **kw: object) -> dict[str, object]:
    order: dict[str, object] = {
        "symbol": symbol,
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "DELIVERY",
        "quantity": 1,
    }
    order.update(kw)
    return order


async def test_login_returns_bearer_token(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"username": "alice", "password": "s3cret-pass"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["access_token"]
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json() == {"user_id": alice.user_id, "username": "alice", "role": "ADMIN"}


async def test_wrong_password_and_missing_token(client: httpx.AsyncClient, alice: Account) -> None:
    bad = await client.post(
        "/api/v1/auth/login", json={"username": "alice", "password": "nope-nope"}
    )
    assert bad.status_code == 401 and bad.json()["error_code"] == "NOT_AUTHENTICATED"
    ghost = await client.post(
        "/api/v1/auth/login", json={"username": "ghost", "password": "nope-nope"}
    )
    assert ghost.status_code == 401 and ghost.json()["message"] == bad.json()["message"]
    anonymous = await client.get("/api/v1/brokers/orders")
    assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "NOT_AUTHENTICATED"
    forged = await client.get(
        "/api/v1/brokers/orders", headers={"Authorization": alice.headers["Authorization"] + "x"}
    )
    assert forged.status_code == 401


async def test_first_user_is_admin_and_others_are_not(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    assert (
        await client.get("/api/v1/brokers/admin/status", headers=alice.headers)
    ).status_code == 200
    denied = await client.get("/api/v1/brokers/admin/status", headers=bob.headers)
    assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"


async def test_full_trading_flow(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    h = alice.headers
    session = await client.post(
        "/api/v1/brokers/add", json={"config_id": alice.config_id}, headers=h
    )
    assert session.status_code == 200 and session.json()["health_status"] == "healthy"
    sessions = await client.get("/api/v1/brokers/sessions", headers=h)
    assert [s["config_id"] for s in sessions.json()] == [alice.config_id]

    placed = await client.post(
        "/api/v1/brokers/orders/place",
        json={"config_id": alice.config_id, "order": market(quantity=2)},
        headers=h,
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "FILLED" and placed.json()["broker_order_id"]
    assert placed.headers["X-Correlation-ID"]

    ltp = runtime.market.quote("INFY", "NSE").ltp
    limit = str((ltp * Decimal("0.95")).quantize(Decimal("0.1")))
    resting = await client.post(
        "/api/v1/brokers/orders/place",
        json={
            "config_id": alice.config_id,
            "order": market("INFY", order_type="LIMIT", price=limit),
        },
        headers=h,
    )
    assert resting.status_code == 201 and resting.json()["status"] == "OPEN"
    order_id = resting.json()["order_id"]
    modified = await client.put(
        f"/api/v1/brokers/orders/{order_id}", json={"quantity": 3}, headers=h
    )
    assert modified.status_code == 200 and modified.json()["quantity"] == 3
    detail = await client.get(f"/api/v1/brokers/orders/{order_id}", headers=h)
    assert [e["event_type"] for e in detail.json()["events"]][:2] == ["ACCEPTED", "SUBMITTED"]
    assert "MODIFIED" in [e["event_type"] for e in detail.json()["events"]]
    cancelled = await client.delete(f"/api/v1/brokers/orders/{order_id}", headers=h)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    again = await client.delete(f"/api/v1/brokers/orders/{order_id}", headers=h)
    assert again.status_code == 409 and again.json()["error_code"] == "ORDER_NOT_CANCELLABLE"

    book = await client.get("/api/v1/brokers/orders", headers=h)
    assert {o["status"] for o in book.json()} == {"FILLED", "CANCELLED"}
    trades = await client.get("/api/v1/brokers/trades", headers=h)
    assert sum(t["quantity"] for t in trades.json()) == 2

    positions = await client.get(
        f"/api/v1/brokers/positions?config_id={alice.config_id}", headers=h
    )
    assert positions.status_code == 200
    [tcs] = positions.json()["positions"]
    assert tcs["symbol"] == "TCS" and tcs["quantity"] == 2 and "pnl" in tcs
    await runtime.market.set_price("TCS", "NSE", Decimal(str(tcs["average_price"])) + 10)
    positions = await client.get(
        f"/api/v1/brokers/positions?config_id={alice.config_id}", headers=h
    )
    [tcs] = positions.json()["positions"]
    assert tcs["unrealised_pnl"] == 20.0  # live P&L from the latest price

    balance = await client.get(f"/api/v1/brokers/balance?config_id={alice.config_id}", headers=h)
    assert balance.status_code == 200
    assert {"available_cash", "buying_power", "used_margin", "total_balance"} <= set(balance.json())

    quote = await client.get(
        f"/api/v1/brokers/market-data/TCS?config_id={alice.config_id}", headers=h
    )
    assert quote.status_code == 200 and quote.json()["ltp"] > 0 and "change" in quote.json()

    removed = await client.delete(f"/api/v1/brokers/remove/{alice.config_id}", headers=h)
    assert removed.status_code == 200
    assert (await client.get("/api/v1/brokers/sessions", headers=h)).json() == []


async def test_idempotent_placement_returns_first_order(
    client: httpx.AsyncClient, alice: Account
) -> None:
    body = {"config_id": alice.config_id, "order": market(client_order_id="strategy-42")}
    first = await client.post("/api/v1/brokers/orders/place", json=body, headers=alice.headers)
    second = await client.post("/api/v1/brokers/orders/place", json=body, headers=alice.headers)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["order_id"] == second.json()["order_id"]
    book = await client.get("/api/v1/brokers/orders", headers=alice.headers)
    assert len(book.json()) == 1


async def test_broker_rejection_is_a_4xx_with_the_order(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    # Limits off for Alice, and no session yet (so the engine knows no funds): the order
    # reaches the broker, which refuses it.
    runtime.risk_engine.set_limits(
        alice.user_id,
        None,
        RiskLimits(max_order_value=None, max_symbol_exposure=None, max_gross_exposure=None),
    )
    response = await client.post(
        "/api/v1/brokers/orders/place",
        json={"config_id": alice.config_id, "order": market(quantity=5_000)},
        headers=alice.headers,
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INSUFFICIENT_FUNDS"
    assert body["order"]["status"] == "REJECTED"
    unknown = await client.post(
        "/api/v1/brokers/orders/place",
        json={"config_id": alice.config_id, "order": market("NOSUCHCO")},
        headers=alice.headers,
    )
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "INSTRUMENT_NOT_FOUND"
    assert unknown.json()["details"]["rule"] == "instrument_exists_and_tradable"


async def test_bad_input_is_a_clear_4xx(client: httpx.AsyncClient, alice: Account) -> None:
    h = alice.headers
    cases = [
        {"config_id": alice.config_id, "order": market(quantity=0)},
        {"config_id": alice.config_id, "order": market(quantity="ten")},
        {"config_id": alice.config_id, "order": market(side="HOLD")},
        {"config_id": alice.config_id, "order": market(order_type="LIMIT")},
        {"config_id": alice.config_id, "order": market(price=-5)},
        {
            "config_id": alice.config_id,
            "order": market(order_type="SL", price=10, trigger_price=11),
        },
        {"config_id": alice.config_id, "order": {**market(), "unexpected": 1}},
        {"order": market()},
        {},
    ]
    for body in cases:
        response = await client.post("/api/v1/brokers/orders/place", json=body, headers=h)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error_code"] in ("VALIDATION_ERROR", "INVALID_ORDER"), response.text
    raw = await client.post(
        "/api/v1/brokers/orders/place",
        content=b"{not json",
        headers={**h, "Content-Type": "application/json"},
    )
    assert raw.status_code == 422 and raw.json()["error_code"] == "VALIDATION_ERROR"
    missing = await client.get("/api/v1/brokers/positions", headers=h)
    assert missing.status_code == 422
    assert (await client.get("/api/v1/brokers/orders/nope", headers=h)).status_code == 404
    dup = await client.post(
        "/api/v1/auth/register", json={"username": "alice", "password": "another-pass"}
    )
    assert dup.status_code == 409 and dup.json()["error_code"] == "CONFLICT"
    short = await client.post(
        "/api/v1/auth/register", json={"username": "carol", "password": "short"}
    )
    assert short.status_code == 422
    unsupported = await client.post(
        "/api/v1/brokers/configs", json={"broker": "nobroker", "name": "x"}, headers=h
    )
    assert (
        unsupported.status_code == 422
        and unsupported.json()["error_code"] == "BROKER_NOT_SUPPORTED"
    )


async def test_config_credentials_are_masked(client: httpx.AsyncClient, alice: Account) -> None:
    created = await client.post(
        "/api/v1/brokers/configs",
        json={
            "broker": "paper",
            "name": "with creds",
            "credentials": {"api_key": "SUPERSECRET123"},
        },
        headers=alice.headers,
    )
    assert created.status_code == 201
    assert "SUPERSECRET123" not in created.text
    listing = await client.get("/api/v1/brokers/configs", headers=alice.headers)
    assert "SUPERSECRET123" not in listing.text
    assert listing.json()[1]["credentials"]["api_key"] == "****T123"


async def test_health_reports_components(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["database"]["ok"] and body["queue"]["ok"]
    assert "broker_sessions" in body


async def test_bulk_orders_can_be_queued_low(client: httpx.AsyncClient, alice: Account) -> None:
    body = {"config_id": alice.config_id, "order": market(), "priority": "LOW"}
    response = await client.post("/api/v1/brokers/orders/place", json=body, headers=alice.headers)
    assert response.status_code == 201 and response.json()["status"] == "FILLED"
    detail = await client.get(
        f"/api/v1/brokers/orders/{response.json()['order_id']}", headers=alice.headers
    )
    assert detail.json()["events"][0]["data"]["priority"] == "LOW"
    high = {**body, "priority": "HIGH"}
    refused = await client.post("/api/v1/brokers/orders/place", json=high, headers=alice.headers)
    assert refused.status_code == 422


async def test_config_with_working_orders_cannot_be_deleted(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    ltp = runtime.market.quote("TCS", "NSE").ltp
    low = str((ltp * Decimal("0.96")).quantize(Decimal("0.1")))
    body = {"config_id": alice.config_id, "order": market(order_type="LIMIT", price=low)}
    resting = await client.post("/api/v1/brokers/orders/place", json=body, headers=alice.headers)
    refused = await client.delete(
        f"/api/v1/brokers/configs/{alice.config_id}", headers=alice.headers
    )
    assert refused.status_code == 409 and refused.json()["error_code"] == "CONFLICT"
    await client.delete(
        f"/api/v1/brokers/orders/{resting.json()['order_id']}", headers=alice.headers
    )
    deleted = await client.delete(
        f"/api/v1/brokers/configs/{alice.config_id}", headers=alice.headers
    )
    assert deleted.status_code == 200
    assert (await client.get("/api/v1/brokers/configs", headers=alice.headers)).json() == []
    gone = await client.get(
        f"/api/v1/brokers/balance?config_id={alice.config_id}", headers=alice.headers
    )
    assert gone.status_code == 404
    # history stays readable
    assert len((await client.get("/api/v1/brokers/orders", headers=alice.headers)).json()) == 1
