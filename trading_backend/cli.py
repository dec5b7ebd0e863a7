"""The ``trading-backend`` command line.

Server-side commands (serve, worker, strategies run, db, user, broker, keys, audit) work
on the database directly. Trading commands (order, strategies, risk, status) talk to a
running server's REST API, logging in
with --username/--password (or TB_USERNAME/TB_PASSWORD, or the demo credentials in the
data directory).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from trading_backend import data_cli, instruments_cli, risk_cli
from trading_backend.accounts import audit_cli
from trading_backend.cli_options import DEFAULT_URL, ApiUrl, Password, Token, Username
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.observability import MetricsPortOption
from trading_backend.strategies import cli as strategies_cli

app = typer.Typer(
    help="Multi-user, multi-broker algorithmic trading backend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
broker_app = typer.Typer(help="Broker account configs.", no_args_is_help=True)
order_app = typer.Typer(help="Orders (through a running server's API).", no_args_is_help=True)
keys_app = typer.Typer(help="Secrets.", no_args_is_help=True)
api_key_app = typer.Typer(
    help="API keys of a user (for programs and webhooks).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(broker_app, name="broker")
app.add_typer(order_app, name="order")
app.add_typer(keys_app, name="keys")
app.add_typer(api_key_app, name="api-key")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(strategies_cli.app, name="strategies")
app.add_typer(risk_cli.app, name="risk")
app.add_typer(data_cli.app, name="data")
app.add_typer(instruments_cli.app, name="instruments")
# -- queue (issue #7) --
from trading_backend import queue_cli  # noqa: E402

app.add_typer(queue_cli.app, name="queue")
# -- end queue
# -- mdrole (issue #7) --
from trading_backend import marketdata_cli  # noqa: E402

app.add_typer(marketdata_cli.app, name="marketdata")
# -- end mdrole
# -- portfolio analytics (issue #8) --
from trading_backend.analytics import cli as portfolio_cli  # noqa: E402

app.add_typer(portfolio_cli.app, name="portfolio")
# -- end portfolio analytics
# -- backtests (issue #8) --
from trading_backend.backtest import cli as backtest_cli  # noqa: E402

backtest_cli.register(app)
# -- end backtests

# Broker-specific setup commands (issue #6).
from trading_backend.brokers import angel_one_cli  # noqa: E402

angel_one_cli.register(broker_app)

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Any:
    from trading_backend.settings import ConfigurationError, get_settings

    try:
        return get_settings()
    except ConfigurationError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


# -- metrics (issue #7) --
def _role_metrics(role: str, settings: Any, port: int | None) -> Any:
    """The role's metrics endpoint (``observability.RoleMetrics``), bound before the role
    starts, or None when off; a port that cannot be used is a configuration error."""
    from trading_backend.observability import MetricsPortError, open_role_metrics

    try:
        metrics = open_role_metrics(role, settings, port)
    except MetricsPortError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    if metrics is not None:
        console.print(f"metrics on {metrics.url} (no authentication)")
    return metrics


# -- end metrics


def _fail(message: str, code: str | None = None) -> None:
    err_console.print(f"[red]error[/red]{f' [{code}]' if code else ''}: {message}")
    raise typer.Exit(1)


def _with_runtime(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(runtime)`` against the database (migrated), without background tasks."""
    from trading_backend.logging import configure_logging
    from trading_backend.runtime import Runtime

    settings = _settings()
    configure_logging("WARNING")

    async def main() -> T:
        runtime = Runtime(settings)
        try:
            await runtime.start(worker=False, market=False, health_monitor=False)
            return await work(runtime)
        finally:
            await runtime.stop()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        _fail(exc.message, exc.code.value)
        raise  # unreachable


