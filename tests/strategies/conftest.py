"""Strategy-engine fixtures: a runner over the test runtime's order path (paper broker,
worker running) with an in-memory feed the tests push bars and ticks into."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.strategies.fakes import FakeFeed, FakeReader
from tests.strategies.toys import TOYS
from trading_backend.runtime import Runtime
from trading_backend.strategies.registry import StrategyRegistry
from trading_backend.strategies.runner import StrategyRunner
from trading_backend.strategies.service import StrategyService


@dataclass
class Engine:
    runtime: Runtime
    feed: FakeFeed
    reader: FakeReader
    registry: StrategyRegistry
    runner: StrategyRunner
    service: StrategyService

    def new_runner(self) -> StrategyRunner:
        """Another runner over the same database, as after a process restart."""
        return StrategyRunner(
            self.runtime.db,
            self.registry,
            self.feed,
            self.reader,
            self.runtime.orders,
            self.runtime.recorder,
        )


def toy_registry() -> StrategyRegistry:
    registry = StrategyRegistry(include_builtins=False)
    for cls in TOYS:
        registry.register(cls)
    return registry


@pytest.fixture
async def engine(runtime: Runtime) -> AsyncIterator[Engine]:
    feed = FakeFeed()
    reader = FakeReader(runtime.market)
    registry = toy_registry()
    runner = StrategyRunner(runtime.db, registry, feed, reader, runtime.orders, runtime.recorder)
    await runner.start()
    try:
        yield Engine(
            runtime, feed, reader, registry, runner, StrategyService(runtime.db, registry, runner)
        )
    finally:
        await runner.stop()
