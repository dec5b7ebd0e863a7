"""The Angel One market feed as a cluster singleton (issue #7), end to end: two runtimes
with MARKET_DATA_SOURCE=angel_one on one database and one Redis. Exactly one opens the
account's SmartStream feed (counted at the fake); the other's hub and risk engine are
priced by the ticks it publishes through Redis, and its watched instruments get
subscribed at the holder; when the holder stops, the standby takes the lease, opens the
feed, resubscribes what the cluster watches and ticks flow again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.brokers.angel_one.test_adapter_support import credentials, fake_settings, tick_round
from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.angel_one.protocol import SCRIP_MASTER_PATH
from trading_backend.domain import BrokerOrder, DomainError, ErrorCode, Exchange
from trading_backend.marketdata.instruments import load_angel_one
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.strategies.base import Subscription, TickView

SBIN = ("NSE", "3045")
INFY = ("NSE", "1594")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """This test's own Redis namespace (queue, events, leases, watched instruments)."""
    value = f"tbtest:{uuid.uuid4().hex}:"
    yield value
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{value}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


class Ticks:
    """A hub consumer that lets the test wait for a price."""

    def __init__(self) -> None:
        self.seen: list[TickView] = []
        self.changed = asyncio.Condition()

    async def on_tick(self, tick: TickView) -> None:
        async with self.changed:
            self.seen.append(tick)
            self.changed.notify_all()

    async def wait_for_price(self, ltp: Decimal, timeout: float = 10.0) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: any(t.ltp == ltp for t in self.seen)), timeout
            )


def tokens(fake: object) -> set[str]:
    return {token for _, token, _ in fake.feed.subscriptions()}  # type: ignore[attr-defined]


async def market_data_account(
    settings: Settings, angel_fake: RunningFake
) -> tuple[str, str, Decimal]:
    """A user with an Angel One config (the market-data account) and the instrument
    master loaded; returns the user id, the config id and the paper market's SBIN price."""
    setup = Runtime(settings)
    await setup.start(worker=False, market=False, health_monitor=False)
    try:
        user = await setup.accounts.create_user("meera", "correct-horse-battery")
        config = await setup.accounts.create_config(
            user.id,
            "angel_one",
            "meera angel",
            credentials=credentials(),
            settings=fake_settings(angel_fake, timeout=2.0),
        )
        await load_angel_one(
            setup.instruments, url=f"{angel_fake.base_url}{SCRIP_MASTER_PATH}", in_thread=False
        )
        return user.id, config["config_id"], setup.market.quote("SBIN", Exchange.NSE).ltp
    finally:
        await setup.stop()


def cluster_settings(settings: Settings, config_id: str, redis_url: str, prefix: str) -> Settings:
    return settings.model_copy(
        update={
            "market_data_source": "angel_one",
            "market_data_config_id": config_id,
            "redis_url": redis_url,
            "queue_prefix": prefix,
            "queue_backend": "embedded",  # the queue is not what these tests are about
            "event_bus": "redis",
            "lease_ttl_seconds": 1.0,
            "lease_renew_seconds": 0.2,
        }
    )


async def test_one_feed_for_the_cluster_and_a_standby_takes_over(
    settings: Settings, angel_fake: RunningFake, redis_url: str, prefix: str
) -> None:
    fake = angel_fake.fake
    user_id, config_id, paper_sbin = await market_data_account(settings, angel_fake)
    live = cluster_settings(settings, config_id, redis_url, prefix)
    holder, standby = Runtime(live), Runtime(live)
    stopped: list[Runtime] = []
    try:
        await holder.start(worker=False, market=True, health_monitor=False)
        await asyncio.wait_for(holder.live_feed_ready.wait(), 15)
        await standby.start(worker=False, market=True, health_monitor=False)
        lease = f"feed:{config_id}"
        assert holder.lease(lease).held.is_set()
        assert not standby.lease(lease).held.is_set()

        # The standby's hub watches SBIN, the holder's INFY: the one feed subscribes both.
        ticks = Ticks()
        watch = await standby.market_hub.subscribe(
            Subscription("SBIN", Exchange.NSE, ticks=True), on_tick=ticks.on_tick
        )
        holder_watch = await holder.market_hub.subscribe(
            Subscription("INFY", Exchange.NSE, ticks=True)
        )
        await fake.feed.wait_until(lambda: tokens(fake) >= {SBIN[1], INFY[1]}, timeout=10)
        assert fake.feed.connection_count() == 1
        assert fake.feed.accepted == 1  # the standby never opened one
        standing_by = (await standby.health())["market"]
        assert standing_by["shared_feed"] is True and standing_by["holder"] is False
        assert "feed_connected" not in standing_by

        # A tick at the holder's feed reaches the standby's hub through Redis.
        live_sbin = tick_round(paper_sbin * Decimal("1.5"))
        fake.set_price(*SBIN, live_sbin)
        await ticks.wait_for_price(live_sbin)

        # ... and prices the standby's risk engine, with no REST quote of its own.
        assert standby.live_market is not None
        assert standby.live_market.quote("SBIN", Exchange.NSE).ltp == live_sbin
        rest_quotes = len(fake.calls("quote")) + len(fake.calls("ltp"))
        with pytest.raises(DomainError) as refused:
            await standby.orders.place(
                user_id,
                config_id,
                BrokerOrder(
                    "SBIN",
                    "NSE",
                    "BUY",
                    "LIMIT",
                    "INTRADAY",
                    1,
                    price=tick_round(live_sbin * Decimal("1.2")),
                ),
            )
        assert refused.value.code is ErrorCode.RISK_REJECTED
        assert refused.value.details["rule"] == "price_band"
        accepted = await standby.orders.place(
            user_id,
            config_id,
            BrokerOrder(
                "SBIN",
                "NSE",
                "BUY",
                "LIMIT",
                "INTRADAY",
                1,
                price=tick_round(live_sbin * Decimal("0.99")),
            ),
        )
        assert accepted.order.order_id
        assert len(fake.calls("quote")) + len(fake.calls("ltp")) == rest_quotes

        # The holder stops: the standby takes the lease, opens the feed and subscribes
        # what the cluster still watches (its SBIN; the holder's INFY went with it).
        await holder_watch.close()
        await holder.stop()
        stopped.append(holder)
        await asyncio.wait_for(standby.live_feed_ready.wait(), 10)
        assert standby.lease(lease).held.is_set()
        await fake.feed.wait_until(
            lambda: fake.feed.connection_count() == 1 and tokens(fake) == {SBIN[1]},
            timeout=10,
        )
        assert fake.feed.accepted == 2

        moved = tick_round(live_sbin * Decimal("1.01"))
        fake.set_price(*SBIN, moved)
        await ticks.wait_for_price(moved)
        assert standby.live_market.quote("SBIN", Exchange.NSE).ltp == moved
        holding = (await standby.health())["market"]
        assert holding["feed_connected"] is True and holding["holder"] is True
        assert holding["received_batches"] >= 1  # from the first holder, through Redis
        await watch.close()
    finally:
        for rt in (holder, standby):
            if rt not in stopped:
                await rt.stop()