# -- server processes -------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="bind address (default HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default PORT or 8000)")] = None,
    demo: Annotated[
        bool | None,
        typer.Option("--demo/--no-demo", help="create the demo user (default: in development)"),
    ] = None,
) -> None:
    """Run the API server with the embedded worker, paper market, health monitor and
    strategy runner (EMBEDDED_WORKER / EMBEDDED_STRATEGIES turn the last ones off)."""
    import uvicorn

    from trading_backend.api.app import create_app
    from trading_backend.demo import ensure_demo_user
    from trading_backend.logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    host = host or settings.host
    port = port or settings.port
    if demo if demo is not None else (settings.create_demo_user and not settings.is_production):
        creds = _with_runtime(ensure_demo_user)
        configure_logging(settings.log_level, settings.log_json)
        console.print(
            f"[bold green]Demo user[/bold green]: username [bold]{creds['username']}[/bold]"
            f"  password [bold]{creds['password']}[/bold]"
            f"  paper config [bold]{creds['config_id']}[/bold]"
            f"  (saved in {settings.data_dir / 'demo-credentials.json'})"
        )
    console.print(f"API on http://{host}:{port}  (docs at http://{host}:{port}/docs)")
    from trading_backend.observability import mark_role  # -- metrics (issue #7)

    mark_role("api")
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="orders carried out at once")] = None,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run an order worker (with its own paper market) without the API."""
    from trading_backend.logging import configure_logging
    from trading_backend.runtime import Runtime

    settings = _settings()
    if concurrency:
        settings.worker_concurrency = concurrency
    configure_logging(settings.log_level, settings.log_json)
    metrics = _role_metrics("worker", settings, metrics_port)

    async def main() -> None:
        runtime = Runtime(settings)
        if metrics is not None:
            metrics.attach(runtime)
        await runtime.start()
        try:
            await runtime.wait_for_signal(
                lambda: console.print(
                    f"worker {runtime.worker.worker_id} running; Ctrl-C or SIGTERM to stop"
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


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply database migrations (idempotent)."""
    from trading_backend.logging import configure_logging
    from trading_backend.storage.database import create_engine, upgrade_database

    settings = _settings()
    configure_logging("WARNING")

    async def main() -> None:
        engine = create_engine(settings.effective_database_url)
        try:
            await upgrade_database(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(main())
    console.print(f"database at {revision}: {_redacted_url(settings.effective_database_url)}")


def _redacted_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- users and configs ------------------------------------------------------------------------
@user_app.command("create")
def user_create(
    username: str,
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, help="at least 8 characters"
        ),
    ],
    admin: Annotated[bool, typer.Option("--admin", help="make the user an ADMIN")] = False,
    user_id: Annotated[str | None, typer.Option("--id", help="user id (default generated)")] = None,
    role: Annotated[
        str | None, typer.Option(help="USER, ADMIN or SUPER_ADMIN (overrides --admin)")
    ] = None,
) -> None:
    """Create a user (the first user of a deployment is an ADMIN)."""

    async def work(runtime: Any) -> Any:
        return await runtime.accounts.create_user(
            username,
            password,
            role=role.upper() if role else ("ADMIN" if admin else None),
            user_id=user_id,
        )

    user = _with_runtime(work)
    console.print(f"created user [bold]{user.username}[/bold] id={user.id} role={user.role}")


@user_app.command("set-role")
def user_set_role(
    user: Annotated[str, typer.Argument(help="user id or username")],
    role: Annotated[str, typer.Argument(help="USER, ADMIN or SUPER_ADMIN")],
) -> None:
    """Change a user's role (for the operator of the machine: this is how the first
    SUPER_ADMIN is made). Ends the user's sessions."""
    from trading_backend.storage.models import User
    from trading_backend.storage.repositories import add_audit, find_user

    role = role.upper()
    if role not in ("USER", "ADMIN", "SUPER_ADMIN"):
        _fail("role must be USER, ADMIN or SUPER_ADMIN", "VALIDATION_ERROR")

    async def work(runtime: Any) -> str:
        async with runtime.db() as session, session.begin():
            row = await find_user(session, user)
            if row is None:
                raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
            row = await session.get(User, row.id)
            row.role = role
            await add_audit(
                session,
                "admin.user_changed",
                user_id=None,
                target=row.id,
                data={"role": role, "by": "cli"},
            )
            user_id = str(row.id)
        await runtime.auth_sessions.revoke_all(user_id, "role_changed")
        return user_id

    changed = _with_runtime(work)
    console.print(f"user {changed} is now {role}")


