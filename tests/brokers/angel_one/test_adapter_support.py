"""Builders shared by the adapter tests (Helper ADAPTER); holds no tests itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from tests.brokers.angel_one.support import API_KEY, CLIENT_CODE, PIN, TOTP_SECRET
from trading_backend.brokers.angel_one.broker import AngelOneBroker
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.base import BrokerConfigData, OrderUpdate


def tick_round(price: Decimal, tick: Decimal = Decimal("0.05")) -> Decimal:
    """``price`` rounded down to a multiple of ``tick``."""
    return (price / tick).to_integral_value(rounding=ROUND_DOWN) * tick


def credentials(**overrides: str) -> dict[str, str]:
    creds = {
        "api_key": API_KEY,
        "client_code": CLIENT_CODE,
        "pin": PIN,
        "totp_secret": TOTP_SECRET,
    }
    creds.update(overrides)
    return creds


def fake_settings(server: RunningFake, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "root_url": server.base_url,
        "order_ws_url": server.order_ws_url,
        "feed_ws_url": server.feed_url,
        "timeout": 1.0,
        "poll_interval": 0.2,
    }
    settings.update(overrides)
    return settings


def make_broker(
    server: RunningFake,
    *,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    creds: dict[str, str] | None = None,
    **settings: Any,
) -> AngelOneBroker:
    config = BrokerConfigData(
        config_id=f"cfg-{uuid.uuid4().hex[:8]}",
        user_id="user-1",
        broker="angel_one",
        name="angel",
        credentials=creds or credentials(),
        settings=fake_settings(server, **settings),
    )
    return AngelOneBroker(config, clock=clock, sleep=sleep)


class Updates:
    """An order-update handler that lets a test wait for a condition (no sleeping)."""

    def __init__(self, observe: Callable[[], Any] | None = None) -> None:
        self.items: list[OrderUpdate] = []
        self.observed: list[Any] = []
        self._observe = observe
        self._cond = asyncio.Condition()

    async def __call__(self, update: OrderUpdate) -> None:
        async with self._cond:
            self.items.append(update)
            self.observed.append(self._observe() if self._observe else None)
            self._cond.notify_all()

    async def wait_for(
        self, predicate: Callable[[list[OrderUpdate]], bool], timeout: float = 10.0
    ) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: predicate(self.items)), timeout)

    def statuses(self, broker_order_id: str) -> list[str]:
        return [
            u.state.status.value for u in self.items if u.state.broker_order_id == broker_order_id
        ]


class ManualSleep:
    """An injected ``sleep`` the test releases by hand (advancing a fake clock first)."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.requests.put((seconds, future))
        await future

    async def next(self, timeout: float = 10.0) -> tuple[float, asyncio.Future[None]]:
        return await asyncio.wait_for(self.requests.get(), timeout)
