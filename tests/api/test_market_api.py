"""Market routes: instruments, quotes and option chains with greeks, over HTTP."""

from __future__ import annotations

from datetime import date

import httpx

from tests.api.conftest import Account
from trading_backend.runtime import Runtime


async def test_quote_and_instruments(client: httpx.AsyncClient, alice: Account) -> None:
    quote = await client.get("/api/v1/market/quote/TCS", headers=alice.headers)
    assert quote.status_code == 200, quote.text
    body = quote.json()
    assert body["symbol"] == "TCS" and body["exchange"] == "NSE"
    assert body["bid"] <= body["ltp"] <= body["ask"]

    btc = await client.get(
        "/api/v1/market/quote/BTCUSDT", params={"exchange": "CRYPTO"}, headers=alice.headers
    )
    assert btc.status_code == 200 and btc.json()["exchange"] == "CRYPTO"

    futures = await client.get(
        "/api/v1/market/instruments",
        params={"instrument_type": "FUT", "underlying": "NIFTY"},
        headers=alice.headers,
    )
    assert futures.status_code == 200
    assert futures.json() and all(i["instrument_type"] == "FUT" for i in futures.json())
    assert {i["lot_size"] for i in futures.json()} <= {65, 75}


async def test_unknown_instruments_are_404_with_an_error_code(
    client: httpx.AsyncClient, alice: Account
) -> None:
    missing = await client.get("/api/v1/market/quote/NOPE", headers=alice.headers)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "INSTRUMENT_NOT_FOUND"
    bad_exchange = await client.get(
        "/api/v1/market/quote/TCS", params={"exchange": "MOON"}, headers=alice.headers
    )
    assert bad_exchange.status_code == 422
    assert bad_exchange.json()["error_code"] == "VALIDATION_ERROR"
    no_options = await client.get("/api/v1/market/option-chain/TCS", headers=alice.headers)
    assert no_options.status_code == 404
    assert no_options.json()["error_code"] == "INSTRUMENT_NOT_FOUND"
    no_expiry = await client.get(
        "/api/v1/market/option-chain/NIFTY",
        params={"expiry": "2001-01-04"},
        headers=alice.headers,
    )
    assert no_expiry.status_code == 404 and "listed" in no_expiry.json()["message"]


async def test_market_needs_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/market/quote/TCS")
    assert response.status_code == 401


async def test_option_chain_has_prices_and_greeks(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    response = await client.get(
        "/api/v1/market/option-chain/NIFTY", params={"strikes": 3}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    chain = response.json()
    assert chain["underlying"] == "NIFTY"
    assert chain["expiry"] in chain["expiries"]
    assert chain["lot_size"] in (65, 75)
    rows = chain["rows"]
    assert len(rows) == 7  # ATM and three strikes each side
    strikes = [r["strike"] for r in rows]
    assert strikes == sorted(strikes)
    spot = chain["spot"]
    assert min(strikes) < spot < max(strikes)
    for row in rows:
        ce, pe = row["CE"], row["PE"]
        assert 0 < ce["delta"] < 1 and -1 < pe["delta"] < 0
        assert ce["gamma"] > 0 and pe["gamma"] > 0
        assert ce["vega"] > 0 and ce["theta"] < 0
        assert ce["symbol"].endswith("CE") and pe["symbol"].endswith("PE")
    # Calls get cheaper and puts dearer as the strike rises.
    calls = [r["CE"]["ltp"] for r in rows]
    puts = [r["PE"]["ltp"] for r in rows]
    assert calls == sorted(calls, reverse=True) and puts == sorted(puts)
    # A given expiry is honoured.
    later = chain["expiries"][-1]
    other = await client.get(
        "/api/v1/market/option-chain/NIFTY",
        params={"expiry": later, "strikes": 1},
        headers=alice.headers,
    )
    assert other.status_code == 200 and other.json()["expiry"] == later
    assert date.fromisoformat(later) >= date.fromisoformat(chain["expiry"])
    assert runtime.market.expiries("NIFTY")[-1].isoformat() == later