@user_app.command("logout-all")
def user_logout_all(user: Annotated[str, typer.Argument(help="user id or username")]) -> None:
    """End every login session of a user (refresh and access tokens stop working)."""
    from trading_backend.storage.repositories import add_audit

    async def work(runtime: Any) -> str:
        found = await runtime.accounts.resolve_user(user)
        if found is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        await runtime.auth_sessions.revoke_all(found.id, "operator")
        async with runtime.db() as session, session.begin():
            await add_audit(
                session, "auth.logout_all", user_id=None, target=found.id, data={"by": "cli"}
            )
        return str(found.username)

    console.print(f"ended every session of {_with_runtime(work)}")


@user_app.command("unlock")
def user_unlock(user: Annotated[str, typer.Argument(help="username")]) -> None:
    """Lift a login lock-out: forget the account's failed login attempts."""
    from sqlalchemy import delete

    from trading_backend.storage.models import LoginAttemptRow
    from trading_backend.storage.repositories import add_audit

    async def work(runtime: Any) -> int:
        async with runtime.db() as session, session.begin():
            result = await session.execute(
                delete(LoginAttemptRow).where(
                    LoginAttemptRow.username == user, LoginAttemptRow.success.is_(False)
                )
            )
            await add_audit(
                session, "admin.user_unlocked", user_id=None, target=user, data={"by": "cli"}
            )
            return int(result.rowcount or 0)

    console.print(f"unlocked {user} ({_with_runtime(work)} failed attempts forgotten)")


@user_app.command("reset-2fa")
def user_reset_2fa(user: Annotated[str, typer.Argument(help="user id or username")]) -> None:
    """Turn a user's two-factor authentication off (lost phone, no recovery code left) and
    end their sessions; they log in with the password alone and enrol again."""

    async def work(runtime: Any) -> tuple[str, bool]:
        found = await runtime.accounts.resolve_user(user)
        if found is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        had = await runtime.two_factor.reset(found.id, by="cli")
        await runtime.auth_sessions.revoke_all(found.id, "2fa_reset")
        return str(found.username), had

    name, had = _with_runtime(work)
    console.print(
        f"two-factor authentication of {name} {'reset' if had else 'was not enabled'};"
        " sessions ended"
    )


@user_app.command("list")
def user_list() -> None:
    """List users (no secrets)."""

    async def work(runtime: Any) -> Any:
        return await runtime.accounts.list_users()

    table = Table("id", "username", "role")
    for user in _with_runtime(work):
        table.add_row(user.id, user.username, user.role)
    console.print(table)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"{what} must look like key=value, got {item!r}")
        result[key.strip()] = value
    return result


@broker_app.command("add")
def broker_add(
    user: Annotated[str, typer.Option("--user", help="user id or username")],
    name: Annotated[str, typer.Option(help="a name for this account")],
    broker: Annotated[str, typer.Option(help="broker adapter, e.g. paper")] = "paper",
    config_id: Annotated[
        str | None, typer.Option("--config-id", help="config id (default generated)")
    ] = None,
    setting: Annotated[
        list[str] | None, typer.Option(help="adapter setting key=value (repeatable)")
    ] = None,
    credential: Annotated[
        list[str] | None, typer.Option(help="credential key=value (repeatable; stored encrypted)")
    ] = None,
) -> None:
    """Add a broker account config for a user."""
    settings_map: dict[str, Any] = {}
    for key, value in _pairs(setting, "--setting").items():
        try:
            settings_map[key] = json.loads(value)
        except ValueError:
            settings_map[key] = value
    creds = _pairs(credential, "--credential")

    async def work(runtime: Any) -> Any:
        info = await runtime.accounts.resolve_user(user)
        if info is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        return await runtime.accounts.create_config(
            info.id, broker, name, credentials=creds, settings=settings_map, config_id=config_id
        )

    created = _with_runtime(work)
    console.print(
        f"created {created['broker']} config"
        f" [bold]{created['config_id']}[/bold] ({created['name']})"
    )


