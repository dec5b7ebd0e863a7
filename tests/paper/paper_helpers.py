"""Helpers shared by the paper broker tests (imported as a plain module)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any

from trading_backend.brokers.base import OrderUpdate
from trading_backend.brokers.paper import PaperBroker

TODAY = date(2025, 12, 1)  # NIFTY25DECFUT, expiring Tuesday 2025-12-30
NIFTY_FUT = "NIFTY25DECFUT"

# make_broker(config_id="acc1", settings=None, *, handler=None, use_store=True)
BrokerFactory = Callable[..., Awaitable[PaperBroker]]


class JsonMemoryStore:
    """A StateStore that round-trips through JSON, as a database column would."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.saves = 0

    async def load(self, key: str) -> dict[str, Any] | None:
        raw = self.data.get(key)
        return json.loads(raw) if raw is not None else None

    async def save(self, key: str, state: dict[str, Any]) -> None:
        self.data[key] = json.dumps(state)
        self.saves += 1


class JsonIncrementalStore(JsonMemoryStore):
    """Like ``JsonMemoryStore`` but with the per-key operations of the database store, so the
    paper broker writes only what changed (the layout the server uses)."""

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None:
        for key, state in items.items():
            await self.save(key, state)

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.data.items() if k.startswith(prefix)}


class Recorder:
    """An order-update handler that remembers everything it was given."""

    def __init__(self) -> None:
        self.updates: list[OrderUpdate] = []

    async def __call__(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def for_order(self, broker_order_id: str) -> list[OrderUpdate]:
        return [u for u in self.updates if u.state.broker_order_id == broker_order_id]

    def statuses(self, broker_order_id: str) -> list[str]:
        return [u.state.status.value for u in self.for_order(broker_order_id)]


def d(value: str | int) -> Decimal:
    return Decimal(str(value))
