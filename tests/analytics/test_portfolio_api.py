"""GET /api/v1/portfolio/analytics and POST /api/v1/portfolio/snapshots: two users trading
on the paper broker, exact P&L figures from their own trades, isolation, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.api.conftest import Account, register
from tests.helpers import order
from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime

URL = "/api/v1/portfolio/analytics"


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def _trades(client: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/brokers/trades", headers=account.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


def _d(value: Any) -> Decimal:
    return Decimal(str(value))


async def test_two_users_exact_pnl_isolation_and_metrics(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    strategy = await client.post(
        "/api/v1/strategies",
        json={"name": "alice dca", "kind": "dca", "config_id": alice.config_id},
        headers=alice.headers,
    )
    assert strategy.status_code == 201, strategy.text
    strategy_id = strategy.json()["strategy_id"]

    await runtime.market.set_price("TCS", "NSE", "3000")
    # Alice: 10 TCS by hand, then 4 more through her strategy.
    manual = await runtime.orders.place(alice.user_id, alice.config_id, order(quantity=10), wait=5)
    by_strategy = await runtime.orders.place(
        alice.user_id, alice.config_id, order(quantity=4), wait=5, strategy_id=strategy_id
    )
    await runtime.market.set_price("TCS", "NSE", "3100")
    sold = await runtime.orders.place(
        alice.user_id, alice.config_id, order(side="SELL", quantity=6), wait=5
    )
    await runtime.market.set_price("INFY", "NSE", "1500")
    bobs = await runtime.orders.place(
        bob.user_id, bob.config_id, order(symbol="INFY", quantity=5), wait=5
    )
    for result in (manual, by_strategy, sold, bobs):
        assert result.order.status.value == "FILLED", result.order
    await runtime.market.set_price("TCS", "NSE", "3200")
    await runtime.market.set_price("INFY", "NSE", "1450")

    # Expected figures straight from each user's trades and the last prices.
    trades = await _trades(client, alice)
    assert len(trades) == 3
    price = {t["order_id"]: _d(t["price"]) for t in trades}
    charges = sum((_d(t["charges"]) for t in trades), Decimal(0))
    assert charges > 0  # the paper broker charges delivery trades
    buy_m, buy_s, sell = (
        price[manual.order.order_id],
        price[by_strategy.order.order_id],
        price[sold.order.order_id],
    )
    average = (buy_m * 10 + buy_s * 4) / 14
    realised = (sell - average) * 6
    unrealised = (Decimal("3200") - average) * 8
    day_pnl = -(buy_m * 10 + buy_s * 4) + sell * 6 - charges + 8 * Decimal("3200")
    net = realised + unrealised - charges

    snap = await client.post("/api/v1/portfolio/snapshots", headers=alice.headers)
    assert snap.status_code == 201, snap.text
    assert snap.json()["rows"] == 3  # the user, the account, the strategy

    response = await client.get(URL, headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    totals = body["totals"]
    assert body["scope"] == f"user:{alice.user_id}"
    assert _d(totals["realised_pnl"]) == realised
    assert _d(totals["unrealised_pnl"]) == unrealised
    assert _d(totals["charges"]) == charges
    assert _d(totals["day_pnl"]) == day_pnl
    assert _d(totals["net_pnl"]) == net
    assert _d(totals["capital"]) == Decimal("1000000")
    assert _d(totals["equity"]) == Decimal("1000000") + net
    [account] = body["accounts"]
    assert account["broker_config_id"] == alice.config_id and account["broker"] == "paper"
    assert _d(account["net_pnl"]) == net
    parts = {p["strategy_id"]: p for p in body["strategies"]}
    assert set(parts) == {strategy_id, None} and parts[None]["manual"] is True
    strategy_charges = next(
        _d(t["charges"]) for t in trades if t["order_id"] == by_strategy.order.order_id
    )
    assert _d(parts[strategy_id]["unrealised_pnl"]) == (Decimal("3200") - buy_s) * 4
    assert _d(parts[strategy_id]["charges"]) == strategy_charges
    assert parts[strategy_id]["fills"] == 1 and parts[None]["fills"] == 2
    # The curve: the snapshot and the live point; the metrics of backtests on it.
    curve = body["equity_curve"]
    assert body["equity_curve_points"] == len(curve) == 2
    assert all(_d(p["equity"]) == Decimal("1000000") + net for p in curve)
    metrics = body["metrics"]
    assert metrics["trades"] == 1  # 6 sold against the first lot (FIFO)
    assert _d(metrics["total_charges"]) == charges
    assert metrics["start_equity"] == curve[0]["equity"]
    assert {"sharpe", "sortino", "cagr", "max_drawdown", "win_rate", "turnover"} <= set(metrics)
    assert body["trading_days_per_year"] == 252 and body["day_timezone"] == "IST"

    # One account, one strategy.
    one = await client.get(URL, params={"broker_config_id": alice.config_id}, headers=alice.headers)
    assert one.status_code == 200 and one.json()["scope"] == f"account:{alice.config_id}"
    assert _d(one.json()["totals"]["net_pnl"]) == net
    mine = await client.get(URL, params={"strategy_id": strategy_id}, headers=alice.headers)
    assert mine.status_code == 200, mine.text
    assert mine.json()["accounts"] == []
    assert _d(mine.json()["totals"]["unrealised_pnl"]) == (Decimal("3200") - buy_s) * 4
    assert mine.json()["metrics"]["trades"] == 0

    # Bob sees his own INFY only, and none of Alice's ids.
    bob_trade = (await _trades(client, bob))[0]
    theirs = await client.get(URL, headers=bob.headers)
    assert theirs.status_code == 200
    bob_totals = theirs.json()["totals"]
    assert _d(bob_totals["unrealised_pnl"]) == (Decimal("1450") - _d(bob_trade["price"])) * 5
    assert _d(bob_totals["charges"]) == _d(bob_trade["charges"])
    assert [a["broker_config_id"] for a in theirs.json()["accounts"]] == [bob.config_id]
    assert theirs.json()["equity_curve_points"] == 1  # no snapshot of Bob's: live point only
    for params, code in (
        ({"broker_config_id": alice.config_id}, "CONFIG_NOT_FOUND"),
        ({"strategy_id": strategy_id}, "NOT_FOUND"),
    ):
        denied = await client.get(URL, params=params, headers=bob.headers)
        assert denied.status_code == 404 and denied.json()["error_code"] == code, denied.text
    # Alice's on-demand snapshot wrote nothing of Bob's, and his wrote nothing of hers.
    assert (await client.post("/api/v1/portfolio/snapshots", headers=bob.headers)).json()[
        "rows"
    ] == 2
    again = (await client.get(URL, headers=alice.headers)).json()
    assert again["equity_curve_points"] == 2


async def test_window_and_bad_parameters(client: httpx.AsyncClient, runtime: Runtime) -> None:
    alice = await register(client, "alice")
    now = datetime.now(UTC)
    past = {
        "from": (now - timedelta(days=10)).isoformat(),
        "to": (now - timedelta(days=9)).isoformat(),
    }
    empty = await client.get(URL, params=past, headers=alice.headers)
    assert empty.status_code == 200, empty.text
    assert empty.json()["equity_curve"] == [] and empty.json()["metrics"]["periods"] == 0
    assert datetime.fromisoformat(empty.json()["from"]) == now - timedelta(days=10)
    for params in (
        {"from": "2024-02-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
        {"risk_free_rate": "2"},
        {"risk_free_rate": "nan"},
        {"from": "yesterday"},
        {"broker_config_id": "no spaces allowed"},
    ):
        response = await client.get(URL, params=params, headers=alice.headers)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error_code"] == "VALIDATION_ERROR"
    unknown = await client.get(URL, params={"broker_config_id": "nope"}, headers=alice.headers)
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "CONFIG_NOT_FOUND"
    assert (await client.get(URL)).status_code == 401
