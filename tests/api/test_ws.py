"""The live WebSocket ``/ws`` on a real server (uvicorn on a pre-bound socket): auth,
ticks, bars, the caller's own order updates only, and bad messages answered, not fatal."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from tests.api.conftest import Account, register
from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Server:
    def __init__(self, runtime: Runtime, clock: Clock, base: str) -> None:
        self.runtime, self.clock, self.base = runtime, clock, base

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    clock = Clock()
    runtime = Runtime(settings, clock=clock)
    await runtime.start(worker=True, market=False, health_monitor=False)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections wait in the backlog until uvicorn accepts them
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(runtime=runtime), lifespan="off", log_config=None, access_log=False
    )
    web = uvicorn.Server(config)
    task = asyncio.create_task(web.serve(sockets=[listener]))
    try:
        yield Server(runtime, clock, f"http://127.0.0.1:{port}")
    finally:
        web.should_exit = True
        await task
        listener.close()
        await runtime.stop()


async def receive(ws: Any, kind: str | None = None) -> dict[str, Any]:
    """The next message (of ``kind``, skipping others such as ticks)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        if kind is None or message["type"] == kind:
            return message


async def account(server: Server, name: str) -> Account:
    async with httpx.AsyncClient(base_url=server.base) as http:
        return await register(http, name)


def token(user: Account) -> str:
    return user.headers["Authorization"].removeprefix("Bearer ")


async def test_bad_credentials_close_the_socket(server: Server) -> None:
    async with websockets.connect(server.ws + "?token=not-a-token") as ws:
        error = await receive(ws)
        assert error["type"] == "error" and error["error_code"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_auth_by_first_message_then_ticks_and_bad_messages(server: Server) -> None:
    alice = await account(server, "alice")
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"action": "auth", "token": token(alice)}))
        assert (await receive(ws))["type"] == "welcome"

        await ws.send("not json")
        assert (await receive(ws))["error_code"] == "VALIDATION_ERROR"
        await ws.send(json.dumps({"action": "subscribe", "channel": "ticks", "instruments": []}))
        assert (await receive(ws))["error_code"] == "VALIDATION_ERROR"
        await ws.send(
            json.dumps({"action": "subscribe", "channel": "ticks", "instruments": ["NSE:NOPE"]})
        )
        assert (await receive(ws))["error_code"] == "INSTRUMENT_NOT_FOUND"
        await ws.send(json.dumps({"action": "subscribe", "channel": "bars", "timeframe": "2m"}))
        assert (await receive(ws))["error_code"] == "VALIDATION_ERROR"

        await ws.send(
            json.dumps(
                {"action": "subscribe", "channel": "ticks", "instruments": ["CRYPTO:BTCUSDT"]}
            )
        )
        subscribed = await receive(ws)
        assert subscribed == {
            "type": "subscribed",
            "channel": "ticks",
            "instruments": ["CRYPTO:BTCUSDT"],
        }
        assert server.runtime.market_hub.refcount("CRYPTO:BTCUSDT") == 1
        quotes = await server.runtime.market.step()
        tick = await receive(ws, "tick")
        btc = next(q for q in quotes if q.key == "CRYPTO:BTCUSDT")
        assert tick["instrument"] == "CRYPTO:BTCUSDT"
        assert Decimal(str(tick["ltp"])) == btc.ltp

        await ws.send(
            json.dumps(
                {"action": "unsubscribe", "channel": "ticks", "instruments": ["CRYPTO:BTCUSDT"]}
            )
        )
        assert (await receive(ws, "unsubscribed"))["instruments"] == ["CRYPTO:BTCUSDT"]
        assert server.runtime.market_hub.refcount("CRYPTO:BTCUSDT") == 0


async def test_bars_complete_on_the_minute(server: Server) -> None:
    alice = await account(server, "alice")
    async with websockets.connect(f"{server.ws}?token={token(alice)}") as ws:
        assert (await receive(ws))["type"] == "welcome"
        await ws.send(
            json.dumps(
                {
                    "action": "subscribe",
                    "channel": "bars",
                    "instruments": ["CRYPTO:ETHUSDT"],
                    "timeframe": "1m",
                }
            )
        )
        assert (await receive(ws))["timeframe"] == "1m"
        prices = []
        for seconds in (0, 10, 20):
            server.clock.now = datetime(2026, 11, 25, 10, 0, 30 + seconds, tzinfo=UTC)
            quotes = await server.runtime.market.step()
            prices.append(next(q.ltp for q in quotes if q.key == "CRYPTO:ETHUSDT"))
        server.clock.now += timedelta(minutes=1)
        await server.runtime.market.step()
        bar = await receive(ws, "bar")
        assert bar["instrument"] == "CRYPTO:ETHUSDT" and bar["timeframe"] == "1m"
        assert bar["start"] == "2026-11-25T10:00:00+00:00"
        assert bar["end"] == "2026-11-25T10:01:00+00:00"
        assert Decimal(str(bar["open"])) == prices[0]
        assert Decimal(str(bar["close"])) == prices[-1]
        assert Decimal(str(bar["high"])) == max(prices)
        assert Decimal(str(bar["low"])) == min(prices)


async def test_each_user_sees_only_their_own_orders(server: Server) -> None:
    alice = await account(server, "alice")
    bob = await account(server, "bob")
    async with (
        websockets.connect(f"{server.ws}?token={token(alice)}") as a,
        websockets.connect(f"{server.ws}?token={token(bob)}") as b,
    ):
        for ws in (a, b):
            assert (await receive(ws))["type"] == "welcome"
            await ws.send(json.dumps({"action": "subscribe", "channel": "orders"}))
            assert (await receive(ws)) == {"type": "subscribed", "channel": "orders"}
        async with httpx.AsyncClient(base_url=server.base) as http:
            placed = await http.post(
                "/api/v1/brokers/orders/place",
                json={
                    "config_id": alice.config_id,
                    "order": {
                        "symbol": "TCS",
                        "exchange": "NSE",
                        "side": "BUY",
                        "order_type": "LIMIT",
                        "product_type": "DELIVERY",
                        "quantity": 1,
                        "price": str(
                            (
                                server.runtime.market.quote("TCS", "NSE").ltp * Decimal("0.97")
                            ).quantize(Decimal("0.1"))
                        ),
                    },
                },
                headers=alice.headers,
            )
        assert placed.status_code in (200, 201, 202), placed.text
        order_id = placed.json()["order_id"]
        update = await receive(a, "order")
        assert update["order"]["order_id"] == order_id
        assert update["order"]["symbol"] == "TCS"
        # Bob's socket: the next thing after a ping is the pong, no order of Alice's.
        await b.send(json.dumps({"action": "ping"}))
        assert (await receive(b)) == {"type": "pong"}