# -- the `marketdata run` role ---------------------------------------------------------------
def role_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        TRADING_BACKEND_DATA_DIR=str(tmp_path / "data"),
        ENVIRONMENT="test",
        PYTHONPATH=str(ROOT),
        COLUMNS="300",
        **values,
    )
    return env


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"MARKET_DATA_SOURCE": "paper"}, "MARKET_DATA_SOURCE=paper"),
        ({"MARKET_DATA_SOURCE": "angel_one"}, "needs MARKET_DATA_CONFIG_ID"),
        (
            {"MARKET_DATA_SOURCE": "angel_one", "MARKET_DATA_CONFIG_ID": "cfg_x"},
            "needs REDIS_URL",
        ),
        (
            {
                "MARKET_DATA_SOURCE": "angel_one",
                "MARKET_DATA_CONFIG_ID": "cfg_x",
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "EVENT_BUS": "local",
            },
            "the Redis event bus",
        ),
    ],
)
def test_marketdata_run_refuses_to_run_for_nothing(
    tmp_path: Path, values: dict[str, str], reason: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trading_backend.cli", "marketdata", "run"],
        env=role_env(tmp_path, **values),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "marketdata run has nothing to do" in result.stderr
    assert reason in " ".join(result.stderr.split())


async def test_marketdata_run_serves_the_cluster_and_stops_on_sigterm(
    settings: Settings,
    angel_fake: RunningFake,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    fake = angel_fake.fake
    _, config_id, paper_sbin = await market_data_account(settings, angel_fake)
    live = cluster_settings(settings, config_id, redis_url, prefix)
    assert settings.master_encryption_key and settings.jwt_secret_key
    log_file = (tmp_path / "marketdata-run.log").open("wb")
    role = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trading_backend.cli",
        "marketdata",
        "run",
        env=role_env(
            tmp_path,
            DATABASE_URL=settings.effective_database_url,
            MASTER_ENCRYPTION_KEY=settings.master_encryption_key,
            JWT_SECRET_KEY=settings.jwt_secret_key,
            REDIS_URL=redis_url,
            QUEUE_PREFIX=prefix,
            QUEUE_BACKEND="embedded",
            MARKET_DATA_SOURCE="angel_one",
            MARKET_DATA_CONFIG_ID=config_id,
            LEASE_TTL_SECONDS="1.0",
            LEASE_RENEW_SECONDS="0.2",
            LOG_LEVEL="WARNING",
        ),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=log_file,  # a file: a pipe nobody reads could fill up and block the role
    )
    # An API process: it watches instruments but never runs the feed itself.
    api = Runtime(live.model_copy(update={"embedded_market_feed": False}))
    try:
        assert role.stdout is not None
        ready = await asyncio.wait_for(role.stdout.readline(), 60)
        assert b"market feed of config" in ready
        await fake.feed.wait_until(lambda: fake.feed.connection_count() == 1, timeout=30)

        await api.start(worker=False, market=True, health_monitor=False)
        assert "live-feed" not in {task.get_name() for task in api._tasks}
        ticks = Ticks()
        watch = await api.market_hub.subscribe(
            Subscription("SBIN", Exchange.NSE, ticks=True), on_tick=ticks.on_tick
        )
        await fake.feed.wait_until(lambda: SBIN[1] in tokens(fake), timeout=10)
        price = tick_round(paper_sbin * Decimal("1.3"))
        fake.set_price(*SBIN, price)
        await ticks.wait_for_price(price)
        await watch.close()

        # SIGTERM: the role closes the feed, gives the lease up and exits cleanly.
        role.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(role.wait(), 60) == 0
        assert fake.feed.connection_count() == 0
        redis = Redis.from_url(redis_url)
        try:
            assert not await redis.exists(f"{prefix}lease:feed:{config_id}")
        finally:
            await redis.aclose()
    finally:
        if role.returncode is None:
            role.kill()
            await role.wait()
        log_file.close()
        await api.stop()
