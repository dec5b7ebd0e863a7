"""``trading-backend strategies``: manage strategies through a running server, or host them.

Everything but ``run`` talks to the server's REST API like ``order`` does (log in with
--username/--password, TB_USERNAME/TB_PASSWORD, a token, or the demo credentials), so a
strategy started here runs in the process that hosts strategies. ``run`` *is* that
process when ``serve`` runs with ``EMBEDDED_STRATEGIES=false``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_backend.cli_options import DEFAULT_URL, ApiUrl, Password, Token, Username
from trading_backend.observability import MetricsPortOption

app = typer.Typer(
    help="Strategies: kinds, create, start, stop, performance; `run` hosts them.",
    no_args_is_help=True,
)


BASE = "/api/v1/strategies"


def _api(api_url: str, username: str | None, password: str | None, token: str | None) -> Any:
    from trading_backend import cli

    return cli._Api(api_url, username, password, token)


def _print(value: Any) -> None:
    from trading_backend import cli

    cli.console.print_json(json.dumps(value, default=str))


def _parse_params(pairs: list[str] | None, params_json: str | None) -> dict[str, Any]:
    """``--param key=value`` (values read as JSON when they parse, else as text) merged
    over ``--params-json``."""
    from trading_backend import cli

    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as exc:
            cli._fail(f"--params-json is not JSON: {exc}", "VALIDATION_ERROR")
        if not isinstance(loaded, dict):
            cli._fail("--params-json must be a JSON object", "VALIDATION_ERROR")
        params.update(loaded)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            cli._fail(f"--param wants key=value, got {pair!r}", "VALIDATION_ERROR")
        try:
            params[key.strip()] = json.loads(raw)
        except ValueError:
            params[key.strip()] = raw
    return params


def _table(strategies: list[dict[str, Any]]) -> Table:
    table = Table("strategy_id", "name", "kind", "status", "config_id", "error")
    for s in strategies:
        table.add_row(
            s["strategy_id"], s["name"], s["kind"], s["status"], s["config_id"], s["error"] or ""
        )
    return table


@app.command("kinds")
def kinds(
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
    schema: Annotated[bool, typer.Option(help="print each kind's parameter schema")] = False,
) -> None:
    """The strategy kinds the server knows (built-in and plugged in)."""
    from trading_backend import cli

    found = _api(api_url, username, password, token).call("GET", f"{BASE}/kinds")
    if schema:
        _print(found)
        return
    table = Table("kind", "category", "description")
    for k in found:
        table.add_row(k["name"], k["category"], k["description"])
    cli.console.print(table)


@app.command("list")
def list_strategies(
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Your strategies and their status."""
    from trading_backend import cli

    cli.console.print(_table(_api(api_url, username, password, token).call("GET", BASE)))


@app.command("create")
def create(
    name: str,
    kind: Annotated[str, typer.Option(help="a kind from `strategies kinds`")],
    config_id: Annotated[str, typer.Option("--config-id", help="the broker config it trades")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value (repeatable; JSON values)")
    ] = None,
    params_json: Annotated[
        str | None, typer.Option("--params-json", help="all parameters as a JSON object")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Create a strategy (stopped); parameters are validated against its kind."""
    body = {
        "name": name,
        "kind": kind,
        "config_id": config_id,
        "params": _parse_params(param, params_json),
    }
    _print(_api(api_url, username, password, token).call("POST", BASE, json=body))


@app.command("show")
def show(
    strategy_id: str,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """One strategy: parameters, status, state, last error."""
    _print(_api(api_url, username, password, token).call("GET", f"{BASE}/{strategy_id}"))


@app.command("update")
def update(
    strategy_id: str,
    name: Annotated[str | None, typer.Option(help="new name")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value (repeatable; JSON values)")
    ] = None,
    params_json: Annotated[
        str | None, typer.Option("--params-json", help="all parameters as a JSON object")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Rename or re-parameterise a stopped strategy (given parameters replace the old)."""
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if param or params_json:
        body["params"] = _parse_params(param, params_json)
    _print(
        _api(api_url, username, password, token).call("PATCH", f"{BASE}/{strategy_id}", json=body)
    )


def _action(method: str, suffix: str, doc: str) -> Any:
    def command(
        strategy_id: str,
        api_url: ApiUrl = DEFAULT_URL,
        username: Username = None,
        password: Password = None,
        token: Token = None,
    ) -> None:
        from trading_backend import cli

        result = _api(api_url, username, password, token).call(
            method, f"{BASE}/{strategy_id}{suffix}"
        )
        if isinstance(result, dict) and "status" in result:
            cli.console.print(_table([result]))
        else:
            cli.console.print(f"deleted {strategy_id}")

    command.__doc__ = doc
    return command


app.command("start")(_action("POST", "/start", "Start (or restart after an error)."))
app.command("stop")(_action("POST", "/stop", "Stop: on_stop runs, the state is kept."))
app.command("delete")(_action("DELETE", "", "Delete (stopping it first); its orders stay."))


@app.command("performance")
def performance(
    strategy_id: str,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """P&L (realised, unrealised, charges), trades, win rate and recent signals."""
    from trading_backend import cli

    data = _api(api_url, username, password, token).call("GET", f"{BASE}/{strategy_id}/performance")
    table = Table("metric", "value")
    for key in (
        "realised_pnl",
        "unrealised_pnl",
        "charges",
        "net_pnl",
        "trades",
        "round_trips",
        "winning_round_trips",
        "win_rate",
        "signals",
        "open_positions",
    ):
        value = data[key]
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    cli.console.print(table)
    log = Table("time", "kind", "data")
    for entry in data["recent_log"]:
        log.add_row(entry["created_at"], entry["kind"], json.dumps(entry["data"]))
    cli.console.print(log)


@app.command("logs")
def logs(
    strategy_id: str,
    limit: Annotated[int, typer.Option(min=1, max=500, help="newest entries")] = 50,
    kind: Annotated[str | None, typer.Option(help="signal, info, error, ...")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """The strategy's signal log, newest first."""
    from trading_backend import cli

    params: dict[str, Any] = {"limit": limit}
    if kind:
        params["kind"] = kind
    entries = _api(api_url, username, password, token).call(
        "GET", f"{BASE}/{strategy_id}/logs", params=params
    )
    table = Table("time", "kind", "data")
    for entry in entries:
        table.add_row(entry["created_at"], entry["kind"], json.dumps(entry["data"]))
    cli.console.print(table)


@app.command("run")
def run(metrics_port: MetricsPortOption = None) -> None:
    """Host the strategies in this process (with its own order worker and paper market):
    resume every RUNNING strategy, then follow starts and stops made through the API.
    Run exactly one, with EMBEDDED_STRATEGIES=false on every `serve`."""
    from trading_backend import cli
    from trading_backend.logging import configure_logging
    from trading_backend.runtime import Runtime

    settings = cli._settings()
    configure_logging(settings.log_level, settings.log_json)
    metrics = cli._role_metrics("strategies", settings, metrics_port)  # -- metrics (#7)

    async def main() -> None:
        runtime = Runtime(settings)
        if metrics is not None:
            metrics.attach(runtime)
        await runtime.start(strategies=True)
        running = len(runtime.strategy_runner.running_ids)
        try:
            await runtime.wait_for_signal(
                lambda: cli.console.print(
                    f"strategy runner hosting {running} strategies; Ctrl-C or SIGTERM to stop"
                )
            )
        finally:
            if metrics is not None:
                await metrics.detach()
            await runtime.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.close()
