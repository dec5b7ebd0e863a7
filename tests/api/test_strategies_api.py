"""Strategies over HTTP: create, validate, start, trade on live ticks, stop, performance;
and a runtime that does not host strategies handing start/stop to one that does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import register
from tests.conftest import make_settings
from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings


class Clock:
    """The paper market's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def hosting(settings: Settings, clock: Clock) -> AsyncIterator[Runtime]:
    """A runtime that hosts the strategy runner, with a test-driven market clock."""
    rt = Runtime(settings, clock=clock)
    await rt.start(worker=True, market=False, health_monitor=False, strategies=True)
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def http(hosting: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=hosting))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


DCA = {"symbol": "BTCUSDT", "timeframe": "1m", "interval_bars": 1, "amount": "100000"}


async def test_kinds_list_the_six_builtins_with_their_schemas(
    http: httpx.AsyncClient,
) -> None:
    alice = await register(http, "alice")
    kinds = await http.get("/api/v1/strategies/kinds", headers=alice.headers)
    assert kinds.status_code == 200
    by_name = {k["name"]: k for k in kinds.json()}
    assert {
        "mean_reversion",
        "momentum",
        "options_selling",
        "futures_arbitrage",
        "grid",
        "dca",
    } <= set(by_name)
    assert "interval_bars" in by_name["dca"]["params_schema"]["properties"]


async def test_bad_input_is_a_clear_4xx(http: httpx.AsyncClient) -> None:
    alice = await register(http, "alice")

    async def create(body: dict) -> httpx.Response:
        return await http.post("/api/v1/strategies", json=body, headers=alice.headers)

    unknown = await create({"name": "x", "kind": "nope", "config_id": alice.config_id})
    assert unknown.status_code in (404, 422) and unknown.json()["error_code"]
    bad = await create(
        {"name": "x", "kind": "dca", "config_id": alice.config_id, "params": {"amount": -1}}
    )
    assert bad.status_code == 422 and bad.json()["error_code"] == "VALIDATION_ERROR"
    assert "amount" in bad.text
    extra = await create(
        {"name": "x", "kind": "dca", "config_id": alice.config_id, "params": {"bogus": 1}}
    )
    assert extra.status_code == 422
    other_config = await create({"name": "x", "kind": "dca", "config_id": "cfg_not_mine"})
    assert other_config.status_code == 404
    assert (await http.get("/api/v1/strategies", headers=alice.headers)).json() == []


