"""Our SmartStream client (``angel_one.feed``) against the fake feed endpoint
(``angel_one.fake.feed_ws``) served by uvicorn on a pre-bound socket: handshake auth and
refusals, subscribe / unsubscribe and ticks in every mode, text ping/pong and the
staleness watchdog, drop + reconnect + resubscription, a refreshed feed token after a 401,
the 3-connection limit (429), the subscription quotas (client side and E1002) and E1001.

Everything waits on state changes (``wait_until`` of the fake and of the client), never
on sleeps."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.fake.feed_ws import FakeFeedServer
from trading_backend.brokers.angel_one.feed import (
    AngelOneFeed,
    FeedAuthError,
    FeedConnectionLimit,
    FeedCredentials,
    FeedRejected,
    FeedSubscriptionLimit,
)
from trading_backend.brokers.base import BrokerError

CLIENT = "A123456"
FEED_TOKEN = "feed-token-1"
API_KEY = "test-api-key"
JWT = "eyJ.test.jwt"
NOW = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # Wednesday 10:00 IST


@dataclass
class FeedServer:
    """The fake feed on a real socket, plus the handshakes it saw."""

    fake: FakeFeedServer
    url: str
    valid_tokens: set[str]
    handshakes: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def feed_server() -> AsyncIterator[FeedServer]:
    valid = {FEED_TOKEN}
    handshakes: list[dict[str, str]] = []

    def authenticate(params: Mapping[str, str]) -> str | None:
        handshakes.append(dict(params))
        client = params.get("x-client-code") or params.get("clientCode")
        token = params.get("x-feed-token") or params.get("feedToken")
        return client if client and token in valid else None

    fake = FakeFeedServer(authenticate, clock=lambda: NOW)
    app = Starlette(routes=[WebSocketRoute("/smart-stream", fake.endpoint)])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    web = uvicorn.Server(config)
    task = asyncio.create_task(web.serve(sockets=[listener]))
    try:
        yield FeedServer(fake, f"ws://127.0.0.1:{port}/smart-stream", valid, handshakes)
    finally:
        web.should_exit = True
        await task
        listener.close()


class Ticks:
    def __init__(self) -> None:
        self.packets: list[packets.Packet] = []

    async def __call__(self, packet: packets.Packet) -> None:
        self.packets.append(packet)

    def of(self, token: str, mode: int) -> list[packets.Packet]:
        return [p for p in self.packets if p.token == token and p.mode == mode]


def credentials(token: str = FEED_TOKEN, client: str = CLIENT) -> FeedCredentials:
    return FeedCredentials(client, token, api_key=API_KEY, auth_token=f"Bearer {JWT}")


def make_feed(server: FeedServer, on_tick: Any = None, **options: Any) -> AngelOneFeed:
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    return AngelOneFeed(credentials(), on_tick, url=server.url, proxy=None, **options)


async def test_handshake_sends_the_four_auth_headers(feed_server: FeedServer) -> None:
    feed = make_feed(feed_server)
    await feed.start()
    try:
        assert feed.connected and feed.stats().connections == 1
        seen = feed_server.handshakes[-1]
        assert seen["x-client-code"] == CLIENT
        assert seen["x-feed-token"] == FEED_TOKEN
        assert seen["x-api-key"] == API_KEY
        assert seen["authorization"] == f"Bearer {JWT}"  # never "Bearer Bearer"
        assert FEED_TOKEN not in repr(feed) and FEED_TOKEN not in repr(feed.credentials)
    finally:
        await feed.close()
    await feed_server.fake.wait_until(lambda: feed_server.fake.connection_count() == 0)


async def test_a_bad_feed_token_is_refused_with_401_and_its_reason(
    feed_server: FeedServer,
) -> None:
    feed = AngelOneFeed(credentials("stale-token"), url=feed_server.url, proxy=None)
    with pytest.raises(FeedAuthError) as refused:
        await feed.start()
    assert "Invalid Header" in refused.value.message
    assert "stale-token" not in refused.value.message
    assert feed_server.fake.refusals == [(401, "Invalid Header - Invalid Auth token")]
    assert not feed.connected


async def test_missing_client_code_names_the_header(feed_server: FeedServer) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(feed_server.url, additional_headers={"x-feed-token": "x"}):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["x-error-message"] == (
        "Invalid Header - Invalid Client Code"
    )


async def test_query_parameters_authenticate_too(feed_server: FeedServer) -> None:
    url = f"{feed_server.url}?clientCode={CLIENT}&feedToken={FEED_TOKEN}&apiKey={API_KEY}"
    async with websockets.connect(url) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "pong"
    assert feed_server.fake.accepted == 1


async def test_subscribe_delivers_one_packet_per_subscribed_mode(feed_server: FeedServer) -> None:
    fake = feed_server.fake
    ticks = Ticks()
    feed = make_feed(feed_server, ticks)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045")], packets.MODE_LTP)
        await feed.subscribe([(1, "3045")], packets.MODE_SNAP_QUOTE)
        await feed.subscribe([(2, "43650")], packets.MODE_QUOTE)
        await feed.subscribe([("CDS", "1234")], packets.MODE_LTP)
        await feed.subscribe([("NSE", "2885")], packets.MODE_DEPTH_20)
        wanted = {(1, "3045", 1), (1, "3045", 3), (2, "43650", 2), (13, "1234", 1), (1, "2885", 4)}
        await fake.wait_until(lambda: fake.subscriptions(CLIENT) == wanted)
        assert feed.subscriptions == 5 and feed.subscribed() == wanted

        assert await fake.publish("NSE", "3045", {"ltp": Decimal("812.35"), "volume": 1000}) == 2
        assert await fake.publish("NFO", "43650", Decimal("22510.50")) == 1
        assert await fake.publish("CDS", "1234", Decimal("83.2512345")) == 1
        assert await fake.publish("NSE", "2885", Decimal("2950.05")) == 1
        assert await fake.publish("NSE", "9999", Decimal("1")) == 0  # nobody subscribed
        await feed.wait_until(lambda: len(ticks.packets) == 5)

        (ltp,) = ticks.of("3045", packets.MODE_LTP)
        assert isinstance(ltp, packets.LtpPacket)
        assert (ltp.exchange_type, ltp.ltp) == (1, 81235)
        assert ltp.exchange_timestamp == int(NOW.timestamp() * 1000)
        (snap,) = ticks.of("3045", packets.MODE_SNAP_QUOTE)
        assert isinstance(snap, packets.SnapQuotePacket)
        assert snap.volume == 1000 and snap.bids[0].price < snap.ltp < snap.asks[0].price
        (quote,) = ticks.of("43650", packets.MODE_QUOTE)
        assert isinstance(quote, packets.QuotePacket)
        assert packets.to_price(quote.ltp, quote.exchange_type) == Decimal("22510.50")
        (currency,) = ticks.of("1234", packets.MODE_LTP)
        assert currency.ltp == 832512345  # 1e-7 rupee units on cde_fo
        assert packets.to_price(currency.ltp, 13) == Decimal("83.2512345")
        (depth,) = ticks.of("2885", packets.MODE_DEPTH_20)
        assert isinstance(depth, packets.Depth20Packet) and len(depth.bids) == 20
        assert feed.stats().ticks == 5 and feed.last_tick_at is not None
    finally:
        await feed.close()


async def test_unsubscribe_stops_the_ticks(feed_server: FeedServer) -> None:
    fake = feed_server.fake
    feed = make_feed(feed_server)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045"), ("NSE", "2885")])
        await fake.wait_until(lambda: len(fake.subscriptions()) == 2)
        await feed.unsubscribe([("NSE", "3045"), ("NSE", "1")])  # unknown pairs are ignored
        await fake.wait_until(lambda: fake.subscriptions() == {(1, "2885", 1)})
        assert await fake.publish("NSE", "3045", Decimal("800")) == 0
        assert feed.subscribed() == {(1, "2885", 1)}
        assert [r.action for r in fake.requests] == [1, 0]
    finally:
        await feed.close()


async def test_text_pings_are_answered_and_keep_the_watchdog_quiet(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    # Pings every 20 ms, stale after 300 ms: 30 pongs take longer than the staleness
    # limit, so only the pongs can be keeping the connection alive.
    feed = make_feed(feed_server, ping_interval=0.02, stale_after=0.3)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.pings >= 30)
        assert feed.connected and feed.reconnects == 0 and fake.accepted == 1
    finally:
        await feed.close()


async def test_the_watchdog_reconnects_a_socket_that_stopped_answering(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    feed = make_feed(feed_server, ping_interval=0.02, stale_after=0.15)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045")])
        fake.answer_pings = False  # open but dead: pings go unanswered, no ticks
        await feed.wait_until(lambda: feed.reconnects >= 1)
        # The new socket got the registry again.
        await fake.wait_until(lambda: len(fake.subscribe_requests("3045")) >= 2)
        assert fake.accepted >= 2
    finally:
        await feed.close()


async def test_drop_reconnects_and_resubscribes_everything(feed_server: FeedServer) -> None:
    fake = feed_server.fake
    ticks = Ticks()
    feed = make_feed(feed_server, ticks)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045"), ("NFO", "43650")], packets.MODE_QUOTE)
        await feed.subscribe([("NSE", "3045")], packets.MODE_LTP)
        wanted = {(1, "3045", 2), (2, "43650", 2), (1, "3045", 1)}
        await fake.wait_until(lambda: fake.subscriptions() == wanted)

        assert await fake.drop_all() == 1
        await feed.wait_until(lambda: feed.reconnects == 1 and feed.connected)
        await fake.wait_until(lambda: fake.subscriptions() == wanted)
        assert fake.accepted == 2

        assert await fake.publish("NSE", "3045", Decimal("815")) == 2
        await feed.wait_until(lambda: len(ticks.packets) == 2)
        assert {p.mode for p in ticks.packets} == {1, 2}
    finally:
        await feed.close()


async def test_a_401_on_reconnect_asks_for_fresh_credentials(feed_server: FeedServer) -> None:
    fake = feed_server.fake
    refreshed: list[str] = []

    async def refresh() -> FeedCredentials:
        # What the adapter does: re-login, which yields a new feed token.
        feed_server.valid_tokens.add("feed-token-2")
        refreshed.append("feed-token-2")
        return credentials("feed-token-2")

    feed = make_feed(feed_server, refresh_credentials=refresh)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045")])
        await fake.wait_until(lambda: len(fake.subscriptions()) == 1)
        feed_server.valid_tokens.discard(FEED_TOKEN)  # the daily expiry
        await fake.drop_all()
        await feed.wait_until(lambda: feed.reconnects == 1 and feed.connected)
        await fake.wait_until(lambda: len(fake.subscriptions()) == 1)
        assert refreshed == ["feed-token-2"]
        assert (401, "Invalid Header - Invalid Auth token") in fake.refusals
        assert feed_server.handshakes[-1]["x-feed-token"] == "feed-token-2"
    finally:
        await feed.close()


async def test_a_401_without_a_refresh_stops_the_connection_and_reports(
    feed_server: FeedServer,
) -> None:
    errors: list[BrokerError] = []

    async def on_error(error: BrokerError) -> None:
        errors.append(error)

    feed = make_feed(feed_server, on_error=on_error)
    await feed.start()
    try:
        feed_server.valid_tokens.clear()
        await feed_server.fake.drop_all()
        await feed.wait_until(lambda: bool(errors))
        assert isinstance(errors[0], FeedAuthError) and not feed.connected
    finally:
        await feed.close()


async def test_the_fourth_connection_of_a_client_code_is_refused_with_429(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    feeds = [make_feed(feed_server) for _ in range(3)]
    for feed in feeds:
        await feed.start()
    try:
        fourth = make_feed(feed_server)
        with pytest.raises(FeedConnectionLimit):
            await fourth.start()
        assert fake.refusals == [(429, "Too Many Requests")]
        assert fake.connection_count(CLIENT) == 3
        # Another client code is not affected.
        other = AngelOneFeed(credentials(client="B999"), url=feed_server.url, proxy=None)
        await other.start()
        await other.close()
    finally:
        for feed in feeds:
            await feed.close()


async def test_a_429_on_reconnect_is_retried_until_a_slot_frees(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    feed = make_feed(feed_server)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "3045")])
        fake.max_connections = 0  # as if the dead socket still held the last slot
        await fake.drop_all()
        await feed.wait_until(lambda: isinstance(feed.last_error, FeedConnectionLimit))
        assert not feed.connected
        fake.max_connections = 3
        await feed.wait_until(lambda: feed.connected and feed.reconnects == 1)
        await fake.wait_until(lambda: fake.subscriptions() == {(1, "3045", 1)})
        assert (429, "Too Many Requests") in fake.refusals
    finally:
        await feed.close()
    # close() sent a close frame: the fake freed the slot without waiting for a timeout.
    await fake.wait_until(lambda: fake.connection_count() == 0)


async def test_subscriptions_spread_over_three_connections_and_stop_there(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    feed = make_feed(feed_server, max_subscriptions=2)
    await feed.start()
    try:
        tokens = [("NSE", str(n)) for n in range(1, 7)]
        await feed.subscribe(tokens[:3])
        assert feed.connections == 2
        with pytest.raises(FeedSubscriptionLimit) as refused:
            await feed.subscribe([*tokens[3:], ("NSE", "7")])  # 4 more > 3 left
        assert refused.value.code == "RATE_LIMITED" and feed.subscriptions == 3
        await feed.subscribe(tokens[3:])
        assert feed.connections == 3 and feed.subscriptions == 6
        await fake.wait_until(lambda: len(fake.subscriptions()) == 6)
        assert sorted(c.count for c in fake.connections) == [2, 2, 2]
        await feed.subscribe(tokens)  # all already there: nothing to do, no error
    finally:
        await feed.close()


async def test_the_server_quota_e1002_is_reported_and_unregistered(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    fake.max_subscriptions = 2
    errors: list[BrokerError] = []

    async def on_error(error: BrokerError) -> None:
        errors.append(error)

    feed = make_feed(feed_server, on_error=on_error)
    await feed.start()
    try:
        await feed.subscribe([("NSE", "1"), ("NSE", "2")])
        await feed.subscribe([("NSE", "3")])
        await feed.wait_until(lambda: bool(errors))
        assert isinstance(errors[0], FeedSubscriptionLimit)
        assert feed.subscribed() == {(1, "1", 1), (1, "2", 1)}
        assert fake.errors == [(CLIENT, "E1002")]
        assert fake.subscriptions() == {(1, "1", 1), (1, "2", 1)}
    finally:
        await feed.close()


async def test_an_e1001_frame_is_reported_and_the_connection_kept(
    feed_server: FeedServer,
) -> None:
    errors: list[BrokerError] = []

    async def on_error(error: BrokerError) -> None:
        errors.append(error)

    feed = make_feed(feed_server, on_error=on_error)
    await feed.start()
    try:
        assert await feed_server.fake.send_error("E1001", CLIENT) == 1
        await feed.wait_until(lambda: bool(errors))
        assert isinstance(errors[0], FeedRejected)
        assert errors[0].details["error_code"] == "E1001"
        assert feed.connected and feed.reconnects == 0
    finally:
        await feed.close()


async def test_depth_20_is_limited_to_50_tokens_per_connection(feed_server: FeedServer) -> None:
    fake = feed_server.fake

    def depth(tokens: list[str]) -> str:
        token_list = [{"exchangeType": 1, "tokens": tokens}]
        return json.dumps({"action": 1, "params": {"mode": 4, "tokenList": token_list}})

    async with raw_connection(feed_server) as ws:
        await ws.send(depth([str(n) for n in range(50)]))
        await fake.wait_until(lambda: len(fake.subscriptions()) == 50)
        await ws.send(depth(["50"]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["errorCode"] == "E1002"
        assert len(fake.subscriptions()) == 50


async def test_bad_requests_are_refused_locally(feed_server: FeedServer) -> None:
    feed = make_feed(feed_server)
    with pytest.raises(FeedRejected):
        await feed.subscribe([("NFO", "43650")], packets.MODE_DEPTH_20)
    with pytest.raises(FeedRejected):
        await feed.subscribe([("LSE", "1")])
    with pytest.raises(FeedRejected):
        await feed.subscribe([("NSE", "x" * 26)])
    with pytest.raises(FeedRejected):
        await feed.subscribe([("NSE", "1")], mode=7)
    assert feed.subscriptions == 0


def raw_connection(server: FeedServer) -> Any:
    headers = {"x-client-code": CLIENT, "x-feed-token": FEED_TOKEN}
    return websockets.connect(server.url, additional_headers=headers)


async def test_malformed_requests_get_e1001_with_the_correlation_id(
    feed_server: FeedServer,
) -> None:
    replies: list[dict[str, Any]] = []
    async with raw_connection(feed_server) as ws:
        for bad in (
            "{not json",
            json.dumps({"correlationID": "abcde12345", "action": 1}),
            json.dumps({"action": 1, "params": {"mode": 9, "tokenList": []}}),
            json.dumps({"action": 1, "params": {"mode": 1, "tokenList": [{"exchangeType": 6}]}}),
        ):
            await ws.send(bad)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    assert [r["errorCode"] for r in replies] == ["E1001"] * 4
    assert {r["errorMessage"] for r in replies} == {"Invalid Request Payload."}
    assert [r["correlationID"] for r in replies] == ["", "abcde12345", "", ""]
    assert feed_server.fake.errors == [(CLIENT, "E1001")] * 4


async def test_string_exchange_types_and_duplicates_are_tolerated(
    feed_server: FeedServer,
) -> None:
    fake = feed_server.fake
    request = {
        "correlationID": "abcde12345",
        "action": 1,
        "params": {"mode": 1, "tokenList": [{"exchangeType": "1", "tokens": ["3045", "3045"]}]},
    }
    async with raw_connection(feed_server) as ws:
        await ws.send(json.dumps(request))
        await ws.send(json.dumps(request))
        await fake.wait_until(lambda: len(fake.requests) == 2)
        assert fake.connections[0].count == 1
        assert await fake.publish("NSE", "3045", Decimal("812.35")) == 1
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, bytes) and len(frame) == packets.LTP_SIZE
        assert packets.parse(frame).ltp == 81235
