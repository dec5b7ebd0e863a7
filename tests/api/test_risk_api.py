"""The risk API over HTTP: own limits (tightening only), administrators' ceilings, status
with usage, kill switches and resets, roles, API-key scopes and per-user isolation. Runs
on SQLite and, with TEST_DATABASE_URL, on PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.api.conftest import Account, register
from trading_backend.api.routers.risk import LimitValuesIn, LimitValuesOut
from trading_backend.risk import RiskLimits
from trading_backend.runtime import Runtime
from trading_backend.storage.models import QueueEntryRow, User

LIMITS = "/api/v1/risk/limits"
STATUS = "/api/v1/risk/status"
KILL = "/api/v1/risk/kill-switch"
RESET = "/api/v1/risk/reset"


# The first user of a deployment is an ADMIN: register one first, so Alice and Bob are
# plain USERs here (these override the fixtures of tests/api/conftest.py).
@pytest.fixture
async def root(client: httpx.AsyncClient) -> Account:
    return await register(client, "root")


@pytest.fixture
async def alice(client: httpx.AsyncClient, root: Account) -> Account:
    return await register(client, "alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient, root: Account) -> Account:
    return await register(client, "bob")


async def promote(runtime: Runtime, who: Account, role: str) -> None:
    """What the machine's operator does (`trading-backend user set-role`); the role is
    read from the database on every request."""
    async with runtime.db() as session, session.begin():
        row = await session.get(User, who.user_id)
        assert row is not None
        row.role = role


def price(runtime: Runtime, symbol: str, factor: str) -> Decimal:
    """The last price times ``factor`` on the 0.1 grid (a multiple of every tick)."""
    return (runtime.market.quote(symbol, "NSE").ltp * Decimal(factor)).quantize(Decimal("0.1"))


async def place(
    client: httpx.AsyncClient, who: Account, *, config_id: str | None = None, **order: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "symbol": "TCS",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "DELIVERY",
        "quantity": 1,
    }
    body.update({k: str(v) if isinstance(v, Decimal) else v for k, v in order.items()})
    return await client.post(
        "/api/v1/brokers/orders/place",
        json={"config_id": config_id or who.config_id, "order": body},
        headers=who.headers,
    )


async def resting(client: httpx.AsyncClient, runtime: Runtime, who: Account) -> str:
    """A LIMIT buy below the market (inside the price band): it stays OPEN."""
    placed = await place(
        client, who, order_type="LIMIT", price=price(runtime, "TCS", "0.97"), quantity=1
    )
    assert placed.status_code == 201 and placed.json()["status"] == "OPEN", placed.text
    return str(placed.json()["order_id"])


async def processed(runtime: Runtime, order_id: str) -> None:
    """Wait (on the queue's completion futures, no sleeping) until the worker has carried
    out every queue entry of the order, e.g. the cancel a kill switch asked for."""
    async with runtime.db() as session:
        entries = (
            await session.scalars(
                select(QueueEntryRow.id).where(QueueEntryRow.order_id == order_id)
            )
        ).all()
    for entry_id in entries:
        assert await runtime.queue.wait_processed(entry_id, 10) is not None


async def order_status(client: httpx.AsyncClient, who: Account, order_id: str) -> str:
    response = await client.get(f"/api/v1/brokers/orders/{order_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def rejected(response: httpx.Response, rule: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_code"] == "RISK_REJECTED", body
    details: dict[str, Any] = body["details"]
    assert details["rule"] == rule, details
    return details


def test_limit_models_cover_every_limit() -> None:
    assert set(LimitValuesIn.model_fields) == set(RiskLimits.KINDS)
    assert set(LimitValuesOut.model_fields) == set(RiskLimits.KINDS)


async def test_own_limits_only_tighten_and_bind_orders(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    h = alice.headers
    start = await client.get(LIMITS, headers=h)
    assert start.status_code == 200, start.text
    body = start.json()
    assert body["scope"] == f"user:{alice.user_id}" and body["config_id"] is None
    assert body["ceiling_source"] == "defaults" and body["own"] is None
    assert body["tightened"] == []
    assert body["effective"]["max_order_value"] == 1_000_000 == body["ceiling"]["max_order_value"]

    tight = await client.put(LIMITS, json={"limits": {"max_order_value": "5000"}}, headers=h)
    assert tight.status_code == 200, tight.text
    assert tight.json()["effective"]["max_order_value"] == 5000
    assert tight.json()["ceiling"]["max_order_value"] == 1_000_000
    assert tight.json()["tightened"] == ["max_order_value"]
    assert (await client.get(LIMITS, headers=h)).json() == tight.json()

    # 2 x ~3,150 is over 5,000: refused, naming the rule, the limit and the value.
    at = price(runtime, "TCS", "1")
    details = rejected(
        await place(client, alice, order_type="LIMIT", price=at, quantity=2), "max_order_value"
    )
    assert Decimal(details["limit"]) == 5000 and Decimal(details["value"]) == at * 2
    accepted = await place(client, alice, quantity=1)
    assert accepted.status_code == 201 and accepted.json()["status"] == "FILLED", accepted.text

    # Beyond the ceiling, or switching a limit off: 422 naming every such field.
    loose = await client.put(
        LIMITS,
        json={"limits": {"max_order_value": 2_000_000, "max_open_orders": None}},
        headers=h,
    )
    assert loose.status_code == 422 and loose.json()["error_code"] == "VALIDATION_ERROR"
    assert sorted(loose.json()["details"]["fields"]) == ["max_open_orders", "max_order_value"]
    assert "max_order_value" in loose.json()["message"]
    assert (await client.get(LIMITS, headers=h)).json()["effective"]["max_order_value"] == 5000

    # Malformed input is a 422 too, never a 500.
    for bad in (
        {"limits": {"max_order_value": -1}},
        {"limits": {"no_such_limit": 1}},
        {"limits": {"intraday_square_off": "25:99"}},
        {"limits": {"intraday_square_off": "15:00"}},  # deployment-wide, not per user
        {"limits": {"on_loss_breach": "ACTIVE"}},
        {"limits": {}, "extra": 1},
    ):
        refused = await client.put(LIMITS, json=bad, headers=h)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error_code"] == "VALIDATION_ERROR"

    # Relaxing back up to the ceiling is fine: own limits are replaced as a whole.
    relaxed = await client.put(LIMITS, json={"limits": {}}, headers=h)
    assert relaxed.status_code == 200 and relaxed.json()["tightened"] == []
    assert relaxed.json()["effective"]["max_order_value"] == 1_000_000
    assert (await place(client, alice, order_type="LIMIT", price=at, quantity=2)).status_code in (
        201,
        202,
    )


async def test_account_limits_tighten_the_users(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    h = alice.headers
    await client.put(LIMITS, json={"limits": {"max_order_value": "50000"}}, headers=h)
    account = await client.put(
        LIMITS,
        json={"config_id": alice.config_id, "limits": {"max_open_orders": 1}},
        headers=h,
    )
    assert account.status_code == 200, account.text
    body = account.json()
    assert body["scope"] == f"account:{alice.config_id}"
    assert body["ceiling_source"] == "user"  # an account's ceiling: the user's limits
    assert body["ceiling"]["max_order_value"] == 50000
    assert body["tightened"] == ["max_open_orders"]
    assert body["effective"]["max_open_orders"] == 1
    assert body["effective"]["max_order_value"] == 50000  # the user's still applies
    shown = await client.get(LIMITS, params={"config_id": alice.config_id}, headers=h)
    assert shown.status_code == 200 and shown.json() == body

    await resting(client, runtime, alice)
    second = await place(
        client, alice, order_type="LIMIT", price=price(runtime, "INFY", "0.97"), symbol="INFY"
    )
    rejected(second, "max_open_orders")


async def test_admin_ceiling_binds_the_user(
    client: httpx.AsyncClient, root: Account, alice: Account, bob: Account, runtime: Runtime
) -> None:
    url = f"/api/v1/admin/risk/limits/{alice.user_id}"
    denied = await client.put(url, json={"limits": {"max_order_value": 1}}, headers=alice.headers)
    assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"
    assert (await client.get(url, headers=bob.headers)).status_code == 403

    set_ = await client.put(
        url, json={"limits": {"max_order_value": "20000"}}, headers=root.headers
    )
    assert set_.status_code == 200, set_.text
    assert set_.json()["ceiling_source"] == "admin"
    assert set_.json()["ceiling"]["max_order_value"] == 20000
    assert set_.json()["effective"]["max_order_value"] == 20000
    # Fields the ceiling leaves out are the deployment's defaults.
    assert set_.json()["ceiling"]["max_open_orders"] == 50
    by_name = await client.get("/api/v1/admin/risk/limits/alice", headers=root.headers)
    assert by_name.status_code == 200 and by_name.json() == set_.json()

    mine = (await client.get(LIMITS, headers=alice.headers)).json()
    assert mine["ceiling_source"] == "admin" and mine["ceiling"]["max_order_value"] == 20000
    over = await client.put(
        LIMITS, json={"limits": {"max_order_value": "50000"}}, headers=alice.headers
    )
    assert over.status_code == 422 and over.json()["details"]["fields"] == ["max_order_value"]
    under = await client.put(
        LIMITS, json={"limits": {"max_order_value": "10000"}}, headers=alice.headers
    )
    assert under.status_code == 200 and under.json()["effective"]["max_order_value"] == 10000

    # A ceiling below the user's own: the stricter applies.
    lower = await client.put(url, json={"limits": {"max_order_value": 8000}}, headers=root.headers)
    assert lower.json()["effective"]["max_order_value"] == 8000
    details = rejected(
        await place(
            client, alice, order_type="LIMIT", price=price(runtime, "TCS", "1"), quantity=3
        ),
        "max_order_value",
    )
    assert Decimal(details["limit"]) == 8000

    # A ceiling for one of her accounts tightens her limits there.
    account = await client.put(
        url,
        json={"config_id": alice.config_id, "limits": {"max_open_orders": 3}},
        headers=root.headers,
    )
    assert account.status_code == 200, account.text
    assert account.json()["ceiling_source"] == "admin"
    assert account.json()["effective"]["max_open_orders"] == 3
    assert account.json()["effective"]["max_order_value"] == 8000
    beyond = await client.put(
        LIMITS,
        json={"config_id": alice.config_id, "limits": {"max_open_orders": 5}},
        headers=alice.headers,
    )
    assert beyond.status_code == 422 and beyond.json()["details"]["fields"] == ["max_open_orders"]

    missing = await client.get("/api/v1/admin/risk/limits/nobody", headers=root.headers)
    assert missing.status_code == 404 and missing.json()["error_code"] == "USER_NOT_FOUND"
    not_hers = await client.get(url, params={"config_id": bob.config_id}, headers=root.headers)
    assert not_hers.status_code == 404 and not_hers.json()["error_code"] == "CONFIG_NOT_FOUND"
    # Administrators' ceilings are a SUPER_ADMIN's business.
    own_ceiling = f"/api/v1/admin/risk/limits/{root.user_id}"
    assert (await client.get(own_ceiling, headers=root.headers)).status_code == 403
    await promote(runtime, root, "SUPER_ADMIN")
    assert (await client.get(own_ceiling, headers=root.headers)).status_code == 200


async def test_status_shows_state_and_usage(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    h = alice.headers
    await resting(client, runtime, alice)
    response = await client.get(STATUS, params={"config_id": alice.config_id}, headers=h)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == alice.user_id
    assert body["global_state"]["state"] == "ACTIVE" and body["user_state"]["state"] == "ACTIVE"
    [account] = body["accounts"]
    assert account["config_id"] == alice.config_id
    assert account["state"]["effective"] == "ACTIVE"
    assert account["account"]["max_open_orders"] == {"limit": 50, "value": 1, "symbol": None}
    assert account["user"]["max_open_orders"]["value"] == 1
    assert account["account"]["max_open_positions"]["value"] == 1
    assert account["account"]["max_gross_exposure"]["value"] > 0
    assert account["account"]["max_symbol_exposure"]["symbol"] == "NSE:TCS"
    assert account["symbols"]["NSE:TCS"]["open_orders"] == 1
    assert account["per_order"]["max_order_value"] == 1_000_000

    second = await client.post(
        "/api/v1/brokers/configs", json={"broker": "paper", "name": "second"}, headers=h
    )
    every = (await client.get(STATUS, headers=h)).json()
    assert [a["config_id"] for a in every["accounts"]] == [
        alice.config_id,
        second.json()["config_id"],
    ]
    assert every["accounts"][1]["account"]["max_open_orders"]["value"] == 0
    assert every["accounts"][1]["user"]["max_open_orders"]["value"] == 1  # summed per user


async def test_account_kill_switch_halts_until_an_admin_resets(
    client: httpx.AsyncClient, root: Account, alice: Account, runtime: Runtime
) -> None:
    h = alice.headers
    order_id = await resting(client, runtime, alice)
    killed = await client.post(
        KILL,
        json={"scope": "account", "config_id": alice.config_id, "reason": "fat finger"},
        headers=h,
    )
    assert killed.status_code == 200, killed.text
    assert killed.json() == {
        "scope": f"account:{alice.config_id}",
        "state": "HALTED",
        "cancelled_orders": 1,
        "stopped_strategies": 0,
        "square_off_orders": [],
    }
    await processed(runtime, order_id)
    assert await order_status(client, alice, order_id) == "CANCELLED"

    status = (await client.get(STATUS, headers=h)).json()["accounts"][0]
    assert status["state"]["effective"] == "HALTED"
    assert status["state"]["scope"] == f"account:{alice.config_id}"
    assert status["state"]["reason"] == "fat finger"
    assert status["account_state"]["kill_switch"] is True
    assert status["account_state"]["set_by"] == alice.user_id

    details = rejected(await place(client, alice), "trading_state")
    assert "HALTED" in str(details)

    # Only an administrator lifts it.
    refused = await client.post(RESET, json={"scope": f"account:{alice.config_id}"}, headers=h)
    assert refused.status_code == 403 and refused.json()["error_code"] == "FORBIDDEN"
    reset = await client.post(
        RESET, json={"scope": "account", "config_id": alice.config_id}, headers=root.headers
    )
    assert reset.status_code == 200, reset.text
    assert reset.json() == {
        "scope": f"account:{alice.config_id}",
        "state": "ACTIVE",
        "previous_state": "HALTED",
        "reset_by": root.user_id,
    }
    again = await place(client, alice)
    assert again.status_code == 201 and again.json()["status"] == "FILLED", again.text
    after = (await client.get(STATUS, headers=h)).json()["accounts"][0]
    assert after["state"]["effective"] == "ACTIVE"
    assert after["account_state"]["kill_switch"] is False


async def test_user_kill_switch_with_flatten_closes_positions(
    client: httpx.AsyncClient, root: Account, alice: Account, runtime: Runtime
) -> None:
    bought = await place(client, alice, quantity=2)
    assert bought.status_code == 201 and bought.json()["status"] == "FILLED", bought.text
    killed = await client.post(KILL, json={"scope": "user", "flatten": True}, headers=alice.headers)
    assert killed.status_code == 200, killed.text
    assert killed.json()["scope"] == f"user:{alice.user_id}"
    [square_off] = killed.json()["square_off_orders"]
    await processed(runtime, square_off)
    closing = await client.get(f"/api/v1/brokers/orders/{square_off}", headers=alice.headers)
    assert closing.json()["side"] == "SELL" and closing.json()["quantity"] == 2
    assert closing.json()["status"] == "FILLED"
    positions = await client.get(
        "/api/v1/brokers/positions", params={"config_id": alice.config_id}, headers=alice.headers
    )
    assert all(p["quantity"] == 0 for p in positions.json()["positions"]), positions.text

    rejected(await place(client, alice), "trading_state")
    reset = await client.post(
        RESET, json={"scope": "user", "user_id": alice.user_id}, headers=root.headers
    )
    assert reset.status_code == 200 and reset.json()["state"] == "ACTIVE", reset.text
    assert (await place(client, alice)).status_code == 201


async def test_global_kill_switch_and_reset_need_a_super_admin(
    client: httpx.AsyncClient, root: Account, alice: Account, bob: Account, runtime: Runtime
) -> None:
    for who in (alice, root):  # a USER and an ADMIN
        denied = await client.post(KILL, json={"scope": "global"}, headers=who.headers)
        assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"
    assert (
        await client.post(RESET, json={"scope": "global"}, headers=root.headers)
    ).status_code == 403
    assert (await place(client, bob)).status_code == 201  # nothing was halted

    await promote(runtime, root, "SUPER_ADMIN")
    killed = await client.post(KILL, json={"scope": "global"}, headers=root.headers)
    assert killed.status_code == 200 and killed.json()["scope"] == "global", killed.text
    for who in (alice, bob):
        rejected(await place(client, who), "trading_state")
        state = (await client.get(STATUS, headers=who.headers)).json()
        assert state["global_state"]["state"] == "HALTED"
        assert state["accounts"][0]["state"]["scope"] == "global"
    reset = await client.post(RESET, json={"scope": "global"}, headers=root.headers)
    assert reset.status_code == 200 and reset.json()["previous_state"] == "HALTED"
    assert (await place(client, bob, quantity=2)).status_code == 201  # not a duplicate


async def test_bad_scopes_are_4xx(client: httpx.AsyncClient, root: Account, alice: Account) -> None:
    for body in (
        {"scope": "account"},  # no config_id
        {"scope": "user", "config_id": alice.config_id},
        {"scope": "everyone"},
        {"scope": "account", "config_id": alice.config_id, "extra": True},
    ):
        response = await client.post(KILL, json=body, headers=alice.headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error_code"] == "VALIDATION_ERROR"
    for body, status, code in (
        ({"scope": "nonsense"}, 422, "VALIDATION_ERROR"),
        ({"scope": "user:"}, 422, "VALIDATION_ERROR"),
        ({"scope": "account"}, 422, "VALIDATION_ERROR"),
        ({"scope": "global", "user_id": alice.user_id}, 422, "VALIDATION_ERROR"),
        ({"scope": "user:nobody"}, 404, "USER_NOT_FOUND"),
        ({"scope": "account:nope"}, 404, "CONFIG_NOT_FOUND"),
    ):
        response = await client.post(RESET, json=body, headers=root.headers)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error_code"] == code


async def test_other_users_accounts_are_not_found(
    client: httpx.AsyncClient, alice: Account, bob: Account, runtime: Runtime
) -> None:
    theirs = {"config_id": alice.config_id}
    for response in (
        await client.get(LIMITS, params=theirs, headers=bob.headers),
        await client.get(STATUS, params=theirs, headers=bob.headers),
        await client.put(
            LIMITS, json={**theirs, "limits": {"max_order_value": 1}}, headers=bob.headers
        ),
        await client.post(KILL, json={"scope": "account", **theirs}, headers=bob.headers),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error_code"] == "CONFIG_NOT_FOUND"
    mine = (await client.get(STATUS, headers=alice.headers)).json()["accounts"][0]
    assert mine["state"]["effective"] == "ACTIVE"
    assert (await client.get(LIMITS, params=theirs, headers=alice.headers)).json()[
        "tightened"
    ] == []
    assert [
        a["config_id"] for a in (await client.get(STATUS, headers=bob.headers)).json()["accounts"]
    ] == [bob.config_id]
    assert (await place(client, alice)).status_code == 201


async def test_api_key_scopes(client: httpx.AsyncClient, alice: Account) -> None:
    async def key(scope: str) -> dict[str, str]:
        created = await client.post(
            "/api/v1/auth/api-keys",
            json={"name": f"risk-{scope}", "scopes": [scope]},
            headers=alice.headers,
        )
        assert created.status_code == 201, created.text
        return {"X-API-Key": created.json()["key"]}

    reader, trader = await key("read"), await key("trade")
    assert (await client.get(STATUS, headers=reader)).status_code == 200
    assert (await client.get(LIMITS, headers=reader)).status_code == 200
    for method, url, body in (
        ("PUT", LIMITS, {"limits": {}}),
        ("POST", KILL, {"scope": "user"}),
    ):
        refused = await client.request(method, url, json=body, headers=reader)
        assert refused.status_code == 403 and refused.json()["error_code"] == "INSUFFICIENT_SCOPE"
    killed = await client.post(KILL, json={"scope": "user"}, headers=trader)
    assert killed.status_code == 200 and killed.json()["state"] == "HALTED"
