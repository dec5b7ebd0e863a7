"""``trading-backend portfolio``: live analytics and on-demand snapshots, through a running
server's REST API (like ``risk`` and ``order``: log in with --username/--password,
TB_USERNAME/TB_PASSWORD, a token, or the demo credentials)."""

from __future__ import annotations

import importlib
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_backend.cli_options import DEFAULT_URL, ApiUrl, Password, Token, Username

app = typer.Typer(help="Portfolio analytics: P&L, equity curve, metrics.", no_args_is_help=True)


BASE = "/api/v1/portfolio"
# The metrics shown in the table (``--json`` prints all of them).
SHOWN = (
    "total_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration_days",
    "trades",
    "win_rate",
    "profit_factor",
    "average_trade",
    "turnover",
    "total_charges",
)


def _cli() -> Any:
    """The main CLI module (its console and REST client), imported by name when a command
    runs: a static import would pull the whole application into this package's strict
    type check."""
    return importlib.import_module("trading_backend.cli")


def _api(api_url: str, username: str | None, password: str | None, token: str | None) -> Any:
    return _cli()._Api(api_url, username, password, token)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@app.command("analytics")
def analytics(
    config_id: Annotated[
        str | None, typer.Option("--config-id", help="one broker account (default: all)")
    ] = None,
    strategy_id: Annotated[str | None, typer.Option("--strategy-id", help="one strategy")] = None,
    start: Annotated[str | None, typer.Option("--from", help="curve start, ISO 8601")] = None,
    end: Annotated[str | None, typer.Option("--to", help="curve end, ISO 8601")] = None,
    risk_free_rate: Annotated[
        float, typer.Option("--risk-free-rate", help="annual, e.g. 0.065")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's JSON")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """P&L totals, per account and strategy, and the metrics of the equity curve."""
    cli = _cli()

    params: dict[str, Any] = {"risk_free_rate": risk_free_rate}
    for name, value in (
        ("broker_config_id", config_id),
        ("strategy_id", strategy_id),
        ("from", start),
        ("to", end),
    ):
        if value is not None:
            params[name] = value
    body = _api(api_url, username, password, token).call("GET", f"{BASE}/analytics", params=params)
    if as_json:
        cli.console.print_json(json.dumps(body))
        return
    parts = Table(
        "part", "realised", "unrealised", "day P&L", "charges", "net", "equity",
        title=f"P&L of {body['scope']}",
    )  # fmt: skip
    rows = [("total", body["totals"])]
    rows += [(f"account {a['broker_config_id']}", a) for a in body["accounts"]]
    rows += [
        (
            f"strategy {s['strategy_id']}"
            if s["strategy_id"]
            else f"manual {s['broker_config_id']}",
            s,
        )
        for s in body["strategies"]
    ]
    for label, figures in rows:
        parts.add_row(
            label,
            figures["realised_pnl"],
            figures["unrealised_pnl"],
            figures["day_pnl"],
            figures["charges"],
            figures["net_pnl"],
            figures["equity"],
        )
    cli.console.print(parts)
    metrics = Table("metric", "value", title=f"metrics ({body['equity_curve_points']} points)")
    for name in SHOWN:
        metrics.add_row(name, _shown(body["metrics"].get(name)))
    cli.console.print(metrics)


@app.command("snapshot")
def snapshot(
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Record your portfolio's equity now."""
    cli = _cli()

    body = _api(api_url, username, password, token).call("POST", f"{BASE}/snapshots")
    cli.console.print(f"snapshot at {body['taken_at']}: {body['rows']} scope(s) recorded")
