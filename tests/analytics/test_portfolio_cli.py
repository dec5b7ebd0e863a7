"""`trading-backend portfolio snapshot|analytics` against a live `serve`, as a user types it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx

from tests.test_cli import cli, env, server

__all__ = ["env", "server"]  # the fixtures, shared with the main CLI tests


def test_portfolio_commands(server: str, env: dict[str, str]) -> None:
    api = ["--api-url", server]
    # The trade goes in through the API directly: one CLI process less to start.
    demo = json.loads((Path(env["TRADING_BACKEND_DATA_DIR"]) / "demo-credentials.json").read_text())
    credentials = {"username": demo["username"], "password": demo["password"]}
    login = httpx.post(f"{server}/api/v1/auth/login", json=credentials, timeout=30)
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    order = {
        "symbol": "TCS", "exchange": "NSE", "side": "BUY", "order_type": "MARKET",
        "product_type": "DELIVERY", "quantity": 3,
    }  # fmt: skip
    bought = httpx.post(
        f"{server}/api/v1/brokers/orders/place",
        json={"config_id": "demo-paper", "order": order},
        headers=headers,
        timeout=30,
    )
    assert bought.status_code == 201, bought.text
    snap = cli("portfolio", "snapshot", *api, env=env)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert "2 scope(s) recorded" in snap.stdout  # the demo user and its paper account

    shown = cli("portfolio", "analytics", "--json", *api, env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    body = json.loads(shown.stdout)
    assert body["accounts"][0]["broker_config_id"] == "demo-paper"
    assert body["totals"]["fills"] == 1 and Decimal(body["totals"]["charges"]) > 0
    assert body["equity_curve_points"] == 2  # the snapshot and the live point
    table = cli("portfolio", "analytics", "--config-id", "demo-paper", *api, env=env)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "P&L of account:demo-paper" in table.stdout and "sharpe" in table.stdout
