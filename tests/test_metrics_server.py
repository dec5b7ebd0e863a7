"""The metrics endpoint of the roles without an API (``trading_backend.observability``):
each role's server started in-process on an ephemeral port and scraped over HTTP like
Prometheus does, after the role did real work (orders carried out, strategies fed bars
and failing, the live feed held and ticking); the `--metrics-port` option; and the
`worker` command serving it until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.helpers import order, user_with_config
from tests.strategies.conftest import toy_registry
from tests.strategies.fakes import FakeFeed, FakeReader, make_bar
from trading_backend.cli import app as cli_app
from trading_backend.execution.queue import Priority
from trading_backend.observability import MetricsPortError, RoleMetrics, open_role_metrics
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.strategies.runner import StrategyRunner
from trading_backend.strategies.service import StrategyService

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- helpers --------------------------------------------------------------------------------
async def scrape(url: str) -> tuple[Samples, set[str]]:
    """The exposition at ``url`` parsed as Prometheus would: samples and family names."""
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (a labelled metric never used yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def role_metrics() -> Iterator[Callable[[str], RoleMetrics]]:
    """Start a role's endpoint on an ephemeral port of 127.0.0.1; closed afterwards."""
    opened: list[RoleMetrics] = []

    def start(role: str) -> RoleMetrics:
        metrics = RoleMetrics(role, "127.0.0.1", 0)
        opened.append(metrics)
        return metrics

    yield start
    for metrics in opened:
        metrics.close()


