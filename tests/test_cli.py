"""The CLI end to end: `serve` on a fresh data directory (demo user, paper account), then
the trading commands against it, as a user would type them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    [],
    ["serve"],
    ["worker"],
    ["db"],
    ["db", "upgrade"],
    ["user"],
    ["user", "create"],
    ["broker"],
    ["broker", "add"],
    ["order"],
    ["order", "place"],
    ["order", "list"],
    ["order", "cancel"],
    ["order", "modify"],
    ["order", "show"],
    ["trades"],
    ["positions"],
    ["balance"],
    ["quote"],
    ["status"],
    ["keys", "generate"],
    ["user", "list"],
    ["broker", "list"],
    ["user", "unlock"],
    ["user", "reset-2fa"],
    ["user", "logout-all"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "list"],
    ["api-key", "create"],
    ["api-key", "list"],
    ["api-key", "revoke"],
    ["strategies"],
    ["strategies", "kinds"],
    ["strategies", "list"],
    ["strategies", "create"],
    ["strategies", "show"],
    ["strategies", "update"],
    ["strategies", "start"],
    ["strategies", "stop"],
    ["strategies", "delete"],
    ["strategies", "performance"],
    ["strategies", "logs"],
    ["strategies", "run"],
    ["risk"],
    ["risk", "limits"],
    ["risk", "set-limits"],
    ["risk", "status"],
    ["risk", "kill-switch"],
    ["risk", "reset"],
    ["data"],
    ["data", "import"],
    ["data", "export"],
    ["instruments"],
    ["instruments", "load"],
    ["instruments", "search"],
    ["broker", "setup-angel-one"],
    ["queue"],
    ["queue", "depth"],
    ["queue", "dead-letters"],
    ["queue", "retry"],
    ["marketdata"],
    ["marketdata", "run"],
]


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trading_backend.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    values.update(
        TRADING_BACKEND_DATA_DIR=str(tmp_path / "data"),
        ENVIRONMENT="development",
        PYTHONPATH=str(ROOT),
        COLUMNS="200",
    )
    return values


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command: list[str], env: dict[str, str]) -> None:
    result = cli(*command, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trading_backend.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:  # readiness of another process: bounded polling, not synchronisation
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"server did not start:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_creates_demo_user_and_cli_trades(server: str, env: dict[str, str]) -> None:
    demo = json.loads((Path(env["TRADING_BACKEND_DATA_DIR"]) / "demo-credentials.json").read_text())
    assert demo["username"] == "demo" and demo["config_id"] == "demo-paper"
    assert oct((Path(env["TRADING_BACKEND_DATA_DIR"]) / "secrets.env").stat().st_mode)[-3:] == "600"
    api = ["--api-url", server]

    placed = cli(
        "order",
        "place",
        "--config-id",
        "demo-paper",
        "--symbol",
        "TCS",
        "--side",
        "BUY",
        "--quantity",
        "2",
        *api,
        env=env,
    )
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert "FILLED" in placed.stdout

    infy = cli("quote", "INFY", "--config-id", "demo-paper", *api, env=env)
    ltp = Decimal(str(json.loads(infy.stdout)["ltp"]))
    low = (ltp * Decimal("0.97")).quantize(Decimal("0.1"))  # rests, inside the price band
    limit = cli(
        "order",
        "place",
        "--config-id",
        "demo-paper",
        "--symbol",
        "INFY",
        "--side",
        "BUY",
        "--quantity",
        "1",
        "--type",
        "LIMIT",
        "--price",
        str(low),
        *api,
        env=env,
    )
    assert limit.returncode == 0 and "OPEN" in limit.stdout, limit.stdout + limit.stderr
    order_id = next(w for w in limit.stdout.split() if w.startswith("o") and len(w) == 20)

    listed = cli("order", "list", *api, env=env)
    assert listed.returncode == 0 and order_id in listed.stdout

    higher = str(low + Decimal("1"))
    modified = cli("order", "modify", order_id, "--price", higher, "--quantity", "2", *api, env=env)
    assert modified.returncode == 0 and higher in modified.stdout, modified.stdout + modified.stderr
    shown = cli("order", "show", order_id, *api, env=env)
    assert shown.returncode == 0 and "MODIFIED" in shown.stdout and "ACCEPTED" in shown.stdout

    cancelled = cli("order", "cancel", order_id, *api, env=env)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout

    bad = cli(
        "order",
        "place",
        "--config-id",
        "demo-paper",
        "--symbol",
        "TCS",
        "--side",
        "BUY",
        "--quantity",
        "0",
        *api,
        env=env,
    )
    assert bad.returncode == 1 and "VALIDATION_ERROR" in bad.stderr

    book = cli("trades", *api, env=env)
    assert book.returncode == 0 and "NSE:TCS" in book.stdout
    held = cli("positions", "--config-id", "demo-paper", *api, env=env)
    assert held.returncode == 0 and "NSE:TCS" in held.stdout and "DELIVERY" in held.stdout
    funds = cli("balance", "--config-id", "demo-paper", *api, env=env)
    assert funds.returncode == 0 and "available_cash" in funds.stdout
    quoted = cli("quote", "RELIANCE", "--config-id", "demo-paper", *api, env=env)
    assert quoted.returncode == 0 and '"ltp"' in quoted.stdout
    missing = cli("quote", "NOSUCH", "--config-id", "demo-paper", *api, env=env)
    assert missing.returncode == 1 and "INSTRUMENT_NOT_FOUND" in missing.stderr

    status = cli("status", *api, env=env)
    assert status.returncode == 0 and '"total_sessions": 1' in status.stdout


def test_strategies_commands(server: str, env: dict[str, str]) -> None:
    api = ["--api-url", server]
    kinds = cli("strategies", "kinds", *api, env=env)
    assert kinds.returncode == 0, kinds.stdout + kinds.stderr
    for kind in ("mean_reversion", "momentum", "options_selling", "futures_arbitrage", "grid"):
        assert kind in kinds.stdout

    bad = cli(
        "strategies", "create", "x", "--kind", "dca", "--config-id", "demo-paper",
        "--param", "amount=-5", *api, env=env,
    )  # fmt: skip
    assert bad.returncode == 1 and "VALIDATION_ERROR" in bad.stderr, bad.stdout + bad.stderr

    created = cli(
        "strategies", "create", "btc dca", "--kind", "dca", "--config-id", "demo-paper",
        "--param", "interval_bars=4", "--param", "timeframe=1m", *api, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    strategy = json.loads(created.stdout)
    strategy_id = strategy["strategy_id"]
    assert strategy["params"]["interval_bars"] == 4 and strategy["status"] == "STOPPED"

    started = cli("strategies", "start", strategy_id, *api, env=env)
    assert started.returncode == 0 and "RUNNING" in started.stdout, started.stdout + started.stderr
    listed = cli("strategies", "list", *api, env=env)
    assert strategy_id in listed.stdout and "RUNNING" in listed.stdout
    perf = cli("strategies", "performance", strategy_id, *api, env=env)
    assert perf.returncode == 0 and "net_pnl" in perf.stdout, perf.stdout + perf.stderr
    stopped = cli("strategies", "stop", strategy_id, *api, env=env)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout
    updated = cli("strategies", "update", strategy_id, "--name", "renamed", *api, env=env)
    assert updated.returncode == 0 and json.loads(updated.stdout)["name"] == "renamed"
    logs = cli("strategies", "logs", strategy_id, *api, env=env)
    assert logs.returncode == 0, logs.stderr
    deleted = cli("strategies", "delete", strategy_id, *api, env=env)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = cli("strategies", "show", strategy_id, *api, env=env)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_risk_commands(server: str, env: dict[str, str]) -> None:
    api = ["--api-url", server]

    def buy(quantity: int) -> subprocess.CompletedProcess[str]:
        return cli(
            "order", "place", "--config-id", "demo-paper", "--symbol", "TCS", "--side", "BUY",
            "--quantity", str(quantity), *api, env=env,
        )  # fmt: skip

    status = cli("risk", "status", *api, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "demo-paper" in status.stdout and "ACTIVE" in status.stdout
    assert "max_open_orders" in status.stdout

    tight = cli("risk", "set-limits", "--limit", "max_order_value=50000", *api, env=env)
    assert tight.returncode == 0, tight.stdout + tight.stderr
    row = next(line for line in tight.stdout.splitlines() if "max_order_value" in line)
    assert row.count("50,000") == 2 and "1,000,000" in row, tight.stdout  # effective, own
    shown = cli("risk", "limits", "--json", *api, env=env)
    assert json.loads(shown.stdout)["effective"]["max_order_value"] == 50000
    loose = cli("risk", "set-limits", "--limit", "max_order_value=99999999", *api, env=env)
    assert loose.returncode == 1 and "VALIDATION_ERROR" in loose.stderr, loose.stdout + loose.stderr
    assert "max_order_value" in loose.stderr
    over = buy(100)  # ~3,150 x 100 is over 50,000
    assert over.returncode == 1 and "RISK_REJECTED" in over.stderr, over.stdout + over.stderr

    killed = cli(
        "risk", "kill-switch", "account", "--config-id", "demo-paper", "--reason", "cli test",
        *api, env=env,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert json.loads(killed.stdout)["state"] == "HALTED"
    halted = cli("risk", "status", "--config-id", "demo-paper", *api, env=env)
    assert "HALTED" in halted.stdout and "cli test" in halted.stdout, halted.stdout
    refused = buy(1)
    assert refused.returncode == 1 and "RISK_REJECTED" in refused.stderr
    assert "halted for account:demo-paper (cli test)" in refused.stderr, refused.stderr

    everyone = cli("risk", "kill-switch", "global", *api, env=env)  # the demo user is an ADMIN
    assert everyone.returncode == 1 and "FORBIDDEN" in everyone.stderr
    reset = cli("risk", "reset", "account:demo-paper", *api, env=env)
    assert reset.returncode == 0 and json.loads(reset.stdout)["state"] == "ACTIVE", reset.stderr
    again = buy(1)
    assert again.returncode == 0 and "FILLED" in again.stdout, again.stdout + again.stderr


def test_user_and_broker_commands(env: dict[str, str]) -> None:
    assert cli("db", "upgrade", env=env).returncode == 0
    created = cli("user", "create", "carol", "--password", "long-enough-pw", "--admin", env=env)
    assert created.returncode == 0 and "role=ADMIN" in created.stdout
    dup = cli("user", "create", "carol", "--password", "long-enough-pw", env=env)
    assert dup.returncode == 1 and "CONFLICT" in dup.stderr
    added = cli(
        "broker",
        "add",
        "--user",
        "carol",
        "--name",
        "paper one",
        "--config-id",
        "c1",
        "--setting",
        "initial_capital=500000",
        "--credential",
        "api_key=XYZSECRET",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    listed = cli("broker", "list", "--user", "carol", env=env)
    assert "c1" in listed.stdout and "XYZSECRET" not in listed.stdout
    missing = cli("broker", "add", "--user", "nobody", "--name", "x", env=env)
    assert missing.returncode == 1 and "USER_NOT_FOUND" in missing.stderr


def test_api_key_commands(env: dict[str, str]) -> None:
    for name in ("root", "dave"):  # the first user is an ADMIN; dave is a USER
        assert cli("user", "create", name, "--password", "long-enough-pw", env=env).returncode == 0
    created = cli(
        "api-key", "create", "--user", "dave", "--name", "bot", "--scope", "trade", env=env
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tb_")
    key_id = created.stdout.split("created API key ")[1].split()[0]
    listed = cli("api-key", "list", "--user", "dave", env=env)
    assert key_id in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout and key.split("_")[1] in listed.stdout  # prefix only
    assert cli("api-key", "revoke", key_id, "--user", "dave", env=env).returncode == 0
    assert "revoked" in cli("api-key", "list", "--user", "dave", env=env).stdout
    other = cli("api-key", "revoke", key_id, "--user", "nobody", env=env)
    assert other.returncode == 1 and "USER_NOT_FOUND" in other.stderr
    admin_scope = cli(
        "api-key", "create", "--user", "dave", "--name", "x", "--scope", "admin", env=env
    )
    assert admin_scope.returncode == 1 and "FORBIDDEN" in admin_scope.stderr


def test_unlock_and_logout_all(env: dict[str, str], tmp_path: Path) -> None:
    import asyncio

    from cryptography.fernet import Fernet

    from tests.conftest import make_settings
    from trading_backend.domain import DomainError
    from trading_backend.runtime import Runtime

    database = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    secrets = {"master_encryption_key": Fernet.generate_key().decode(), "jwt_secret_key": "x" * 40}
    env.update(DATABASE_URL=database, **{k.upper(): v for k, v in secrets.items()})
    assert cli("user", "create", "erin", "--password", "long-enough-pw", env=env).returncode == 0

    async def with_runtime(work: Any) -> Any:
        runtime = Runtime(make_settings(tmp_path, database, **secrets))
        await runtime.start(worker=False, market=False, health_monitor=False)
        try:
            return await work(runtime)
        finally:
            await runtime.stop()

    async def lock(runtime: Runtime) -> str:
        for _ in range(runtime.logins.max_failures):
            with pytest.raises(DomainError):
                await runtime.logins.login("erin", "wrong-password")
        with pytest.raises(DomainError) as locked:
            await runtime.logins.login("erin", "long-enough-pw")
        return locked.value.code.value

    async def login(runtime: Runtime) -> str:
        _, pair = await runtime.logins.login("erin", "long-enough-pw")
        return pair.refresh_token

    async def refresh(runtime: Runtime, token: str) -> str:
        try:
            await runtime.auth_sessions.refresh(token)
        except DomainError as exc:
            return exc.code.value
        return "refreshed"

    assert asyncio.run(with_runtime(lock)) == "ACCOUNT_LOCKED"
    unlocked = cli("user", "unlock", "erin", env=env)
    assert unlocked.returncode == 0 and "5 failed attempts" in unlocked.stdout
    token = asyncio.run(with_runtime(login))
    assert cli("user", "logout-all", "erin", env=env).returncode == 0
    assert asyncio.run(with_runtime(lambda rt: refresh(rt, token))) == "TOKEN_REVOKED"

    async def enable_2fa(runtime: Runtime) -> bool:
        import pyotp

        user = await runtime.accounts.resolve_user("erin")
        enrolment = await runtime.two_factor.enrol(user.id)
        await runtime.two_factor.confirm(user.id, pyotp.TOTP(enrolment.secret).now())
        with pytest.raises(DomainError) as needed:
            await runtime.logins.login("erin", "long-enough-pw")
        assert needed.value.code.value == "TOTP_REQUIRED"
        return bool(await runtime.two_factor.is_enabled(user.id))

    assert asyncio.run(with_runtime(enable_2fa))
    reset = cli("user", "reset-2fa", "erin", env=env)
    assert reset.returncode == 0 and "reset" in reset.stdout
    assert asyncio.run(with_runtime(login))  # the password alone logs in again
