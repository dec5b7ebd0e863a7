"""Fixtures for the paper broker: a deterministic market and broker factories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.paper.paper_helpers import (
    TODAY,
    BrokerFactory,
    JsonIncrementalStore,
    JsonMemoryStore,
    Recorder,
)
from trading_backend.brokers.base import BrokerConfigData, BrokerContext
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket
from trading_backend.brokers.paper.universe import default_universe


@pytest.fixture
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=42, instruments=default_universe(TODAY))


@pytest.fixture(params=["whole", "incremental"])
def store(request: pytest.FixtureRequest) -> JsonMemoryStore:
    """Both persistence layouts: the whole account in one value, or one value per change."""
    return JsonMemoryStore() if request.param == "whole" else JsonIncrementalStore()


@pytest.fixture
async def make_broker(
    market: SimulatedMarket, store: JsonMemoryStore
) -> AsyncIterator[BrokerFactory]:
    created: list[PaperBroker] = []

    async def factory(
        config_id: str = "acc1",
        settings: dict[str, Any] | None = None,
        *,
        handler: Recorder | None = None,
        use_store: bool = True,
    ) -> PaperBroker:
        config = BrokerConfigData(
            config_id=config_id, user_id="user1", broker="paper", settings=settings or {}
        )
        broker = PaperBroker(
            config, BrokerContext(market=market, state_store=store if use_store else None)
        )
        if handler is not None:
            broker.set_order_update_handler(handler)
        assert await broker.authenticate() is True
        created.append(broker)
        return broker

    yield factory
    for broker in created:
        await broker.close()