async def test_a_dca_strategy_trades_on_live_bars_and_reports_performance(
    http: httpx.AsyncClient, hosting: Runtime, clock: Clock
) -> None:
    alice = await register(http, "alice")
    created = await http.post(
        "/api/v1/strategies",
        json={"name": "btc dca", "kind": "dca", "config_id": alice.config_id, "params": DCA},
        headers=alice.headers,
    )
    assert created.status_code == 201, created.text
    strategy_id = created.json()["strategy_id"]
    assert created.json()["status"] == "STOPPED"
    assert created.json()["params"]["interval_bars"] == 1

    started = await http.post(f"/api/v1/strategies/{strategy_id}/start", headers=alice.headers)
    assert started.status_code == 200 and started.json()["status"] == "RUNNING"
    assert hosting.market_hub.refcount("CRYPTO:BTCUSDT") == 1

    # Ticks inside one minute, then one in the next minute: the first 1m bar completes,
    # on_bar buys floor(100000 / close) whole coins at market.
    await hosting.market.step()
    clock.now += timedelta(seconds=20)
    await hosting.market.step()
    clock.now += timedelta(seconds=40)
    await hosting.market.step()
    runner = hosting.strategy_runner
    await runner.drain(strategy_id)
    # The market order fills on the paper broker's next tick.
    await hosting.market.step()
    await runner.drain(strategy_id)

    perf = await http.get(f"/api/v1/strategies/{strategy_id}/performance", headers=alice.headers)
    assert perf.status_code == 200, perf.text
    body = perf.json()
    assert body["trades"] == 1 and body["open_positions"] == 1 and body["signals"] == 1
    signal = next(e for e in body["recent_log"] if e["kind"] == "signal")
    assert signal["data"]["action"] == "BUY" and signal["data"]["reason"] == "scheduled_buy"
    quantity = signal["data"]["quantity"]
    assert quantity == 1 == int(100000 // float(signal["data"]["price"]))

    orders = await http.get(
        "/api/v1/brokers/orders", params={"config_id": alice.config_id}, headers=alice.headers
    )
    placed = [o for o in orders.json() if o["symbol"] == "BTCUSDT"]
    assert len(placed) == 1 and placed[0]["status"] == "FILLED"
    assert placed[0]["quantity"] == quantity

    view = await http.get(f"/api/v1/strategies/{strategy_id}", headers=alice.headers)
    assert view.json()["state"]["holding"] == quantity

    busy = await http.patch(
        f"/api/v1/strategies/{strategy_id}", json={"name": "renamed"}, headers=alice.headers
    )
    assert busy.status_code == 409 and busy.json()["error_code"], busy.text

    await hosting.risk_service.settle()
    # Watched by the strategy and by the risk monitor (a position is held).
    assert hosting.market_hub.refcount("CRYPTO:BTCUSDT") == 2
    stopped = await http.post(f"/api/v1/strategies/{strategy_id}/stop", headers=alice.headers)
    assert stopped.status_code == 200 and stopped.json()["status"] == "STOPPED"
    patch = await http.patch(
        f"/api/v1/strategies/{strategy_id}",
        json={"name": "renamed", "params": {**DCA, "interval_bars": 5}},
        headers=alice.headers,
    )
    assert patch.status_code == 200 and patch.json()["name"] == "renamed"
    assert patch.json()["params"]["interval_bars"] == 5
    assert hosting.market_hub.refcount("CRYPTO:BTCUSDT") == 1  # the risk monitor's
    logs = await http.get(f"/api/v1/strategies/{strategy_id}/logs", headers=alice.headers)
    assert any(e["kind"] == "signal" for e in logs.json())

    deleted = await http.delete(f"/api/v1/strategies/{strategy_id}", headers=alice.headers)
    assert deleted.status_code == 204
    gone = await http.get(f"/api/v1/strategies/{strategy_id}", headers=alice.headers)
    assert gone.status_code == 404 and gone.json()["error_code"].endswith("NOT_FOUND")


async def test_a_non_hosting_process_hands_start_and_stop_to_the_host(
    hosting: Runtime, http: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    """An API instance with EMBEDDED_STRATEGIES=false only records start/stop; the
    hosting runner's sync() carries them out."""
    alice = await register(http, "alice")
    api_settings = make_settings(
        tmp_path / "api",
        database_url,
        master_encryption_key=hosting.settings.master_encryption_key,
        jwt_secret_key=hosting.settings.jwt_secret_key,
    )
    api = Runtime(api_settings)
    await api.start(migrate=False, worker=False, market=False, health_monitor=False)
    try:
        transport = httpx.ASGITransport(app=create_app(runtime=api))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as other:
            created = await other.post(
                "/api/v1/strategies",
                json={"name": "d", "kind": "dca", "config_id": alice.config_id, "params": DCA},
                headers=alice.headers,
            )
            strategy_id = created.json()["strategy_id"]
            started = await other.post(
                f"/api/v1/strategies/{strategy_id}/start", headers=alice.headers
            )
            assert started.json()["status"] == "RUNNING"
            assert not api.strategy_runner.is_running(strategy_id)
            assert not hosting.strategy_runner.is_running(strategy_id)
            await hosting.strategy_runner.sync()
            assert hosting.strategy_runner.is_running(strategy_id)
            assert hosting.market_hub.refcount("CRYPTO:BTCUSDT") == 1

            stopped = await other.post(
                f"/api/v1/strategies/{strategy_id}/stop", headers=alice.headers
            )
            assert stopped.json()["status"] == "STOPPED"
            await hosting.strategy_runner.sync()
            assert not hosting.strategy_runner.is_running(strategy_id)
            assert hosting.market_hub.refcount("CRYPTO:BTCUSDT") == 0
            again = await other.get(f"/api/v1/strategies/{strategy_id}", headers=alice.headers)
            assert again.json()["status"] == "STOPPED"
    finally:
        await api.stop()
