"""``/ws`` across processes: a client connected to API instance A (a real uvicorn server on a
pre-bound socket) receives the order updates of an order executed by the worker of another
runtime B, and its trading-state changes made there, through the Redis event bus. Both
runtimes share one database and one Redis, as the processes of one deployment do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import uvicorn
import websockets

from tests.api.conftest import Account, register
from tests.helpers import order
from trading_backend.api.app import create_app
from trading_backend.domain import OrderStatus
from trading_backend.execution.events import LocalEventBus, RedisEventBus
from trading_backend.risk.engine import GLOBAL, Scope
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings


class Cluster:
    def __init__(self, api: Runtime, worker: Runtime, base: str) -> None:
        self.api, self.worker, self.base = api, worker, base

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"


@contextlib.asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[str]:
    """The app of ``runtime`` on a real uvicorn server; yields its base URL."""
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
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        await task
        listener.close()


@pytest.fixture
async def cluster(settings: Settings, redis_url: str) -> AsyncIterator[Cluster]:
    shared = settings.model_copy(
        update={
            "redis_url": redis_url,
            "event_bus": "redis",
            "queue_backend": "embedded",  # only B executes orders, through its own queue
            "queue_prefix": f"tbtest:{uuid4().hex}:",
            # With REDIS_URL the rate limits live in Redis, under keys no test prefix
            # separates: repeated runs would share one per-IP budget of registrations.
            "rate_limit_enabled": False,
        }
    )
    api, worker = Runtime(shared), Runtime(shared)
    try:
        await api.start(worker=False, market=False, health_monitor=False)
        await worker.start(worker=True, market=False, health_monitor=False)
        assert isinstance(api.events, RedisEventBus) and api.events.connected.is_set()
        assert isinstance(worker.events, RedisEventBus) and worker.events.connected.is_set()
        async with serving(api) as base:
            yield Cluster(api, worker, base)
    finally:
        await worker.stop()
        await api.stop()


@pytest.fixture
async def embedded(settings: Settings) -> AsyncIterator[Cluster]:
    """One process, no Redis: the in-process bus serves the same channels."""
    runtime = Runtime(settings.model_copy(update={"event_bus": "local", "redis_url": None}))
    try:
        await runtime.start(worker=True, market=False, health_monitor=False)
        assert isinstance(runtime.events, LocalEventBus)
        async with serving(runtime) as base:
            yield Cluster(runtime, runtime, base)
    finally:
        await runtime.stop()


async def receive(ws: Any, kind: str | None = None) -> dict[str, Any]:
    """The next message (of ``kind``, skipping others)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        if kind is None or message["type"] == kind:
            return message


async def account(cluster: Cluster, name: str) -> Account:
    async with httpx.AsyncClient(base_url=cluster.base) as http:
        return await register(http, name)


def token(user: Account) -> str:
    return user.headers["Authorization"].removeprefix("Bearer ")


async def subscribe(ws: Any, *channels: str) -> None:
    assert (await receive(ws))["type"] == "welcome"
    for channel in channels:
        await ws.send(json.dumps({"action": "subscribe", "channel": channel}))
        assert (await receive(ws)) == {"type": "subscribed", "channel": channel}


async def test_orders_executed_elsewhere_reach_the_socket(cluster: Cluster) -> None:
    alice = await account(cluster, "alice")
    async with websockets.connect(f"{cluster.ws}?token={token(alice)}") as ws:
        await subscribe(ws, "orders")
        result = await cluster.worker.orders.place(
            alice.user_id, alice.config_id, order(quantity=2), wait=5
        )
        assert result.order.status is OrderStatus.FILLED
        updates = []
        while not updates or updates[-1]["status"] != "FILLED":
            updates.append((await receive(ws, "order"))["order"])
        assert {u["order_id"] for u in updates} == {result.order.order_id}
        assert updates[-1]["filled_quantity"] == 2
        assert updates[-1]["config_id"] == alice.config_id
        # Each update once: B publishes in order, so a repeat of the first order's updates
        # would arrive before any update of a second order.
        second = await cluster.worker.orders.place(
            alice.user_id, alice.config_id, order(symbol="INFY"), wait=5
        )
        later = []
        while not later or later[-1]["status"] != "FILLED":
            later.append((await receive(ws, "order"))["order"])
        assert {u["order_id"] for u in later} == {second.order.order_id}


async def test_risk_state_changes_reach_their_users_only(cluster: Cluster) -> None:
    alice = await account(cluster, "alice")
    bob = await account(cluster, "bob")
    async with (
        websockets.connect(f"{cluster.ws}?token={token(alice)}") as a,
        websockets.connect(f"{cluster.ws}?token={token(bob)}") as b,
    ):
        await subscribe(a, "risk")
        await subscribe(b, "risk")
        risk = cluster.worker.risk_service
        await risk.kill_switch(Scope.for_account(alice.config_id), by="admin", reason="desk")
        halted = await receive(a, "risk")
        assert halted == {
            "type": "risk",
            "scope": f"account:{alice.config_id}",
            "account": alice.config_id,
            "old_state": "ACTIVE",
            "new_state": "HALTED",
            "reason": "desk",
            "kill_switch": True,
            "at": halted["at"],
        }
        # Bob's own change is published after Alice's: if Alice's had reached Bob's socket
        # it would come first.
        await risk.kill_switch(Scope.for_user(bob.user_id), by="admin", reason="bob")
        assert (await receive(b, "risk"))["scope"] == f"user:{bob.user_id}"

        await risk.reset(GLOBAL, by="admin")  # the global scope concerns everyone
        for ws in (a, b):
            everyone = await receive(ws, "risk")
            assert (everyone["scope"], everyone["new_state"]) == ("global", "ACTIVE")

        await a.send(json.dumps({"action": "unsubscribe", "channel": "risk"}))
        assert (await receive(a)) == {"type": "unsubscribed", "channel": "risk"}
        await risk.reset(GLOBAL, by="admin")
        assert (await receive(b, "risk"))["scope"] == "global"
        # Instance A has handled that event (Bob got it); Alice, unsubscribed, did not.
        await a.send(json.dumps({"action": "ping"}))
        assert (await receive(a)) == {"type": "pong"}


async def test_unknown_channel_names_the_new_one(cluster: Cluster) -> None:
    alice = await account(cluster, "alice")
    async with websockets.connect(f"{cluster.ws}?token={token(alice)}") as ws:
        assert (await receive(ws))["type"] == "welcome"
        await ws.send(json.dumps({"action": "subscribe", "channel": "news"}))
        error = await receive(ws)
        assert error["error_code"] == "VALIDATION_ERROR" and "risk" in error["message"]


async def test_embedded_mode_serves_orders_and_risk_in_process(embedded: Cluster) -> None:
    alice = await account(embedded, "alice")
    async with websockets.connect(f"{embedded.ws}?token={token(alice)}") as ws:
        await subscribe(ws, "orders", "risk")
        placed = await embedded.api.orders.place(alice.user_id, alice.config_id, order(), wait=5)
        updates = []
        while not updates or updates[-1]["status"] != "FILLED":
            updates.append((await receive(ws, "order"))["order"])
        assert {u["order_id"] for u in updates} == {placed.order.order_id}
        await embedded.api.risk_service.kill_switch(Scope.for_user(alice.user_id), by="admin")
        halted = await receive(ws, "risk")
        assert (halted["scope"], halted["account"]) == (f"user:{alice.user_id}", None)
        assert (halted["old_state"], halted["new_state"]) == ("ACTIVE", "HALTED")
