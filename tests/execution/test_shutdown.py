"""Graceful shutdown: a stopping process takes no new queue entry and finishes the orders
it holds; the worker role stops cleanly on SIGTERM (what Docker, PM2 and systemd send)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import order
from trading_backend.brokers.base import BrokerOrder
from trading_backend.brokers.paper import PaperBroker
from trading_backend.brokers.registry import BrokerRegistry
from trading_backend.domain import OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class GatedBroker(PaperBroker):
    """A paper broker whose ``place_order`` waits for the test's go-ahead."""

    name = "gated"
    entered: asyncio.Event
    release: asyncio.Event

    async def place_order(self, order: BrokerOrder) -> str:
        GatedBroker.entered.set()
        await GatedBroker.release.wait()
        return await super().place_order(order)


@pytest.fixture(autouse=True)
def gated_broker() -> Iterator[None]:
    BrokerRegistry.register(GatedBroker.name, GatedBroker)
    yield
    BrokerRegistry._brokers.pop(GatedBroker.name, None)


async def test_stop_finishes_the_order_in_flight(settings: Settings) -> None:
    GatedBroker.entered, GatedBroker.release = asyncio.Event(), asyncio.Event()
    runtime = Runtime(settings)
    await runtime.start(worker=True, market=False, health_monitor=False)
    user = await runtime.accounts.create_user("gita", "correct-horse-battery")
    config = await runtime.accounts.create_config(user.id, "gated", "gated paper")
    placed = await runtime.orders.place(user.id, config["config_id"], order(), wait=0)
    await asyncio.wait_for(GatedBroker.entered.wait(), 10)

    stopping = asyncio.create_task(runtime.stop())
    # The worker is inside the broker call: stop() must wait for it, not cancel it.
    done, _ = await asyncio.wait({stopping}, timeout=0.2)
    assert not done
    assert runtime.worker.in_flight == 1
    GatedBroker.release.set()
    await asyncio.wait_for(stopping, 30)

    again = Runtime(settings)
    await again.start(worker=False, market=False, health_monitor=False)
    try:
        finished = await again.orders.get(user.id, placed.order.order_id)
        assert finished.status is OrderStatus.FILLED
        assert (await again.queue.depth())["claimed"] == 0
    finally:
        await again.stop()


@pytest.mark.parametrize("role", [["worker"], ["strategies", "run"]], ids=" ".join)
def test_the_process_roles_stop_gracefully_on_sigterm(role: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        TRADING_BACKEND_DATA_DIR=str(tmp_path / "data"),
        ENVIRONMENT="development",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="INFO",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "trading_backend.cli", *role],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        seen = []
        for line in worker.stdout:  # "...; Ctrl-C or SIGTERM to stop" once it started
            seen.append(line)
            if "SIGTERM to stop" in line:
                break
        assert seen and "SIGTERM to stop" in seen[-1], "".join(seen)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr[-2000:]
    assert "shutdown_signal_received" in stderr
    assert "runtime_stopped" in stderr