# -- settings and the CLI option --------------------------------------------------------------
def test_metrics_are_off_by_default_and_private_when_on(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.metrics_port == 0 and settings.metrics_host == "127.0.0.1"
    assert open_role_metrics("worker", settings) is None
    with pytest.raises(ValidationError, match="metrics_port"):
        Settings(_env_file=None, metrics_port=70000)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown role"):
        open_role_metrics("scheduler", settings, 0)


@pytest.mark.parametrize(
    "command", [["worker"], ["strategies", "run"], ["marketdata", "run"]], ids=" ".join
)
def test_role_commands_take_a_metrics_port(command: list[str]) -> None:
    result = CliRunner().invoke(cli_app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--metrics-port" in result.output
    refused = CliRunner().invoke(cli_app, [*command, "--metrics-port", "70000"])
    assert refused.exit_code == 2  # a usage error, before anything starts


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            RoleMetrics("worker", "127.0.0.1", port)


# -- worker -----------------------------------------------------------------------------------
async def test_worker_role_shows_orders_broker_latency_queue_lag_and_depth(
    runtime: Runtime, role_metrics: Callable[[str], RoleMetrics]
) -> None:
    metrics = role_metrics("worker")
    metrics.attach(runtime)
    before, _ = await scrape(metrics.url)
    user_id, config_id = await user_with_config(runtime)
    placed = await runtime.orders.place(user_id, config_id, order(quantity=2), wait=5)
    assert placed.outcome.ok
    # An entry the worker cannot carry out: finished, but not ok ("refused").
    async with runtime.db() as session, session.begin():
        entry_id = await runtime.queue.enqueue(
            session, kind="bogus", order_id="none", priority=Priority.NORMAL
        )
    runtime.queue.notify()
    refused = await runtime.queue.wait_processed(entry_id, 5)
    assert refused is not None and not refused.ok
    assert await metrics.refresh()

    after, families = await scrape(metrics.url)
    assert value(after, "trading_backend_process_info", role="worker") == 1

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("trading_backend_orders_executed_total", kind="place", outcome="ok") == 1
    assert delta("trading_backend_orders_executed_total", kind="bogus", outcome="refused") == 1
    assert delta("trading_backend_broker_call_seconds_count", operation="place") == 1
    assert delta("trading_backend_queue_lag_seconds_count") == 2
    assert value(after, "trading_backend_worker_in_flight") == 0
    for state in ("ready", "claimed", "dead"):
        assert value(after, "trading_backend_queue_entries", state=state) == 0
    assert ("trading_backend_queue_entries", (("state", "ready"),)) in after
    assert value(after, "trading_backend_market_ticks_received_total", source="paper") >= 0
    assert {"trading_backend_queue_dead_letters", "trading_backend_risk_rejections"} <= families


# -- strategies -------------------------------------------------------------------------------
@pytest.fixture
async def hosted(
    runtime: Runtime,
) -> AsyncIterator[tuple[StrategyService, StrategyRunner, FakeFeed]]:
    """A strategy runner over the test runtime, fed bars by the test."""
    feed, registry = FakeFeed(), toy_registry()
    runner = StrategyRunner(
        runtime.db, registry, feed, FakeReader(runtime.market), runtime.orders, runtime.recorder
    )
    await runner.start()
    try:
        yield StrategyService(runtime.db, registry, runner), runner, feed
    finally:
        await runner.stop()


async def test_strategies_role_shows_running_strategies_errors_and_bars(
    runtime: Runtime,
    hosted: tuple[StrategyService, StrategyRunner, FakeFeed],
    role_metrics: Callable[[str], RoleMetrics],
) -> None:
    service, runner, feed = hosted
    metrics = role_metrics("strategies")
    metrics.attach(runtime)
    before, _ = await scrape(metrics.url)
    user_id, config_id = await user_with_config(runtime)
    created = await service.create(user_id, "fragile", "fails_on_bar", config_id, {})
    await service.start(user_id, created.id)
    await feed.push_bar(make_bar("INFY", 100, index=0))
    await runner.drain()
    running, _ = await scrape(metrics.url)

    await feed.push_bar(make_bar("INFY", 101, index=1))  # its second bar: it raises
    await runner.drain()
    failed, _ = await scrape(metrics.url)

    def delta(now: Samples, name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    assert value(running, "trading_backend_process_info", role="strategies") == 1
    assert delta(running, "trading_backend_strategies_running") == 1
    assert delta(running, "trading_backend_strategy_bars_delivered_total") == 1
    assert delta(running, "trading_backend_strategy_errors_total", kind="fails_on_bar") == 0
    assert delta(failed, "trading_backend_strategies_running") == 0
    assert delta(failed, "trading_backend_strategy_bars_delivered_total") == 2
    assert delta(failed, "trading_backend_strategy_errors_total", kind="fails_on_bar") == 1
    assert value(failed, "trading_backend_worker_in_flight") == 0  # it hosts a worker too


# -- marketdata -------------------------------------------------------------------------------
@pytest.fixture
async def angel_fake() -> AsyncIterator[object]:
    """The Angel One fake (SmartAPI, SmartStream) on this test's loop, fresh rate budgets."""
    from tests.brokers.angel_one.conftest import make_fake
    from trading_backend.brokers.angel_one import ratelimit
    from trading_backend.brokers.angel_one.fake import running_fake

    ratelimit.reset_registry()
    async with running_fake(make_fake()) as server:
        yield server
    ratelimit.reset_registry()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    from redis.asyncio import Redis

    value = f"tbtest:{uuid.uuid4().hex}:"
    yield value
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{value}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def test_marketdata_role_shows_the_feed_its_lease_and_ticks(
    settings: Settings,
    angel_fake: object,
    redis_url: str,
    prefix: str,
    role_metrics: Callable[[str], RoleMetrics],
) -> None:
    from tests.brokers.angel_one.test_adapter_support import tick_round
    from tests.brokers.angel_one.test_feed_singleton import (
        SBIN,
        Ticks,
        cluster_settings,
        market_data_account,
        tokens,
    )
    from trading_backend.domain import Exchange
    from trading_backend.strategies.base import Subscription

    fake = angel_fake.fake  # type: ignore[attr-defined]
    _, config_id, paper_sbin = await market_data_account(settings, angel_fake)  # type: ignore[arg-type]
    holder = Runtime(cluster_settings(settings, config_id, redis_url, prefix))
    metrics = role_metrics("marketdata")
    metrics.attach(holder)
    before, _ = await scrape(metrics.url)
    stopped = False
    try:
        # As `marketdata run` starts it: the feed singleton and nothing else.
        await holder.start(worker=False, market=False, health_monitor=False, market_feed=True)
        await asyncio.wait_for(holder.live_feed_ready.wait(), 15)
        ticks = Ticks()
        watch = await holder.market_hub.subscribe(
            Subscription("SBIN", Exchange.NSE, ticks=True), on_tick=ticks.on_tick
        )
        await fake.feed.wait_until(lambda: SBIN[1] in tokens(fake), timeout=10)
        price = tick_round(paper_sbin * Decimal("1.2"))
        fake.set_price(*SBIN, price)
        await ticks.wait_for_price(price)
        holding, _ = await scrape(metrics.url)
        await watch.close()
        await holder.stop()
        stopped = True
        gone, _ = await scrape(metrics.url)
    finally:
        if not stopped:
            await holder.stop()

    def delta(now: Samples, name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    assert value(holding, "trading_backend_process_info", role="marketdata") == 1
    assert value(holding, "trading_backend_market_feed_connected") == 1
    assert value(holding, "trading_backend_market_feed_lease_held") == 1
    assert (
        value(holding, "trading_backend_lease_held", lease=f"{prefix}lease:feed:{config_id}") == 1
    )
    assert value(holding, "trading_backend_market_ticks_received_total", source="angel_one") >= 1
    assert delta(holding, "trading_backend_market_ticks_published_total") >= 1
    assert value(gone, "trading_backend_market_feed_connected") == 0
    assert value(gone, "trading_backend_market_feed_lease_held") == 0
    assert value(gone, "trading_backend_lease_held", lease=f"{prefix}lease:feed:{config_id}") == 0


# -- the worker command ----------------------------------------------------------------------
def role_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        TRADING_BACKEND_DATA_DIR=str(tmp_path / "data"),
        ENVIRONMENT="development",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="WARNING",
        COLUMNS="200",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_worker_command_serves_metrics_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log_file = (tmp_path / "worker.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trading_backend.cli",
        "worker",
        "--metrics-port",
        str(port),
        env=role_env(tmp_path),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=log_file,
    )
    try:
        assert worker.stdout is not None
        said: list[bytes] = []
        while not said or b"running; Ctrl-C" not in said[-1]:  # log lines come first
            line = await asyncio.wait_for(worker.stdout.readline(), 60)
            assert line, b"".join(said)
            said.append(line)
        assert f"metrics on http://127.0.0.1:{port}/metrics".encode() in b"".join(said)
        samples, families = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "trading_backend_process_info", role="worker") == 1
        assert value(samples, "trading_backend_worker_in_flight") == 0
        assert {
            "trading_backend_orders_executed",
            "trading_backend_broker_call_seconds",
            "trading_backend_queue_lag_seconds",
        } <= families
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
        with pytest.raises(httpx.ConnectError):  # the port is free again
            await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        log_file.close()


async def test_worker_command_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trading_backend.cli",
            "worker",
            "--metrics-port",
            str(port),
            env=role_env(tmp_path),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in " ".join(stderr.decode().split())