@broker_app.command("list")
def broker_list(user: Annotated[str, typer.Option("--user", help="user id or username")]) -> None:
    """List a user's broker configs (credentials masked)."""

    async def work(runtime: Any) -> Any:
        info = await runtime.accounts.resolve_user(user)
        return [] if info is None else await runtime.accounts.list_configs(info.id)

    table = Table("config_id", "broker", "name")
    for config in _with_runtime(work):
        table.add_row(config["config_id"], config["broker"], config["name"])
    console.print(table)


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new MASTER_ENCRYPTION_KEY and JWT_SECRET_KEY for a production environment."""
    import secrets

    from cryptography.fernet import Fernet

    console.print(f"MASTER_ENCRYPTION_KEY={Fernet.generate_key().decode()}")
    console.print(f"JWT_SECRET_KEY={secrets.token_urlsafe(48)}")


@keys_app.command("rotate")
def keys_rotate(
    batch: Annotated[int, typer.Option(help="rows re-encrypted per transaction")] = 200,
) -> None:
    """Re-encrypt every stored secret under the newest MASTER_ENCRYPTION_KEY (the first of
    the comma-separated list). Safe to interrupt and run again."""
    from rich.progress import Progress

    from trading_backend.accounts.key_rotation import count_secrets, rotate_secrets

    async def work(runtime: Any) -> Any:
        total = await count_secrets(runtime.db)
        with Progress(console=console) as bar:
            task = bar.add_task("re-encrypting secrets", total=total)
            return await rotate_secrets(
                runtime.db, runtime.vault, batch=batch, progress=lambda n: bar.advance(task, n)
            )

    report = _with_runtime(work)
    detail = ", ".join(f"{table}: {n}" for table, n in report.rotated.items())
    console.print(f"re-encrypted {report.total} secrets under the newest key ({detail})")


# -- API client commands -------------------------------------------------------------------------
class _Api:
    def __init__(
        self, url: str, username: str | None, password: str | None, token: str | None
    ) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=30)
        if token is None:
            if username is None or password is None:
                from trading_backend.demo import read_demo_credentials

                demo = read_demo_credentials(_settings().data_dir) or {}
                username = username or demo.get("username")
                password = password or demo.get("password")
            if not username or not password:
                _fail("give --username and --password (or TB_USERNAME/TB_PASSWORD)")
            token = self._login(username or "", password or "")
        self.client.headers["Authorization"] = f"Bearer {token}"

    def _login(self, username: str, password: str) -> str:
        data = self.call(
            "POST", "/api/v1/auth/login", json={"username": username, "password": password}
        )
        return str(data["access_token"])

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the server at {self.client.base_url}: {exc}")
            raise  # unreachable
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        if response.status_code >= 400:
            _fail(str(body.get("message", body)), body.get("error_code"))
        return body


@api_key_app.command("create")
def api_key_create(
    user: Annotated[str, typer.Option("--user", help="user id or username")],
    name: Annotated[str, typer.Option("--name", help="what the key is for")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="read, trade or admin (repeatable)")
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="expire after this many days")
    ] = None,
) -> None:
    """Create an API key; the key is printed once and never again."""
    from datetime import UTC, datetime, timedelta

    async def work(runtime: Any) -> Any:
        owner = await runtime.accounts.resolve_user(user)
        if owner is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        expires = (
            datetime.now(UTC) + timedelta(days=expires_days) if expires_days is not None else None
        )
        return await runtime.api_keys.create(owner, name, scope or ["read"], expires_at=expires)

    created = _with_runtime(work)
    console.print(
        f"created API key {created.info.id} scopes={','.join(created.info.scopes)}"
        f" expires={created.info.expires_at or 'never'}"
    )
    console.print("store it now, it is not shown again:")
    print(created.key)


@api_key_app.command("list")
def api_key_list(user: Annotated[str, typer.Option("--user", help="user id or username")]) -> None:
    """List a user's API keys (prefixes only, never the keys)."""

    async def work(runtime: Any) -> Any:
        owner = await runtime.accounts.resolve_user(user)
        if owner is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        return await runtime.api_keys.list_keys(owner.id)

    table = Table("id", "name", "prefix", "scopes", "expires", "last used", "state")
    for key in _with_runtime(work):
        table.add_row(
            key.id,
            key.name,
            key.prefix,
            ",".join(key.scopes),
            str(key.expires_at or "-"),
            str(key.last_used_at or "-"),
            "active" if key.active else ("revoked" if key.revoked_at else "expired"),
        )
    console.print(table)


