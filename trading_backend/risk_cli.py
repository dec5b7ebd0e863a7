"""``trading-backend risk``: limits, status, kill switches and resets through a running server.

Every command talks to the server's REST API like ``order`` and ``strategies`` do (log in
with --username/--password, TB_USERNAME/TB_PASSWORD, a token, or the demo credentials):
the risk engine lives in the server process, so a limit set or a switch thrown here takes
effect there at once. ``--user`` (administrators) works on another user's ceiling.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_backend.cli_options import DEFAULT_URL, ApiUrl, Password, Token, Username

app = typer.Typer(
    help="Risk: limits (own and ceilings), status, kill switches, resets.",
    no_args_is_help=True,
)


ConfigId = Annotated[
    str | None,
    typer.Option("--config-id", help="one broker account (default: user-wide / all accounts)"),
]
ForUser = Annotated[
    str | None,
    typer.Option(
        "--user", help="administrators: that user's (id or username) ceiling instead of yours"
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="print the server's JSON answer")]
BASE = "/api/v1/risk"
ADMIN_BASE = "/api/v1/admin/risk"


class KillScope(StrEnum):
    ACCOUNT = "account"
    USER = "user"
    GLOBAL = "global"


def _api(api_url: str, username: str | None, password: str | None, token: str | None) -> Any:
    from trading_backend import cli

    return cli._Api(api_url, username, password, token)


def _print(value: Any) -> None:
    from trading_backend import cli

    cli.console.print_json(json.dumps(value, default=str))


def _shown(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def _parse_limits(pairs: list[str] | None, limits_json: str | None) -> dict[str, Any]:
    """``--limit name=value`` (JSON values when they parse, so ``null`` switches a limit
    off; text otherwise, e.g. 15:15) merged over ``--limits-json``."""
    from trading_backend import cli

    limits: dict[str, Any] = {}
    if limits_json:
        try:
            loaded = json.loads(limits_json)
        except ValueError as exc:
            cli._fail(f"--limits-json is not JSON: {exc}", "VALIDATION_ERROR")
        if not isinstance(loaded, dict):
            cli._fail("--limits-json must be a JSON object", "VALIDATION_ERROR")
        limits.update(loaded)
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            cli._fail(f"--limit wants name=value, got {pair!r}", "VALIDATION_ERROR")
        try:
            limits[name.strip()] = json.loads(raw)
        except ValueError:
            limits[name.strip()] = raw
    return limits


def _limits_table(profile: dict[str, Any]) -> Table:
    """Effective, ceiling, and the user's own value where it is tighter than the ceiling."""
    own = profile["own"] or {}
    table = Table(
        "limit",
        "effective",
        f"ceiling ({profile['ceiling_source']})",
        "tightened to",
        title=f"risk limits of {profile['scope']}",
    )
    for name, value in profile["effective"].items():
        table.add_row(
            name,
            _shown(value),
            _shown(profile["ceiling"][name]),
            _shown(own[name]) if name in profile["tightened"] else "",
        )
    return table


def _limits_path(user: str | None) -> str:
    return f"{ADMIN_BASE}/limits/{user}" if user else f"{BASE}/limits"


@app.command("limits")
def limits(
    config_id: ConfigId = None,
    user: ForUser = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Your effective limits, the ceiling they are held to and what you tightened."""
    from trading_backend import cli

    params = {"config_id": config_id} if config_id else None
    profile = _api(api_url, username, password, token).call(
        "GET", _limits_path(user), params=params
    )
    if as_json:
        _print(profile)
    else:
        cli.console.print(_limits_table(profile))


@app.command("set-limits")
def set_limits(
    limit: Annotated[
        list[str] | None,
        typer.Option("--limit", help="name=value (repeatable; null switches a limit off)"),
    ] = None,
    limits_json: Annotated[
        str | None, typer.Option("--limits-json", help="all limits as a JSON object")
    ] = None,
    config_id: ConfigId = None,
    user: ForUser = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Set your own limits (tightening only; they replace your previous ones), or with
    --user an administrator's ceiling for that user. Names as in docs/risk.md."""
    from trading_backend import cli

    body: dict[str, Any] = {"limits": _parse_limits(limit, limits_json)}
    if config_id:
        body["config_id"] = config_id
    profile = _api(api_url, username, password, token).call("PUT", _limits_path(user), json=body)
    if as_json:
        _print(profile)
    else:
        cli.console.print(_limits_table(profile))


def _usage_table(account: dict[str, Any]) -> Table:
    state = account["state"]
    table = Table(
        "limit",
        "account",
        "user",
        title=(
            f"{account['config_id']} ({account['name']}): {state['effective']}"
            + (
                f" (set on {state['scope']}: {state['reason']})"
                if state["effective"] != "ACTIVE"
                else ""
            )
        ),
    )
    for name, mine in account["account"].items():
        ours = account["user"][name]
        table.add_row(
            name,
            f"{_shown(mine['value'])} / {_shown(mine['limit'])}",
            f"{_shown(ours['value'])} / {_shown(ours['limit'])}",
        )
    for name, value in account["per_order"].items():
        table.add_row(name, f"per order: {_shown(value)}", "")
    funds = account["funds"]
    table.add_row(
        "funds", f"free {_shown(funds['free'])}, reserved {_shown(funds['reserved'])}", ""
    )
    return table


@app.command("status")
def status(
    config_id: ConfigId = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Trading state (and where it is set) and the usage of every limit, per account."""
    from trading_backend import cli

    params = {"config_id": config_id} if config_id else None
    data = _api(api_url, username, password, token).call("GET", f"{BASE}/status", params=params)
    if as_json:
        _print(data)
        return
    cli.console.print(
        f"global: {data['global_state']['state']}, you: {data['user_state']['state']}"
    )
    for account in data["accounts"]:
        cli.console.print(_usage_table(account))


@app.command("kill-switch")
def kill_switch(
    scope: Annotated[KillScope, typer.Argument(help="account (with --config-id), user, global")],
    config_id: ConfigId = None,
    flatten: Annotated[
        bool, typer.Option("--flatten", help="also close the scope's positions at market")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="why (shown in rejections)")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """HALT an account, yourself, or (SUPER_ADMIN) everyone: cancel working orders, stop
    strategies, optionally flatten. New orders are refused until an administrator resets."""
    body: dict[str, Any] = {"scope": scope.value, "flatten": flatten}
    if config_id:
        body["config_id"] = config_id
    if reason:
        body["reason"] = reason
    _print(_api(api_url, username, password, token).call("POST", f"{BASE}/kill-switch", json=body))


@app.command("reset")
def reset(
    scope: Annotated[str, typer.Argument(help="global, user:<user id> or account:<config id>")],
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Back to ACTIVE after a kill switch or a loss-limit breach (ADMIN; global: SUPER_ADMIN)."""
    _print(
        _api(api_url, username, password, token).call(
            "POST", f"{BASE}/reset", json={"scope": scope}
        )
    )
