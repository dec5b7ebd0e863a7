"""Market routes: instruments, quotes and option chains with greeks, over HTTP."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time

import httpx

from tests.api.conftest import Account
from trading_backend.domain import Exchange, Timeframe
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


async def test_candles_are_fetched_once_then_served_from_the_database(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    params = {
        "timeframe": "1d",
        "start": "2026-11-02T00:00:00+00:00",
        "end": "2026-11-14T00:00:00+00:00",
    }
    first = await client.get("/api/v1/market/candles/TCS", params=params, headers=alice.headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["symbol"] == "TCS" and body["timeframe"] == "1d"
    days = [c["start"][:10] for c in body["candles"]]
    # Ten weekdays between Monday 2 and Friday 13 November; sessions open at 09:15 IST.
    assert len(days) == 10 and "2026-11-07" not in days and "2026-11-08" not in days
    opens = {datetime.fromisoformat(c["start"]).astimezone(UTC) for c in body["candles"]}
    assert {when.time() for when in opens} == {time(3, 45)}
    for c in body["candles"]:
        assert c["low"] <= min(c["open"], c["close"]) <= max(c["open"], c["close"]) <= c["high"]

    # Served from the cache: the same bars even with the history source gone.
    runtime.__dict__["history_source"] = None
    again = await client.get("/api/v1/market/candles/TCS", params=params, headers=alice.headers)
    assert again.status_code == 200 and again.json() == body

    limited = await client.get(
        "/api/v1/market/candles/TCS", params={**params, "limit": 3}, headers=alice.headers
    )
    assert [c["start"][:10] for c in limited.json()["candles"]] == days[-3:]


async def test_candles_reject_bad_ranges(client: httpx.AsyncClient, alice: Account) -> None:
    backwards = await client.get(
        "/api/v1/market/candles/TCS",
        params={"start": "2026-11-14T00:00:00+00:00", "end": "2026-11-02T00:00:00+00:00"},
        headers=alice.headers,
    )
    assert backwards.status_code == 422 and backwards.json()["error_code"] == "VALIDATION_ERROR"
    naive = await client.get(
        "/api/v1/market/candles/TCS", params={"start": "2026-11-02T00:00:00"}, headers=alice.headers
    )
    assert naive.status_code == 422 and "offset" in naive.json()["message"]
    bad_tf = await client.get(
        "/api/v1/market/candles/TCS", params={"timeframe": "2m"}, headers=alice.headers
    )
    assert bad_tf.status_code == 422
    unknown = await client.get("/api/v1/market/candles/NOPE", headers=alice.headers)
    assert unknown.status_code == 404


async def test_strategy_reads_are_topped_up_from_the_candle_cache(runtime: Runtime) -> None:
    """A strategy asking for more bars than the hub has seen gets the broker's history."""
    bars = await runtime.market_reader.bars("TCS", Exchange.NSE, Timeframe.M5, 30)
    assert len(bars) == 30
    assert all(a.end <= b.start for a, b in itertools.pairwise(bars))
    assert bars[-1].end <= runtime.market.quote("TCS", Exchange.NSE).timestamp
    cached = await runtime.candles.cached(
        "paper", "TCS", Exchange.NSE, Timeframe.M5, bars[0].start, bars[-1].end
    )
    assert [b.start for b in cached] == [b.start for b in bars]
