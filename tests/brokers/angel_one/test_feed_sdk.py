"""The official SDK's feed client (``SmartWebSocketV2``, websocket-client in a thread)
against the fake feed endpoint: it authenticates with its own headers, its subscribe
frame is understood, and the SnapQuote packet the fake sends decodes in the SDK to the
price we published, with best-five sides labelled as the SDK expects. Proof that the fake
speaks what the real service speaks to the official client, not only to ours."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.angel_one.test_feed import API_KEY, CLIENT, FEED_TOKEN, JWT, FeedServer
from tests.brokers.angel_one.test_feed import feed_server as feed_server


async def test_the_official_sdk_client_gets_the_fakes_ticks(
    feed_server: FeedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the SDK writes ./logs/<date>/app.log
    from SmartApi.smartWebSocketV2 import SmartWebSocketV2

    # Its resubscribe registry is a class attribute shared by every instance: isolate it.
    monkeypatch.setattr(SmartWebSocketV2, "input_request_dict", {})
    fake = feed_server.fake
    sws = SmartWebSocketV2(
        f"Bearer {JWT}", API_KEY, CLIENT, FEED_TOKEN, max_retry_attempt=0, retry_delay=0
    )
    sws.ROOT_URI = feed_server.url
    received: list[dict[str, Any]] = []
    got_tick = threading.Event()

    def on_open(_: object) -> None:
        sws.subscribe("abcde12345", 3, [{"exchangeType": 1, "tokens": ["3045"]}])

    def on_data(_: object, message: dict[str, Any]) -> None:
        received.append(message)
        got_tick.set()

    sws.on_open = on_open
    sws.on_data = on_data
    # SDK bugs (BROKER_PROTOCOLS.md §1.12): ``_on_close`` takes one argument where
    # websocket-client passes three, and ``on_error`` is then called with two where the
    # default takes none. Neutralised so closing the socket ends the thread quietly.
    sws._on_close = lambda *_: None
    sws.on_error = lambda *_: None
    thread = threading.Thread(target=sws.connect, name="sdk-feed", daemon=True)
    thread.start()
    try:
        await fake.wait_until(lambda: fake.subscriptions(CLIENT) == {(1, "3045", 3)})
        seen = feed_server.handshakes[-1]
        assert seen["authorization"] == f"Bearer {JWT}" and seen["x-api-key"] == API_KEY
        assert fake.requests[-1].correlation_id == "abcde12345"

        assert await fake.publish("NSE", "3045", {"ltp": Decimal("812.35"), "volume": 5}) == 1
        assert await asyncio.to_thread(got_tick.wait, 10)
        tick = received[0]
        assert tick["subscription_mode"] == 3 and tick["token"] == "3045"
        assert tick["last_traded_price"] == 81235
        assert tick["volume_trade_for_the_day"] == 5
        assert tick["best_5_buy_data"][0]["price"] == 81230  # buys labelled buys
        assert tick["best_5_sell_data"][0]["price"] == 81240
    finally:
        # The server ends the socket first: a client-side close alone can wait out the
        # SDK's own 10 s select timeout on a loaded machine. Off the loop: the close
        # handshake needs this loop (the fake) to answer.
        await fake.drop_all()
        await asyncio.to_thread(sws.close_connection)
        # websocket-client may sit in its 10 s select before noticing; the thread is a
        # daemon and its socket is already gone, so it is not waited for any longer.
        await asyncio.to_thread(thread.join, 1)
    await fake.wait_until(lambda: fake.connection_count() == 0)
