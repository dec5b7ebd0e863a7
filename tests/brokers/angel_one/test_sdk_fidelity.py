"""Fidelity proof: the official ``smartapi-python`` SDK, unchanged except for its root URL
(and the class-level ``_rootUrl`` that ``individual_order_details`` uses), runs every REST
route it knows against our fake and gets sane data back; ``SmartWebSocketOrderUpdate``
receives order updates from the fake's order-status WebSocket.

The SDK is synchronous, so the fake runs on a background thread (``angel_fake_thread``).
Importing ``SmartApi.smartConnect`` would try to reach api.ipify.org once: ``requests.get``
is stubbed for the duration of the import. The SDK writes ``./logs/<date>/app.log``, so
every test runs in ``tmp_path``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.brokers.angel_one.support import API_KEY, CLIENT_CODE, PIN, TOTP_SECRET
from trading_backend.brokers.angel_one.fake import FakeThread
from trading_backend.brokers.angel_one.fake.auth import TOTP
from trading_backend.brokers.angel_one.fake.instruments import NIFTY_CE_TOKENS
from trading_backend.brokers.angel_one.protocol import IST


def _import_sdk() -> tuple[type[Any], type[Any]]:
    real_get = requests.get

    def offline(*_: Any, **__: Any) -> Any:
        raise requests.ConnectionError("offline test: no api.ipify.org")

    requests.get = offline  # type: ignore[assignment]
    try:
        from SmartApi.smartConnect import SmartConnect
        from SmartApi.smartWebSocketOrderUpdate import SmartWebSocketOrderUpdate
    finally:
        requests.get = real_get  # type: ignore[assignment]
    return SmartConnect, SmartWebSocketOrderUpdate


SmartConnect, SmartWebSocketOrderUpdate = _import_sdk()
# The SDK's own constructor uses deprecated ssl options; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.OP_NO_SSL:DeprecationWarning")


@pytest.fixture
def sdk(
    angel_fake_thread: FakeThread, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A logged-in SDK session (generateSession with a pyotp code) against the fake."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SmartConnect, "_rootUrl", angel_fake_thread.base_url)
    angel_fake_thread.fake.faults.rate_limiting = False  # the SDK has no limiter of its own
    smart = SmartConnect(api_key=API_KEY, root=angel_fake_thread.base_url, timeout=5)
    session = smart.generateSession(CLIENT_CODE, PIN, TOTP(TOTP_SECRET).now())
    assert session["status"] is True, session
    data = session["data"]
    assert data["clientcode"] == CLIENT_CODE and data["jwtToken"].startswith("Bearer eyJ")
    assert data["refreshToken"] and data["feedToken"] and smart.userId == CLIENT_CODE
    yield smart


def sbin_order(**overrides: Any) -> dict[str, Any]:
    params = {
        "variety": "NORMAL",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "transactiontype": "BUY",
        "exchange": "NSE",
        "ordertype": "MARKET",
        "producttype": "INTRADAY",
        "duration": "DAY",
        "price": "0",
        "squareoff": "0",
        "stoploss": "0",
        "quantity": "1",
        "triggerprice": None,  # the SDK drops None values
    }
    params.update(overrides)
    return params


def test_session_tokens_profile_funds(sdk: Any) -> None:
    refreshed = sdk.generateToken(sdk.refresh_token)
    assert refreshed["status"] is True and sdk.access_token == refreshed["data"]["jwtToken"]
    assert sdk.feed_token == refreshed["data"]["feedToken"]
    profile = sdk.getProfile(sdk.refresh_token)
    assert profile["data"]["clientcode"] == CLIENT_CODE
    rms = sdk.rmsLimit()
    assert rms["status"] is True
    assert Decimal(rms["data"]["availablecash"]) == Decimal("1000000")
    out = sdk.terminateSession(CLIENT_CODE)
    assert out["status"] is True
    after = sdk.getProfile(sdk.refresh_token)
    assert after == {
        "success": False,
        "message": "Invalid Token",
        "errorCode": "AG8001",
        "data": "",
    }


def test_bad_totp_comes_back_as_data(
    angel_fake_thread: FakeThread, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    smart = SmartConnect(api_key=API_KEY, root=angel_fake_thread.base_url, timeout=5)
    reply = smart.generateSession(CLIENT_CODE, PIN, "000000")
    assert reply == {
        "status": False,
        "message": "Invalid totp",
        "errorcode": "AB1050",
        "data": None,
    }


def test_orders_lifecycle(sdk: Any, angel_fake_thread: FakeThread) -> None:
    orderid = sdk.placeOrder(sbin_order(ordertag="sdk-1"))
    assert isinstance(orderid, str) and len(orderid) == 15
    full = sdk.placeOrderFullResponse(sbin_order(ordertype="LIMIT", price="700", quantity="2"))
    assert full["status"] is True
    limit_id, unique_id = full["data"]["orderid"], full["data"]["uniqueorderid"]
    assert full["data"]["script"] == "SBIN-EQ"
    modified = sdk.modifyOrder(
        {
            "variety": "NORMAL",
            "orderid": limit_id,
            "ordertype": "LIMIT",
            "producttype": "INTRADAY",
            "duration": "DAY",
            "price": "705",
            "quantity": "2",
            "tradingsymbol": "SBIN-EQ",
            "symboltoken": "3045",
            "exchange": "NSE",
        }
    )
    assert modified["status"] is True and modified["data"]["orderid"] == limit_id
    details = sdk.individual_order_details(unique_id)
    assert details["data"]["price"] == 705.0 and details["data"]["status"] == "open"
    cancelled = sdk.cancelOrder(limit_id, "NORMAL")
    assert cancelled["status"] is True and cancelled["data"]["uniqueorderid"] == unique_id
    book = sdk.orderBook()["data"]
    statuses = {o["orderid"]: o["status"] for o in book}
    assert statuses == {orderid: "complete", limit_id: "cancelled"}
    assert next(o for o in book if o["orderid"] == orderid)["ordertag"] == "sdk-1"
    trades = sdk.tradeBook()["data"]
    assert [t["orderid"] for t in trades] == [orderid]
    positions = sdk.position()["data"]
    assert positions[0]["tradingsymbol"] == "SBIN-EQ" and positions[0]["netqty"] == "1"
    converted = sdk.convertPosition(
        {
            "exchange": "NSE",
            "oldproducttype": "INTRADAY",
            "newproducttype": "DELIVERY",
            "tradingsymbol": "SBIN-EQ",
            "transactiontype": "BUY",
            "quantity": 1,
            "type": "DAY",
        }
    )
    assert converted["status"] is True
    assert {p["producttype"]: p["netqty"] for p in sdk.position()["data"]}["DELIVERY"] == "1"
    ignored = sdk.placeOrder(sbin_order(variety="NOPE"))
    assert ignored is None  # the SDK swallows the AB1008 error and returns None
    assert [r.outcome for r in angel_fake_thread.fake.calls("place_order")][-1] == "AB1008"


def test_holdings(sdk: Any) -> None:
    assert sdk.holding()["data"] is None
    sdk.placeOrder(sbin_order(producttype="DELIVERY", quantity="4"))
    holding = sdk.holding()["data"]
    assert holding[0]["tradingsymbol"] == "SBIN-EQ" and holding[0]["quantity"] == 4
    every = sdk.allholding()["data"]
    assert every["holdings"][0]["symboltoken"] == "3045"
    assert every["totalholding"]["totalinvvalue"] > 0


def test_market_data(sdk: Any, angel_fake_thread: FakeThread) -> None:
    ltp = sdk.ltpData("NSE", "SBIN-EQ", "3045")
    assert ltp["status"] is True and ltp["data"]["ltp"] > 0
    angel_fake_thread.fake.set_price("NSE", "3045", Decimal("830.05"))
    assert sdk.ltpData("NSE", "SBIN-EQ", "3045")["data"]["ltp"] == 830.05
    ce = NIFTY_CE_TOKENS[24000]
    quote = sdk.getMarketData("FULL", {"NSE": ["3045", "99926000"], "NFO": [ce]})
    fetched = {q["symbolToken"]: q for q in quote["data"]["fetched"]}
    assert set(fetched) == {"3045", "99926000", ce}
    assert fetched["3045"]["ltp"] == 830.05 and len(fetched["3045"]["depth"]["buy"]) == 5
    assert quote["data"]["unfetched"] == []
    today = datetime.now(IST)
    candles = sdk.getCandleData(
        {
            "exchange": "NSE",
            "symboltoken": "3045",
            "interval": "ONE_DAY",
            "fromdate": (today - timedelta(days=10)).strftime("%Y-%m-%d 00:00"),
            "todate": today.strftime("%Y-%m-%d %H:%M"),
        }
    )
    assert candles["status"] is True and len(candles["data"]) >= 5
    assert all(len(bar) == 6 and bar[0].endswith("+05:30") for bar in candles["data"])
    found = sdk.searchScrip("NSE", "RELIANCE")
    assert found["data"] == [
        {"exchange": "NSE", "tradingsymbol": "RELIANCE-EQ", "symboltoken": "2885"}
    ]
    margin = sdk.getMarginApi(
        {
            "positions": [
                {"exchange": "NSE", "qty": 10, "price": 0, "productType": "DELIVERY"}
                | {"token": "3045", "tradeType": "BUY"}
            ]
        }
    )
    assert margin["data"]["totalMarginRequired"] == pytest.approx(8300.5)


def test_gtt(sdk: Any) -> None:
    rule_id = sdk.gttCreateRule(
        {
            "tradingsymbol": "SBIN-EQ",
            "symboltoken": "3045",
            "exchange": "NSE",
            "producttype": "MARGIN",
            "transactiontype": "BUY",
            "price": 700,
            "qty": 10,
            "disclosedqty": 10,
            "triggerprice": 701,
            "timeperiod": 365,
        }
    )
    assert rule_id == "1"
    modified = sdk.gttModifyRule(
        {"id": rule_id, "symboltoken": "3045", "exchange": "NSE", "price": 690, "qty": 5}
        | {"triggerprice": 691, "disclosedqty": 5, "timeperiod": 365}
    )
    assert modified == rule_id
    details = sdk.gttDetails(rule_id)["data"]
    assert details["price"] == 690.0 and details["qty"] == 5 and details["status"] == "NEW"
    listed = sdk.gttLists(["NEW", "ACTIVE"], 1, 10)["data"]
    assert [r["id"] for r in listed] == [1]
    cancelled = sdk.gttCancelRule({"id": rule_id, "symboltoken": "3045", "exchange": "NSE"})
    assert cancelled["status"] is True and cancelled["data"]["id"] == rule_id
    assert sdk.gttLists(["CANCELLED"], 1, 10)["data"][0]["status"] == "CANCELLED"


def test_rate_limit_reply_surfaces_as_sdk_data_exception(
    sdk: Any, angel_fake_thread: FakeThread
) -> None:
    from SmartApi.smartExceptions import DataException

    angel_fake_thread.fake.faults.rate_limit(route="order_book")
    with pytest.raises(DataException, match="exceeding access rate"):
        sdk.orderBook()


def test_order_update_websocket(sdk: Any, angel_fake_thread: FakeThread) -> None:
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    opened = threading.Event()

    class Collector(SmartWebSocketOrderUpdate):  # type: ignore[misc, valid-type]
        def on_open(self, wsapp: Any) -> None:
            opened.set()

        def on_message(self, wsapp: Any, message: Any) -> None:
            text = message.decode() if isinstance(message, bytes) else message
            if text.startswith("{"):
                received.put(json.loads(text))

    client = Collector(f"Bearer {sdk.access_token}", API_KEY, CLIENT_CODE, sdk.feed_token)
    client.WEBSOCKET_URI = angel_fake_thread.order_ws_url
    client.MAX_CONNECTION_RETRY_ATTEMPTS = 0  # no 10 s reconnect sleeps on close
    runner = threading.Thread(target=client.connect, daemon=True)
    runner.start()
    try:
        assert opened.wait(10)
        hello = received.get(timeout=10)
        assert hello["order-status"] == "AB00" and hello["user-id"] == CLIENT_CODE
        orderid = sdk.placeOrder(sbin_order())
        codes = []
        while "AB05" not in codes:
            update = received.get(timeout=10)
            assert update["orderData"]["orderid"] == orderid
            codes.append(update["order-status"])
        assert codes == ["AB09", "AB01", "AB05"]
    finally:
        # A server-side drop ends run_forever at once (a client-side close would wait for
        # the SDK's 10 s select timeout); with no retries left the thread then exits.
        angel_fake_thread.fake.faults.drop_websockets()
        runner.join(10)
        if runner.is_alive():
            client.close_connection()
    assert not runner.is_alive()
