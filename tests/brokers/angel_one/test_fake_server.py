"""The fake SmartAPI over real HTTP (httpx) and WebSockets: every route, the order
lifecycle, token expiry at midnight IST with an injected clock, faults and rate limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import websockets

from tests.brokers.angel_one.support import (
    API_KEY,
    CLIENT_CODE,
    OTHER_API_KEY,
    OTHER_CLIENT_CODE,
    OTHER_PIN,
    OTHER_TOTP_SECRET,
    PIN,
    TOTP_SECRET,
    Clock,
    headers,
    order_body,
    totp,
)
from trading_backend.brokers.angel_one import protocol
from trading_backend.brokers.angel_one.fake import FakeSmartAPI, running_fake
from trading_backend.brokers.angel_one.fake.instruments import (
    NIFTY_CE_TOKENS,
    NIFTY_FUT_TOKEN,
    NIFTY_LOT,
)
from trading_backend.brokers.angel_one.fake.server import RunningFake

R = protocol.ROUTES
LOGIN = R["login"].path


def path(name: str) -> str:
    return R[name].path


@dataclass
class Env:
    server: RunningFake
    clock: Clock
    http: httpx.AsyncClient
    jwt: str = ""
    refresh: str = ""
    feed: str = ""

    @property
    def fake(self) -> FakeSmartAPI:
        return self.server.fake

    async def login(
        self,
        client: str = CLIENT_CODE,
        pin: str = PIN,
        secret: str = TOTP_SECRET,
        key: str = API_KEY,
    ) -> dict[str, Any]:
        body = {"clientcode": client, "password": pin, "totp": totp(secret, self.clock.now)}
        reply = (await self.http.post(LOGIN, headers=headers(api_key=key), json=body)).json()
        if reply.get("status"):
            data = reply["data"]
            self.jwt, self.refresh, self.feed = (
                data["jwtToken"],
                data["refreshToken"],
                data["feedToken"],
            )
        return reply

    async def get(self, name: str, *, jwt: str | None = None, key: str = API_KEY) -> Any:
        reply = await self.http.get(path(name), headers=headers(jwt or self.jwt, key))
        return reply.json()

    async def post(
        self, route: str, body: Any, *, jwt: str | None = None, key: str = API_KEY
    ) -> Any:
        target = path(route) if route in R else route
        reply = await self.http.post(target, headers=headers(jwt or self.jwt, key), json=body)
        return reply.json()

    async def place(self, **overrides: Any) -> dict[str, Any]:
        reply = await self.post("place_order", order_body(**overrides))
        assert reply["status"] is True, reply
        return reply["data"]

    async def order(self, orderid: str) -> dict[str, Any]:
        book = (await self.get("order_book"))["data"]
        return next(o for o in book if o["orderid"] == orderid)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = Clock()
    fake = FakeSmartAPI(clock=clock)
    fake.add_client(CLIENT_CODE, PIN, TOTP_SECRET, API_KEY)
    fake.add_client(OTHER_CLIENT_CODE, OTHER_PIN, OTHER_TOTP_SECRET, OTHER_API_KEY)
    fake.faults.rate_limiting = False  # the limiter has its own tests
    async with running_fake(fake) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            yield Env(server, clock, http)


@pytest.fixture
async def logged_in(env: Env) -> Env:
    assert (await env.login())["status"] is True
    return env


# ---------------------------------------------------------------------- auth


async def test_login_issues_tokens_and_profile_ignores_json_query(env: Env) -> None:
    reply = await env.login()
    assert reply["status"] is True and reply["errorcode"] == ""
    assert env.jwt.startswith("eyJ") and env.refresh.startswith("eyJ") and env.feed
    assert len({env.jwt, env.refresh, env.feed}) == 3
    junk = f'?{{"refreshToken": "{env.refresh}"}}'  # the SDK's junk query string
    profile = (await env.http.get(path("profile") + junk, headers=headers(env.jwt))).json()
    assert profile["status"] is True
    assert profile["data"]["clientcode"] == CLIENT_CODE
    assert set(profile["data"]) >= {"name", "email", "mobileno", "exchanges", "products"}


async def test_login_state_is_echoed(env: Env) -> None:
    body = {"clientcode": CLIENT_CODE, "password": PIN, "totp": totp(at=env.clock.now)}
    reply = await env.http.post(LOGIN, headers=headers(), json={**body, "state": "xyz"})
    assert reply.json()["data"]["state"] == "xyz"


async def test_login_rejects_bad_totp_pin_and_unknown_client(env: Env) -> None:
    def body(**kw: str) -> dict[str, str]:
        return {"clientcode": CLIENT_CODE, "password": PIN, "totp": totp(at=env.clock.now)} | kw

    bad_totp = (await env.http.post(LOGIN, headers=headers(), json=body(totp="000000"))).json()
    assert bad_totp == {
        "status": False,
        "message": "Invalid totp",
        "errorcode": "AB1050",
        "data": None,
    }
    bad_pin = (await env.http.post(LOGIN, headers=headers(), json=body(password="9999"))).json()
    assert bad_pin["status"] is False and bad_pin["errorcode"] == "AB1007"
    unknown = (await env.http.post(LOGIN, headers=headers(), json=body(clientcode="Z1"))).json()
    assert unknown["errorcode"] == "AB1007"
    other_key = await env.http.post(LOGIN, headers=headers(api_key=OTHER_API_KEY), json=body())
    assert other_key.json()["errorcode"] == "AB1007"
    assert "1234" not in bad_pin["message"]  # the PIN never comes back


async def test_totp_allows_one_step_of_skew_but_not_two(env: Env) -> None:
    from datetime import timedelta

    for skew, accepted in ((-30, True), (30, True), (-60, False), (60, False)):
        code = totp(at=env.clock.now + timedelta(seconds=skew))
        body = {"clientcode": CLIENT_CODE, "password": PIN, "totp": code}
        reply = (await env.http.post(LOGIN, headers=headers(), json=body)).json()
        assert reply["status"] is accepted, (skew, reply)


async def test_header_checks_answer_in_the_gateway_dialect(logged_in: Env) -> None:
    env = logged_in
    no_key = await env.http.get(path("profile"), headers={"Authorization": f"Bearer {env.jwt}"})
    assert no_key.status_code == 200
    assert no_key.json() == {
        "success": False,
        "message": "Invalid API Key",
        "errorCode": "AG8004",
        "data": "",
    }
    no_auth = await env.http.get(path("profile"), headers=headers())
    assert no_auth.json()["errorCode"] == "AG8003" and no_auth.json()["success"] is False
    invalid = {"success": False, "message": "Invalid Token", "errorCode": "AG8001", "data": ""}
    assert await env.get("profile", jwt="not-a-token") == invalid
    bearer_bearer = {**headers(), "Authorization": f"Bearer Bearer {env.jwt}"}
    assert (await env.http.get(path("profile"), headers=bearer_bearer)).json() == invalid
    assert await env.get("profile", key=OTHER_API_KEY) == invalid  # token of another key
    # lower-case header names and a bare JWT (no "Bearer ") are accepted
    lower = {"x-privatekey": API_KEY, "authorization": env.jwt}
    assert (await env.http.get(path("profile"), headers=lower)).json()["status"] is True


async def test_tokens_expire_at_midnight_ist(env: Env) -> None:
    env.clock.now = datetime(2026, 11, 25, 18, 29, 0, tzinfo=UTC)  # 23:59 IST
    assert (await env.login())["status"] is True
    assert (await env.get("profile"))["status"] is True
    env.clock.advance(minutes=1)  # 00:00 IST: the day is over
    assert (await env.get("profile"))["errorCode"] == "AG8001"
    refreshed = await env.post("generate_tokens", {"refreshToken": env.refresh})
    assert refreshed["errorcode"] == "AB8051"
    assert (await env.login())["status"] is True  # a fresh TOTP login starts a new day
    assert (await env.get("profile"))["status"] is True


async def test_generate_tokens_and_logout(logged_in: Env) -> None:
    env = logged_in
    old_jwt, old_feed = env.jwt, env.feed
    reply = await env.post("generate_tokens", {"refreshToken": env.refresh})
    assert reply["status"] is True
    data = reply["data"]
    assert data["jwtToken"] != old_jwt and data["feedToken"] != old_feed
    assert data["refreshToken"] == env.refresh
    assert (await env.get("profile", jwt=data["jwtToken"]))["status"] is True
    assert (await env.get("profile", jwt=old_jwt))["status"] is True  # old JWT lives on
    bad = await env.post("generate_tokens", {"refreshToken": "nope"})
    assert bad["errorcode"] == "AB8050"
    out = await env.post("logout", {"clientcode": CLIENT_CODE}, jwt=data["jwtToken"])
    assert out == {"status": True, "message": "SUCCESS", "errorcode": "", "data": None}
    assert (await env.get("profile", jwt=data["jwtToken"]))["errorCode"] == "AG8001"


async def test_invalidate_tokens_mid_session(logged_in: Env) -> None:
    env = logged_in
    assert (await env.get("rms"))["status"] is True
    assert env.fake.faults.invalidate_tokens(CLIENT_CODE) == 1
    assert (await env.get("rms"))["errorCode"] == "AG8001"
    assert (await env.login())["status"] is True
    assert (await env.get("rms"))["status"] is True


# ---------------------------------------------------------------------- orders


async def test_empty_collections_are_null(logged_in: Env) -> None:
    env = logged_in
    for name in ("order_book", "trade_book", "positions", "holdings"):
        reply = await env.get(name)
        assert reply["status"] is True and reply["data"] is None, name
    assert (await env.get("all_holdings"))["data"]["holdings"] is None


async def test_market_order_fills_and_updates_books(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(quantity="10", ordertag="strat-1")
    assert placed["script"] == "SBIN-EQ"
    assert len(placed["orderid"]) == 15 and placed["orderid"].isdigit()
    assert len(placed["uniqueorderid"]) == 36  # UUID
    row = await env.order(placed["orderid"])
    expected_fields = {
        "variety", "ordertype", "producttype", "duration", "price", "triggerprice", "quantity",
        "disclosedquantity", "squareoff", "stoploss", "trailingstoploss", "tradingsymbol",
        "transactiontype", "exchange", "symboltoken", "ordertag", "instrumenttype",
        "strikeprice", "optiontype", "expirydate", "lotsize", "cancelsize", "averageprice",
        "filledshares", "unfilledshares", "orderid", "text", "status", "orderstatus",
        "updatetime", "exchtime", "exchorderupdatetime", "fillid", "filltime",
        "parentorderid", "uniqueorderid", "exchangeorderid",
    }  # fmt: skip
    assert set(row) == expected_fields
    assert row["status"] == row["orderstatus"] == "complete"
    assert row["ordertag"] == "strat-1"
    assert row["filledshares"] == "10" and row["unfilledshares"] == "0"
    assert row["averageprice"] == 812.5
    assert row["updatetime"] == "25-Nov-2026 10:30:00"  # %d-%b-%Y %H:%M:%S, IST
    trades = (await env.get("trade_book"))["data"]
    assert len(trades) == 1
    assert trades[0]["fillsize"] == "10" and trades[0]["fillprice"] == "812.50"
    assert trades[0]["orderid"] == placed["orderid"] and trades[0]["filltime"] == "10:30:00"
    position = (await env.get("positions"))["data"][0]
    assert all(isinstance(v, str) for v in position.values())
    assert position["netqty"] == "10" and position["buyavgprice"] == "812.50"
    env.fake.set_price("NSE", "3045", Decimal("820"))
    position = (await env.get("positions"))["data"][0]
    assert position["ltp"] == "820.00" and position["unrealised"] == "75.00"
    assert position["realised"] == "0.00" and position["pnl"] == "75.00"
    await env.place(transactiontype="SELL", quantity="4")
    position = (await env.get("positions"))["data"][0]
    assert position["netqty"] == "6" and position["realised"] == "30.00"
    assert position["unrealised"] == "45.00"
    rms = (await env.get("rms"))["data"]
    assert all(v is None or isinstance(v, str) for v in rms.values())
    assert rms["availablecash"] == "1000000.00"
    assert rms["m2mrealized"] == "30.00" and rms["m2munrealized"] == "45.00"
    # INTRADAY margin: 20 % of 6 x 812.50 = 975.00 used
    assert rms["utiliseddebits"] == "975.00"
    assert rms["net"] == str(Decimal("1000000") + 30 + 45 - Decimal("975.00"))


async def test_limit_order_rests_then_fills_when_price_crosses(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(ordertype="LIMIT", price="800.00", quantity="2")
    row = await env.order(placed["orderid"])
    assert row["status"] == "open" and row["filledshares"] == "0" and row["price"] == 800.0
    env.fake.set_price("NSE", "3045", Decimal("805"))
    assert (await env.order(placed["orderid"]))["status"] == "open"
    env.fake.set_price("NSE", "3045", Decimal("799.5"))
    row = await env.order(placed["orderid"])
    assert row["status"] == "complete" and row["averageprice"] == 800.0  # its limit price
    assert (await env.get("trade_book"))["data"][0]["fillprice"] == "800.00"


async def test_marketable_limit_fills_at_market(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(ordertype="LIMIT", price="820", transactiontype="BUY")
    row = await env.order(placed["orderid"])
    assert row["status"] == "complete" and row["averageprice"] == 812.5


async def test_stop_loss_orders_trigger(logged_in: Env) -> None:
    env = logged_in
    slm = await env.place(
        variety="STOPLOSS", ordertype="STOPLOSS_MARKET", triggerprice="820", quantity="1"
    )
    sll = await env.place(
        variety="STOPLOSS",
        ordertype="STOPLOSS_LIMIT",
        triggerprice="830",
        price="829",
        quantity="1",
    )
    assert (await env.order(slm["orderid"]))["status"] == "trigger pending"
    wrong_side = await env.place(
        variety="STOPLOSS", ordertype="STOPLOSS_MARKET", triggerprice="800"
    )
    row = await env.order(wrong_side["orderid"])  # a buy stop below the market is refused
    assert row["status"] == "rejected" and "higher than the last traded price" in row["text"]
    env.fake.set_price("NSE", "3045", Decimal("821"))
    row = await env.order(slm["orderid"])
    assert row["status"] == "complete" and row["averageprice"] == 821.0
    env.fake.set_price("NSE", "3045", Decimal("831"))  # triggers, but 831 > limit 829
    assert (await env.order(sll["orderid"]))["status"] == "open"
    env.fake.set_price("NSE", "3045", Decimal("828"))
    row = await env.order(sll["orderid"])
    assert row["status"] == "complete" and row["averageprice"] == 829.0


async def test_modify_and_cancel(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(ordertype="LIMIT", price="790", quantity="3")
    modified = await env.post(
        "modify_order",
        {
            "variety": "NORMAL",
            "orderid": placed["orderid"],
            "ordertype": "LIMIT",
            "producttype": "INTRADAY",
            "duration": "DAY",
            "price": "795",
            "quantity": "5",
        },
    )
    assert modified["status"] is True and modified["data"]["orderid"] == placed["orderid"]
    row = await env.order(placed["orderid"])
    assert row["price"] == 795.0 and row["quantity"] == "5" and row["status"] == "open"
    amo = await env.post("cancel_order", {"variety": "AMO", "orderid": placed["orderid"]})
    assert amo["errorcode"] == "AB1008"
    assert amo["message"] == "Invalid Order Variety. Value should be NORMAL, STOPLOSS, ROBO"
    amo_mod = await env.post("modify_order", {"variety": "AMO", "orderid": placed["orderid"]})
    assert amo_mod["errorcode"] == "AB1008"
    cancelled = await env.post("cancel_order", {"variety": "NORMAL", "orderid": placed["orderid"]})
    assert cancelled["status"] is True
    assert cancelled["data"] == {
        "orderid": placed["orderid"],
        "uniqueorderid": placed["uniqueorderid"],
    }
    row = await env.order(placed["orderid"])
    assert row["status"] == "cancelled" and row["cancelsize"] == "5"
    again = await env.post("cancel_order", {"variety": "NORMAL", "orderid": placed["orderid"]})
    assert again["status"] is False
    missing = await env.post("cancel_order", {"variety": "NORMAL", "orderid": "1"})
    assert missing["errorcode"] == "AB1013"


async def test_modify_to_marketable_price_fills(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(ordertype="LIMIT", price="790")
    body = {"variety": "NORMAL", "orderid": placed["orderid"], "price": "815"}
    assert (await env.post("modify_order", body))["status"] is True
    assert (await env.order(placed["orderid"]))["status"] == "complete"


async def test_amo_orders_wait(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place(variety="AMO", ordertype="LIMIT", price="800")
    row = await env.order(placed["orderid"])
    assert row["status"] == "after market order req received" and row["variety"] == "AMO"
    cancel = await env.post("cancel_order", {"variety": "NORMAL", "orderid": placed["orderid"]})
    assert cancel["status"] is True
    assert (await env.order(placed["orderid"]))["status"] == "cancelled after market order"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"variety": "SUPER"}, "AB1008"),
        ({"symboltoken": "999999"}, "AB1009"),
        ({"symboltoken": ""}, "AB1009"),
        ({"tradingsymbol": "TCS-EQ"}, "AB1009"),
        ({"producttype": "CNC"}, "AB1012"),
        ({"ordertag": "x" * 20}, "AB4008"),
        ({"quantity": "abc"}, "AB9001"),
        ({"quantity": "0"}, "AB9001"),
        ({"transactiontype": "HOLD"}, "AB9001"),
        ({"ordertype": "LIMIT", "price": "0"}, "AB9001"),
    ],
)
async def test_place_order_validation(logged_in: Env, overrides: dict[str, str], code: str) -> None:
    reply = await logged_in.post("place_order", order_body(**overrides))
    assert reply["status"] is False and reply["errorcode"] == code and reply["data"] is None
    assert logged_in.fake.orders(CLIENT_CODE) == []


async def test_ordertag_of_19_chars_is_fine(logged_in: Env) -> None:
    placed = await logged_in.place(ordertag="y" * 19)
    assert (await logged_in.order(placed["orderid"]))["ordertag"] == "y" * 19


async def test_book_rejections_carry_text(logged_in: Env) -> None:
    env = logged_in
    fut = env.fake.instrument("NFO", NIFTY_FUT_TOKEN)
    lot = await env.place(
        exchange="NFO",
        symboltoken=NIFTY_FUT_TOKEN,
        tradingsymbol=fut.symbol,
        producttype="CARRYFORWARD",
        quantity=str(NIFTY_LOT + 1),
    )
    row = await env.order(lot["orderid"])
    assert row["status"] == "rejected" and "lot size" in row["text"]
    funds = await env.place(quantity="5000", producttype="DELIVERY")  # 40 lakh > 10 lakh
    row = await env.order(funds["orderid"])
    assert row["status"] == "rejected"
    assert row["text"].startswith("Your order has been rejected due to Insufficient Funds.")
    assert protocol.INSUFFICIENT_FUNDS_HINT in row["text"].lower()
    tick = await env.place(ordertype="LIMIT", price="800.03")
    assert "tick size" in (await env.order(tick["orderid"]))["text"]
    ok = await env.place(
        exchange="NFO",
        symboltoken=NIFTY_FUT_TOKEN,
        tradingsymbol=fut.symbol,
        producttype="CARRYFORWARD",
        quantity=str(NIFTY_LOT * 2),
    )
    assert (await env.order(ok["orderid"]))["status"] == "complete"


async def test_order_details_by_unique_id(logged_in: Env) -> None:
    env = logged_in
    placed = await env.place()
    reply = await env.http.get(
        path("order_details").replace("{uniqueorderid}", placed["uniqueorderid"]),
        headers=headers(env.jwt),
    )
    data = reply.json()["data"]
    assert data["orderid"] == placed["orderid"] and data["status"] == "complete"
    missing = await env.http.get(
        path("order_details").replace("{uniqueorderid}", "nope"), headers=headers(env.jwt)
    )
    assert missing.json()["errorcode"] == "AB1013"


async def test_manual_processing_shows_put_order_req_received(logged_in: Env) -> None:
    env = logged_in
    env.fake.auto_process = False
    placed = await env.place()
    assert (await env.order(placed["orderid"]))["status"] == "put order req received"
    env.fake.process_orders()
    assert (await env.order(placed["orderid"]))["status"] == "complete"


async def test_delivery_updates_holdings_and_convert_position(logged_in: Env) -> None:
    env = logged_in
    await env.place(producttype="DELIVERY", quantity="3")
    rows = (await env.get("holdings"))["data"]
    assert rows[0]["tradingsymbol"] == "SBIN-EQ" and rows[0]["quantity"] == 3
    assert rows[0]["t1quantity"] == 3 and rows[0]["averageprice"] == 812.5
    assert isinstance(rows[0]["ltp"], float)
    everything = (await env.get("all_holdings"))["data"]
    assert everything["holdings"] == rows
    assert everything["totalholding"]["totalinvvalue"] == 2437.5
    await env.place(producttype="INTRADAY", quantity="2")
    convert = {
        "exchange": "NSE",
        "oldproducttype": "INTRADAY",
        "newproducttype": "DELIVERY",
        "tradingsymbol": "SBIN-EQ",
        "transactiontype": "BUY",
        "quantity": 2,
        "type": "DAY",
    }
    reply = await env.post("convert_position", convert)
    assert reply == {"status": True, "message": "SUCCESS", "errorcode": "", "data": None}
    by_product = {p["producttype"]: p["netqty"] for p in (await env.get("positions"))["data"]}
    assert by_product == {"DELIVERY": "5", "INTRADAY": "0"}
    failed = await env.post("convert_position", {**convert, "quantity": 9})
    assert failed["errorcode"] == "AB1017"


async def test_clients_are_isolated(logged_in: Env) -> None:
    env = logged_in
    await env.place()
    mine = env.jwt
    assert (await env.login(OTHER_CLIENT_CODE, OTHER_PIN, OTHER_TOTP_SECRET, OTHER_API_KEY))[
        "status"
    ]
    other = env.jwt
    assert (await env.get("order_book", jwt=other, key=OTHER_API_KEY))["data"] is None
    assert len((await env.get("order_book", jwt=mine))["data"]) == 1


# ---------------------------------------------------------------------- market data


async def test_ltp_with_both_paths(logged_in: Env) -> None:
    env = logged_in
    body = {"exchange": "NSE", "tradingsymbol": "SBIN-EQ", "symboltoken": "3045"}
    for target in (path("ltp"), *protocol.ALTERNATE_PATHS["ltp"]):
        data = (await env.post(target, body))["data"]
        assert data["ltp"] == 812.5 and data["symboltoken"] == "3045"
        assert set(data) == {"exchange", "tradingsymbol", "symboltoken", "open", "high"} | {
            "low",
            "close",
            "ltp",
        }
    assert (await env.post("ltp", {**body, "symboltoken": "1"}))["errorcode"] == "AB1009"


async def test_quote_modes_and_limits(logged_in: Env) -> None:
    env = logged_in
    body = {"mode": "FULL", "exchangeTokens": {"NSE": ["3045", "424242", ""]}}
    data = (await env.post("quote", body))["data"]
    (item,) = data["fetched"]
    assert item["tradingSymbol"] == "SBIN-EQ" and item["symbolToken"] == "3045"
    assert {"ltp", "open", "high", "low", "close", "depth", "52WeekHigh", "exchTradeTime"} <= set(
        item
    )
    assert len(item["depth"]["buy"]) == len(item["depth"]["sell"]) == 5
    assert item["depth"]["buy"][0]["price"] < item["depth"]["sell"][0]["price"]
    assert {u["errorCode"] for u in data["unfetched"]} == {"AB1018", "AB4018"}
    ltp_only = await env.post(protocol.ALTERNATE_PATHS["quote"][0], {**body, "mode": "LTP"})
    assert set(ltp_only["data"]["fetched"][0]) == {"exchange", "tradingSymbol", "symbolToken"} | {
        "ltp"
    }
    ohlc = (await env.post("quote", {**body, "mode": "OHLC"}))["data"]["fetched"][0]
    assert "close" in ohlc and "depth" not in ohlc
    too_many = {"mode": "LTP", "exchangeTokens": {"NSE": [str(i) for i in range(51)]}}
    assert (await env.post("quote", too_many))["status"] is False


async def test_candles_are_deterministic_and_span_is_capped(logged_in: Env) -> None:
    env = logged_in
    body = {
        "exchange": "NSE",
        "symboltoken": "3045",
        "interval": "FIVE_MINUTE",
        "fromdate": "2026-11-24 09:15",
        "todate": "2026-11-24 10:00",
    }
    first = (await env.post("candles", body))["data"]
    assert first == (await env.post("candles", body))["data"]
    assert len(first) == 10
    ts, o, h, low, c, v = first[0]
    assert ts == "2026-11-24T09:15:00+05:30"
    assert low <= min(o, c) <= max(o, c) <= h and v > 0
    index = (await env.post("candles", {**body, "symboltoken": "99926000"}))["data"]
    assert all(bar[5] == 0 for bar in index)
    wide = {**body, "interval": "ONE_MINUTE", "fromdate": "2026-09-01 09:15"}
    reply = await env.post("candles", wide)
    assert reply["status"] is False and "30 days" in reply["message"]
    daily = {**body, "interval": "ONE_DAY", "fromdate": "2026-11-16 00:00"}
    days = (await env.post("candles", daily))["data"]
    assert [d[0][:10] for d in days] == [
        "2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20",
        "2026-11-23", "2026-11-24",
    ]  # fmt: skip
    assert (await env.post("candles", {**body, "interval": "TWO_MINUTE"}))["status"] is False


async def test_search_scrip_and_margin(logged_in: Env) -> None:
    env = logged_in
    found = (await env.post("search_scrip", {"exchange": "NSE", "searchscrip": "SBIN"}))["data"]
    assert found == [{"exchange": "NSE", "tradingsymbol": "SBIN-EQ", "symboltoken": "3045"}]
    none = await env.post("search_scrip", {"exchange": "NSE", "searchscrip": "ZZZZ"})
    assert none["status"] is True and none["data"] is None
    ce = env.fake.instrument("NFO", NIFTY_CE_TOKENS[24000])
    positions = [
        {"exchange": "NSE", "qty": 10, "price": 0, "productType": "INTRADAY", "token": "3045"}
        | {"tradeType": "BUY"},
        {"exchange": "NFO", "qty": 75, "price": 100, "productType": "CARRYFORWARD"}
        | {"token": ce.token, "tradeType": "BUY"},
    ]
    data = (await env.post("margin", {"positions": positions}))["data"]
    assert data["totalMarginRequired"] == pytest.approx(812.5 * 10 * 0.2 + 7500)
    assert data["optionsBuy"]["totOptionsPremium"] == 7500.0


async def test_scrip_master_is_served_without_auth(env: Env) -> None:
    reply = await env.http.get(protocol.SCRIP_MASTER_PATH)
    rows = reply.json()
    assert reply.status_code == 200 and isinstance(rows, list)
    assert all(isinstance(v, str) for row in rows for v in row.values())
    by_token = {r["token"]: r for r in rows}
    assert by_token["3045"]["symbol"] == "SBIN-EQ"
    assert by_token["99926000"]["instrumenttype"] == "AMXIDX"
    assert {r["instrumenttype"] for r in rows} >= {"", "AMXIDX", "FUTIDX", "OPTIDX", "FUTCOM"}
    option = by_token[NIFTY_CE_TOKENS[24000]]
    assert option["strike"] == "2400000.000000" and option["tick_size"] == "5.000000"


async def test_custom_instruments() -> None:
    rows = [
        {
            "token": "1",
            "symbol": "ABC-EQ",
            "name": "ABC",
            "expiry": "",
            "strike": "-1.000000",
            "lotsize": "1",
            "instrumenttype": "",
            "exch_seg": "NSE",
            "tick_size": "5.000000",
        }
    ]
    fake = FakeSmartAPI(instruments=rows, prices={("NSE", "1"): Decimal("10")})
    assert fake.scrip_master == rows and fake.ltp("NSE", "1") == Decimal("10")


# ---------------------------------------------------------------------- GTT


@pytest.mark.parametrize("prefixed", [True, False])
async def test_gtt_lifecycle(logged_in: Env, prefixed: bool) -> None:
    env = logged_in

    def gtt(name: str) -> str:
        return path(name) if prefixed else protocol.ALTERNATE_PATHS[name][0]

    rule = {
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "exchange": "NSE",
        "transactiontype": "BUY",
        "producttype": "DELIVERY",
        "price": 790,
        "qty": 2,
        "triggerprice": 791,
        "disclosedqty": 0,
        "timeperiod": 365,
    }
    created = await env.post(gtt("gtt_create"), rule)
    assert created["status"] is True
    rule_id = created["data"]["id"]
    modified = await env.post(
        gtt("gtt_modify"),
        {"id": rule_id, "symboltoken": "3045", "exchange": "NSE", "price": 780}
        | {"qty": 3, "triggerprice": 781},
    )
    assert modified["data"] == {"id": rule_id}
    details = (await env.post("gtt_details", {"id": rule_id}))["data"]
    assert details["status"] == "NEW" and details["price"] == 780.0 and details["qty"] == 3
    assert details["createddate"].endswith("+05:30")
    listed = (await env.post("gtt_list", {"status": ["NEW"], "page": 1, "count": 10}))["data"]
    assert isinstance(listed, list) and listed[0]["id"] == int(rule_id)
    cancelled = await env.post(
        gtt("gtt_cancel"), {"id": rule_id, "symboltoken": "3045", "exchange": "NSE"}
    )
    assert cancelled["data"] == {"id": rule_id}
    assert (await env.post("gtt_details", {"id": rule_id}))["data"]["status"] == "CANCELLED"
    assert (await env.post("gtt_list", {"status": ["NEW"], "page": 1, "count": 10}))["data"] is None
    bad = await env.post(gtt("gtt_create"), {**rule, "exchange": "NFO"})
    assert bad["errorcode"] == "AB9010"


async def test_gtt_fires_an_order_when_triggered(logged_in: Env) -> None:
    env = logged_in
    rule = {
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "exchange": "NSE",
        "transactiontype": "BUY",
        "producttype": "DELIVERY",
        "price": 801,
        "qty": 1,
        "triggerprice": 800,
    }
    rule_id = (await env.post("gtt_create", rule))["data"]["id"]
    env.fake.set_price("NSE", "3045", Decimal("799"))
    details = (await env.post("gtt_details", {"id": rule_id}))["data"]
    assert details["status"] == "SENTTOEXCHANGE"
    (order,) = (await env.get("order_book"))["data"]
    assert order["status"] == "complete" and order["price"] == 801.0


# ---------------------------------------------------------------------- faults


async def test_http_5xx_fault(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.http_error(times=2, status=502, route="rms")
    for _ in range(2):
        reply = await env.http.get(path("rms"), headers=headers(env.jwt))
        assert reply.status_code == 502 and "text/html" in reply.headers["content-type"]
    assert (await env.get("rms"))["status"] is True
    assert (await env.get("profile"))["status"] is True


async def test_timeout_fault_does_not_place(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.timeout(route="place_order")
    with pytest.raises(httpx.ReadTimeout):
        await env.http.post(
            path("place_order"), headers=headers(env.jwt), json=order_body(), timeout=0.3
        )
    assert env.fake.orders(CLIENT_CODE) == []
    assert [r.outcome for r in env.fake.calls("place_order")] == ["timeout"]


async def test_timeout_after_effect_places_the_order(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.timeout_after_effect()
    with pytest.raises(httpx.ReadTimeout):
        await env.http.post(
            path("place_order"),
            headers=headers(env.jwt),
            json=order_body(ordertag="once"),
            timeout=0.3,
        )
    (order,) = (await env.get("order_book"))["data"]
    assert order["ordertag"] == "once" and order["status"] == "complete"
    assert len(env.fake.calls("place_order")) == 1


async def test_empty_body_fault_places_the_order(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.empty_body()
    reply = await env.http.post(path("place_order"), headers=headers(env.jwt), json=order_body())
    assert reply.status_code == 200 and reply.content == b""
    assert len((await env.get("order_book"))["data"]) == 1
    assert (await env.post("place_order", order_body()))["status"] is True  # one-shot


async def test_rate_limit_fault_is_plain_text(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.rate_limit(route="candles")
    reply = await env.http.post(path("candles"), headers=headers(env.jwt), json={})
    assert reply.status_code == 403
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text == protocol.RATE_LIMIT_TEXT


@pytest.mark.parametrize("code", ["AB1004", "AB2001"])
async def test_business_error_fault(logged_in: Env, code: str) -> None:
    env = logged_in
    env.fake.faults.error(code, route="place_order")
    reply = await env.post("place_order", order_body())
    assert reply["status"] is False and reply["errorcode"] == code and reply["data"] is None
    assert reply["message"] == protocol.ERROR_MESSAGES[code]
    assert env.fake.orders(CLIENT_CODE) == []


async def test_latency_fault_delays_the_reply(logged_in: Env) -> None:
    env = logged_in
    env.fake.faults.latency(30, route="rms")
    with pytest.raises(httpx.ReadTimeout):
        await env.http.get(path("rms"), headers=headers(env.jwt), timeout=0.3)
    env.fake.faults.latency(0, route="rms")
    assert (await env.get("rms"))["status"] is True


async def test_unknown_fault_route_is_refused() -> None:
    fake = FakeSmartAPI()
    with pytest.raises(ValueError, match="unknown SmartAPI route"):
        fake.faults.http_error(route="placeOrder")


async def test_real_rate_limiter_per_client_code(logged_in: Env) -> None:
    env = logged_in
    now = [0.0]
    env.fake.limiter.clock = lambda: now[0]
    env.fake.faults.rate_limiting = True
    assert (await env.get("order_book"))["status"] is True
    second = await env.http.get(path("order_book"), headers=headers(env.jwt))
    assert second.status_code == 403 and second.text == protocol.RATE_LIMIT_TEXT
    assert (await env.get("rms"))["status"] is True  # other buckets are independent
    now[0] = 1.0
    assert (await env.get("order_book"))["status"] is True  # the window has moved on


def test_rate_limiter_sliding_windows() -> None:
    from trading_backend.brokers.angel_one.fake import RateLimiter

    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    # orders: 9/s, 500/min, 1000/h per client code
    assert [limiter.allow("A", "orders") for _ in range(10)] == [True] * 9 + [False]
    assert limiter.allow("B", "orders")  # another client code has its own budget
    limiter.reset()
    allowed = 0
    for i in range(501):
        now[0] = i * 0.115  # ~8.7/s: under the per-second limit all along
        allowed += limiter.allow("A", "orders")
    assert allowed == 500  # the 501st, 57.5 s after the first, breaks 500/min
    now[0] = 60.0  # the first hits slide out of the minute window
    assert limiter.allow("A", "orders")
    assert limiter.allow("A", "unknown-group")  # no documented limit


async def test_requests_are_recorded_without_secrets(logged_in: Env) -> None:
    env = logged_in
    await env.place(ordertag="rec")
    (call,) = env.fake.calls("place_order")
    assert call.client_code == CLIENT_CODE and call.body["ordertag"] == "rec"
    assert call.outcome == "ok" and call.method == "POST"
    assert call.headers["authorization"] == "***" and call.headers["x-privatekey"] == "***"
    (login,) = env.fake.calls("login")
    assert login.client_code == CLIENT_CODE


async def test_bad_json_and_unknown_routes(logged_in: Env) -> None:
    env = logged_in
    bad = await env.http.post(path("place_order"), headers=headers(env.jwt), content=b"{not json")
    assert bad.status_code == 400 and bad.json()["status"] is False
    unknown = await env.http.get("/rest/secure/angelbroking/nope", headers=headers(env.jwt))
    assert unknown.status_code == 404 and unknown.json()["status"] is False
    wrong_method = await env.http.get(path("place_order"), headers=headers(env.jwt))
    assert wrong_method.status_code == 405


# ---------------------------------------------------------------------- order WebSocket


def ws_headers(jwt: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {jwt}",
        "x-api-key": API_KEY,
        "x-client-code": CLIENT_CODE,
        "x-feed-token": "unused",
    }


async def recv_json(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=5))


async def test_order_ws_greets_and_streams_events(logged_in: Env) -> None:
    env = logged_in
    async with websockets.connect(
        env.server.order_ws_url, additional_headers=ws_headers(env.jwt)
    ) as ws:
        hello = await recv_json(ws)
        assert hello["order-status"] == "AB00" and hello["user-id"] == CLIENT_CODE
        assert hello["status-code"] == "200" and hello["error-message"] == ""
        assert hello["orderData"]["orderid"] == "" and hello["orderData"]["price"] == 0
        placed = await env.place(ordertype="LIMIT", price="800")
        codes = [(await recv_json(ws))["order-status"] for _ in range(2)]
        assert codes == ["AB09", "AB01"]  # open pending, open
        env.fake.set_price("NSE", "3045", Decimal("799"))
        done = await recv_json(ws)
        assert done["order-status"] == "AB05"
        assert done["orderData"]["orderid"] == placed["orderid"]
        assert done["orderData"]["status"] == "complete"
        assert isinstance(done["orderData"]["price"], float)
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "pong"
        await env.place(ordertag="x" * 3, quantity="999999")  # rejected: insufficient funds
        rejected = await recv_json(ws)
        assert rejected["order-status"] == "AB03" and rejected["orderData"]["text"]


async def test_order_ws_bearer_optional_and_handshake_errors(logged_in: Env) -> None:
    env = logged_in
    url = env.server.order_ws_url
    with pytest.raises(websockets.InvalidStatus) as bad:
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert bad.value.response.status_code == 401
    bare = {"Authorization": env.jwt}
    sockets = [await websockets.connect(url, additional_headers=bare) for _ in range(3)]
    try:
        for ws in sockets:
            assert (await recv_json(ws))["order-status"] == "AB00"
        with pytest.raises(websockets.InvalidStatus) as limit:
            async with websockets.connect(url, additional_headers=bare):
                pass
        assert limit.value.response.status_code == 429
    finally:
        for ws in sockets:
            await ws.close()


async def test_order_ws_expired_token_gets_403(env: Env) -> None:
    assert (await env.login())["status"] is True
    env.clock.advance(days=1)
    with pytest.raises(websockets.InvalidStatus) as expired:
        async with websockets.connect(
            env.server.order_ws_url, additional_headers=ws_headers(env.jwt)
        ):
            pass
    assert expired.value.response.status_code == 403


async def test_drop_websockets_closes_abnormally(logged_in: Env) -> None:
    env = logged_in
    async with websockets.connect(
        env.server.order_ws_url, additional_headers=ws_headers(env.jwt)
    ) as ws:
        assert (await recv_json(ws))["order-status"] == "AB00"
        assert env.fake.faults.drop_websockets() == 1
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert closed.value.rcvd is None  # no close frame: a 1006 abnormal closure
    assert env.fake.order_socket_count(CLIENT_CODE) == 0


# ---------------------------------------------------------------------- feed WebSocket


async def test_set_price_publishes_feed_ticks(logged_in: Env) -> None:
    env = logged_in
    assert env.fake.feed is not None  # the feed endpoint is mounted
    from trading_backend.brokers.angel_one import packets

    feed_headers = {
        "Authorization": env.jwt,
        "x-api-key": API_KEY,
        "x-client-code": CLIENT_CODE,
        "x-feed-token": env.feed,
    }
    async with websockets.connect(env.server.feed_url, additional_headers=feed_headers) as ws:
        request = {
            "action": 1,
            "params": {"mode": 1, "tokenList": [{"exchangeType": 1, "tokens": ["3045"]}]},
        }
        await ws.send(json.dumps(request))
        feed = env.fake.feed
        await feed.wait_until(lambda: bool(feed.subscriptions(CLIENT_CODE)))  # type: ignore[attr-defined]
        env.fake.set_price("NSE", "3045", Decimal("815.25"))
        tick = packets.parse(await asyncio.wait_for(ws.recv(), timeout=5))
        assert tick.token == "3045" and tick.ltp == 81525
    for bad in (
        {**feed_headers, "x-feed-token": "wrong"},
        {**feed_headers, "Authorization": "Bearer not-a-jwt"},
        {**feed_headers, "x-api-key": OTHER_API_KEY},
        {**feed_headers, "x-client-code": OTHER_CLIENT_CODE},
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(env.server.feed_url, additional_headers=bad):
                pass
        assert refused.value.response.status_code == 401
    # the Java SDK style: client code + feed token only, here as query parameters
    query = f"?clientCode={CLIENT_CODE}&feedToken={env.feed}"
    async with websockets.connect(env.server.feed_url + query) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "pong"


# ---------------------------------------------------------------------- fixtures


async def test_angel_fake_fixture_serves_the_support_client(angel_fake: RunningFake) -> None:
    async with httpx.AsyncClient(base_url=angel_fake.base_url) as http:
        body = {"clientcode": CLIENT_CODE, "password": PIN, "totp": totp()}
        reply = (await http.post(LOGIN, headers=headers(), json=body)).json()
    assert reply["status"] is True
    assert angel_fake.feed_url.endswith(protocol.FEED_WS_PATH)
    assert angel_fake.order_ws_url.endswith(protocol.ORDER_WS_PATH)


async def test_threaded_server_pushes_events_from_another_thread() -> None:
    from trading_backend.brokers.angel_one.fake import FakeThread

    clock = Clock()
    fake = FakeSmartAPI(clock=clock)
    fake.add_client(CLIENT_CODE, PIN, TOTP_SECRET, API_KEY)
    server = FakeThread(fake).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            body = {"clientcode": CLIENT_CODE, "password": PIN, "totp": totp(at=clock.now)}
            jwt = (await http.post(LOGIN, headers=headers(), json=body)).json()["data"]["jwtToken"]
            async with websockets.connect(
                server.order_ws_url, additional_headers=ws_headers(jwt)
            ) as ws:
                assert (await recv_json(ws))["order-status"] == "AB00"
                placed = (
                    await http.post(
                        path("place_order"),
                        headers=headers(jwt),
                        json=order_body(ordertype="LIMIT", price="800"),
                    )
                ).json()["data"]
                assert [(await recv_json(ws))["order-status"] for _ in range(2)] == [
                    "AB09",
                    "AB01",
                ]
                fake.set_price("NSE", "3045", Decimal("800"))  # from this (non-server) thread
                done = await recv_json(ws)
                assert done["order-status"] == "AB05"
                assert done["orderData"]["orderid"] == placed["orderid"]
                server.settle()
    finally:
        server.stop()


async def test_short_position_has_signed_netqty_and_ioc_cancels(logged_in: Env) -> None:
    env = logged_in
    await env.place(transactiontype="SELL", quantity="3")
    env.fake.set_price("NSE", "3045", Decimal("810"))
    position = (await env.get("positions"))["data"][0]
    assert position["netqty"] == "-3" and position["sellavgprice"] == "812.50"
    assert position["unrealised"] == "7.50" and position["netvalue"] == "2437.50"
    ioc = await env.place(ordertype="LIMIT", price="700", duration="IOC")
    row = await env.order(ioc["orderid"])
    assert row["status"] == "cancelled" and row["cancelsize"] == "1"