@api_key_app.command("revoke")
def api_key_revoke(
    key_id: Annotated[str, typer.Argument(help="key id (from api-key list)")],
    user: Annotated[str, typer.Option("--user", help="user id or username")],
) -> None:
    """Revoke a user's API key at once."""

    async def work(runtime: Any) -> Any:
        owner = await runtime.accounts.resolve_user(user)
        if owner is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        return await runtime.api_keys.revoke(owner.id, key_id)

    revoked = _with_runtime(work)
    console.print(f"revoked API key {revoked.id}")


def _order_table(orders: list[dict[str, Any]]) -> Table:
    table = Table("symbol", "side", "type", "qty", "price", "status", "filled", "avg")
    table.add_column("order_id", no_wrap=True, min_width=20)
    for o in orders:
        table.add_row(
            f"{o['exchange']}:{o['symbol']}",
            o["side"],
            o["order_type"],
            str(o["quantity"]),
            "" if o.get("price") is None else str(o["price"]),
            o["status"] + (f" ({o['error_code']})" if o.get("error_code") else ""),
            str(o["filled_quantity"]),
            str(o["average_price"]),
            o["order_id"],
        )
    return table


@order_app.command("place")
def order_place(
    config_id: Annotated[str, typer.Option("--config-id", help="broker config id")],
    symbol: Annotated[str, typer.Option(help="e.g. TCS")],
    side: Annotated[str, typer.Option(help="BUY or SELL")],
    quantity: Annotated[int, typer.Option(help="units (multiple of the lot size)")],
    order_type: Annotated[str, typer.Option("--type", help="MARKET, LIMIT, SL or SL_M")] = "MARKET",
    product_type: Annotated[
        str, typer.Option("--product", help="DELIVERY, INTRADAY, MARGIN, CARRYFORWARD")
    ] = "DELIVERY",
    exchange: Annotated[str, typer.Option(help="NSE, BSE, NFO, ...")] = "NSE",
    price: Annotated[Decimal | None, typer.Option(help="limit price (LIMIT, SL)")] = None,
    trigger_price: Annotated[Decimal | None, typer.Option(help="trigger price (SL, SL_M)")] = None,
    client_order_id: Annotated[str | None, typer.Option(help="idempotency key")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Place an order and show where it ended up."""
    api = _Api(api_url, username, password, token)
    order: dict[str, Any] = {
        "symbol": symbol,
        "exchange": exchange.upper(),
        "side": side.upper(),
        "order_type": order_type.upper().replace("-", "_"),
        "product_type": product_type.upper(),
        "quantity": quantity,
    }
    if price is not None:
        order["price"] = str(price)
    if trigger_price is not None:
        order["trigger_price"] = str(trigger_price)
    if client_order_id:
        order["client_order_id"] = client_order_id
    result = api.call(
        "POST", "/api/v1/brokers/orders/place", json={"config_id": config_id, "order": order}
    )
    console.print(_order_table([result]))


@order_app.command("list")
def order_list(
    config_id: Annotated[str | None, typer.Option("--config-id", help="only this config")] = None,
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show the order book."""
    api = _Api(api_url, username, password, token)
    params = {k: v for k, v in {"config_id": config_id, "status": status}.items() if v}
    console.print(_order_table(api.call("GET", "/api/v1/brokers/orders", params=params)))


@order_app.command("cancel")
def order_cancel(
    order_id: str,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Cancel an open order."""
    api = _Api(api_url, username, password, token)
    console.print(_order_table([api.call("DELETE", f"/api/v1/brokers/orders/{order_id}")]))


@order_app.command("modify")
def order_modify(
    order_id: str,
    quantity: Annotated[int | None, typer.Option(help="new quantity")] = None,
    price: Annotated[Decimal | None, typer.Option(help="new limit price")] = None,
    trigger_price: Annotated[Decimal | None, typer.Option(help="new trigger price")] = None,
    order_type: Annotated[str | None, typer.Option("--type", help="new order type")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Modify an open order."""
    body: dict[str, Any] = {}
    if quantity is not None:
        body["quantity"] = quantity
    if price is not None:
        body["price"] = str(price)
    if trigger_price is not None:
        body["trigger_price"] = str(trigger_price)
    if order_type is not None:
        body["order_type"] = order_type.upper().replace("-", "_")
    if not body:
        _fail("give at least one of --quantity, --price, --trigger-price, --type")
    api = _Api(api_url, username, password, token)
    console.print(_order_table([api.call("PUT", f"/api/v1/brokers/orders/{order_id}", json=body)]))


@order_app.command("show")
def order_show(
    order_id: str,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show one order and its event history."""
    api = _Api(api_url, username, password, token)
    detail = api.call("GET", f"/api/v1/brokers/orders/{order_id}")
    console.print(_order_table([detail]))
    events = Table("time", "event", "from", "to", "details")
    for e in detail["events"]:
        events.add_row(
            e["created_at"],
            e["event_type"],
            e["from_status"] or "",
            e["to_status"] or "",
            json.dumps(e["data"], separators=(",", ":")),
        )
    console.print(events)


@app.command()
def trades(
    config_id: Annotated[str | None, typer.Option("--config-id", help="only this config")] = None,
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show the trade book (executions and their charges)."""
    api = _Api(api_url, username, password, token)
    params = {"config_id": config_id} if config_id else {}
    table = Table("time", "symbol", "side", "qty", "price", "charges", "trade_id", "order_id")
    for t in api.call("GET", "/api/v1/brokers/trades", params=params):
        table.add_row(
            t["executed_at"],
            f"{t['exchange']}:{t['symbol']}",
            t["side"],
            str(t["quantity"]),
            str(t["price"]),
            str(t["charges"]),
            t["trade_id"],
            t["order_id"],
        )
    console.print(table)


@app.command()
def positions(
    config_id: Annotated[str, typer.Option("--config-id", help="broker config id")],
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show positions with live P&L."""
    api = _Api(api_url, username, password, token)
    data = api.call("GET", "/api/v1/brokers/positions", params={"config_id": config_id})
    table = Table("symbol", "product", "qty", "avg", "ltp", "unrealised", "realised", "pnl")
    for p in data["positions"]:
        table.add_row(
            f"{p['exchange']}:{p['symbol']}",
            p["product_type"],
            str(p["quantity"]),
            f"{p['average_price']:.2f}",
            f"{p.get('last_price') or 0:.2f}",
            f"{p.get('unrealised_pnl') or 0:.2f}",
            f"{p.get('realised_pnl') or 0:.2f}",
            f"{p['pnl']:.2f}",
        )
    console.print(table)


@app.command()
def balance(
    config_id: Annotated[str, typer.Option("--config-id", help="broker config id")],
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show funds: available cash, buying power, used margin, total balance."""
    api = _Api(api_url, username, password, token)
    data = api.call("GET", "/api/v1/brokers/balance", params={"config_id": config_id})
    table = Table("field", "value")
    for key, value in data.items():
        table.add_row(key, f"{value:,.2f}" if isinstance(value, float | int) else str(value))
    console.print(table)


@app.command()
def quote(
    symbol: str,
    config_id: Annotated[str, typer.Option("--config-id", help="broker config id")],
    exchange: Annotated[str, typer.Option(help="NSE, BSE, NFO, CRYPTO, ...")] = "NSE",
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show a quote from the broker."""
    api = _Api(api_url, username, password, token)
    data = api.call(
        "GET",
        f"/api/v1/brokers/market-data/{symbol}",
        params={"config_id": config_id, "exchange": exchange.upper()},
    )
    console.print_json(data=data)


@app.command()
def status(
    api_url: ApiUrl = DEFAULT_URL,
    username: Username = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Show server health, and system status when you are an admin."""
    api = _Api(api_url, username, password, token)
    health = api.client.get("/health").json()
    console.print_json(data=health)
    me = api.call("GET", "/api/v1/auth/me")
    if me.get("role") in ("ADMIN", "SUPER_ADMIN"):
        console.print_json(data=api.call("GET", "/api/v1/brokers/admin/status"))
    sessions = api.call("GET", "/api/v1/brokers/sessions")
    console.print(f"your broker sessions: {len(sessions)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
