"""GET /api/v1/instruments/search: authentication, validation, ranked results from the
instruments table, and the paper-universe fallback while the table is empty."""

from __future__ import annotations

from datetime import date

import httpx

from tests.api.conftest import Account
from trading_backend.brokers.angel_one.fake.scrip_master import (
    scrip_master_bytes,
    small_scrip_master,
)
from trading_backend.brokers.angel_one.scrip_master import InstrumentCaps
from trading_backend.marketdata.instruments import load_angel_one
from trading_backend.runtime import Runtime

URL = "/api/v1/instruments/search"


async def _load(runtime: Runtime) -> None:
    today = date.today()
    await load_angel_one(
        runtime.instruments,
        data=scrip_master_bytes(small_scrip_master(today)),
        caps=InstrumentCaps(load_all=True),
        today=today,
    )


async def test_search_needs_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get(URL, params={"q": "SBIN"})
    assert response.status_code == 401
    assert response.json()["error_code"] == "NOT_AUTHENTICATED"


async def test_bad_parameters_are_422_validation_errors(
    client: httpx.AsyncClient, alice: Account
) -> None:
    for params in (
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "x" * 65},
        {"q": "SB\x00IN"},
        {"q": "SBIN", "limit": 0},
        {"q": "SBIN", "limit": 101},
        {"q": "SBIN", "limit": "many"},
        {"q": "SBIN", "exchange": "MOON"},
        {"q": "SBIN", "type": "BOND"},
        {"q": "SBIN", "broker": "Angel One!"},
    ):
        response = await client.get(URL, params=params, headers=alice.headers)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error_code"] == "VALIDATION_ERROR", params


async def test_falls_back_to_the_paper_universe_while_the_table_is_empty(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.get(URL, params={"q": "nifty", "limit": 3}, headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "paper" and body["broker"] == "angel_one"
    assert body["count"] == 3 and body["results"][0]["symbol"] == "NIFTY"
    assert body["results"][0]["instrument_type"] == "INDEX"
    assert body["results"][0]["token"] == ""  # paper instruments carry no broker token
    tcs = await client.get(URL, params={"q": "tcs"}, headers=alice.headers)
    assert tcs.json()["results"][0]["symbol"] == "TCS"
    none = await client.get(URL, params={"q": "NO-SUCH-THING"}, headers=alice.headers)
    assert none.status_code == 200 and none.json()["results"] == []


async def test_results_come_from_the_table_best_first(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    await _load(runtime)
    response = await client.get(URL, params={"q": "sbin"}, headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "table"
    first = body["results"][0]
    assert (first["symbol"], first["exchange"], first["instrument_type"]) == ("SBIN", "NSE", "EQ")
    assert (first["token"], first["broker_symbol"], first["tick_size"]) == ("3045", "SBIN-EQ", 0.05)
    by_token = await client.get(URL, params={"q": "99926009"}, headers=alice.headers)
    assert by_token.json()["results"][0]["symbol"] == "BANKNIFTY"
    options = await client.get(
        URL,
        params={"q": "NIFTY", "exchange": "NFO", "type": "CE", "limit": 5},
        headers=alice.headers,
    )
    rows = options.json()["results"]
    assert len(rows) == 5
    assert all(r["instrument_type"] == "CE" and r["exchange"] == "NFO" for r in rows)
    assert all(r["strike"] > 0 and r["expiry"] and r["lot_size"] > 1 for r in rows)
    assert all(r["tradable"] for r in rows)
    # A broker without rows falls back to paper; one with rows but no match does not.
    other = await client.get(URL, params={"q": "TCS", "broker": "zerodha"}, headers=alice.headers)
    assert other.json()["source"] == "paper"
    missing = await client.get(URL, params={"q": "NO-SUCH-THING"}, headers=alice.headers)
    assert missing.json() == {
        "broker": "angel_one",
        "source": "table",
        "count": 0,
        "results": [],
    }


async def test_an_api_key_with_read_scope_may_search(
    client: httpx.AsyncClient, alice: Account
) -> None:
    created = await client.post(
        "/api/v1/auth/api-keys", json={"name": "reader", "scopes": ["read"]}, headers=alice.headers
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    response = await client.get(URL, params={"q": "TCS"}, headers={"X-API-Key": key})
    assert response.status_code == 200 and response.json()["results"][0]["symbol"] == "TCS"
