"""A production-mode cluster on loopback: real processes against PostgreSQL and Redis.

Why a harness of real processes: the guarantees of issue #7 (an order placed at most once,
nothing accepted is lost, WebSocket updates reach any API instance) are about *processes*
sharing a database and a Redis, and about one of them dying without warning. In-process
runtimes share an event loop and a paper market object, so they cannot show that.

One ``Cluster`` owns, for one run:

- a throwaway PostgreSQL database (created from the server URL, dropped at the end),
- a unique ``QUEUE_PREFIX`` on the shared Redis (its keys deleted at the end),
- a data directory (also every process's working directory, so no stray ``.env`` of the
  checkout is read) and one generated ``MASTER_ENCRYPTION_KEY``/``JWT_SECRET_KEY`` pair
  shared by all processes, as a deployment's ``.env`` would,
- ``db upgrade`` run once before anything starts, then any number of ``serve`` (API-only:
  EMBEDDED_WORKER=false, EMBEDDED_STRATEGIES=false) and ``worker`` processes, each with its
  own log file (stdout and stderr).

Readiness is observed, never assumed after a delay: an API instance is ready when its
``/health`` answers 200 (polled until a deadline), a worker when it printed its
"...; Ctrl-C or SIGTERM to stop" line (its log polled until a deadline). A process that
exits while we wait fails at once with its log's tail.

The same harness serves the multi-process test and ``benchmarks/scale_out.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trading_backend.settings import normalise_database_url
from trading_backend.storage.database import create_engine

ROOT = Path(__file__).resolve().parents[2]
WORKER_READY = "Ctrl-C or SIGTERM to stop"

# Limits that would refuse a deliberate burst of 500 orders per user in a few minutes are
# switched off (null); the rest (price band, order value checks...) stay in the path. The
# intraday square-off is off too: it would add system orders to the count after 15:15 IST.
BURST_RISK_LIMITS = (
    '{"order_rate_per_second": null, "duplicate_window_seconds": null,'
    ' "max_open_orders": null, "max_open_positions": null, "max_symbol_exposure": null,'
    ' "max_gross_exposure": null, "max_order_value": null, "intraday_square_off": null}'
)


class ClusterError(RuntimeError):
    """A process of the cluster did not start, or died while we waited on it."""


def free_port() -> int:
    """A loopback port free right now (the process binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the throwaway database -----------------------------------------------------------------
async def create_database(server_url: str, prefix: str = "tb_cluster") -> str:
    """Create an empty database on the PostgreSQL server of ``server_url``; returns its URL
    (asyncpg form). Migrations are left to ``trading-backend db upgrade``, as in production."""
    base = make_url(normalise_database_url(server_url))
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    """Drop the database of ``url`` (connections still open are terminated: FORCE)."""
    target = make_url(url)
    admin = create_engine(
        target.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def delete_redis_keys(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (streams, leases, ...); returns how many."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(await client.delete(*batch))
    finally:
        await client.aclose()
    return deleted


# -- processes ------------------------------------------------------------------------------
@dataclass
class Proc:
    """One process of the cluster: its role, command, log file and (API) port."""

    name: str
    role: str  # "api" or "worker"
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} is not an API process"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def spawn(self, cwd: Path) -> None:
        self.starts += 1
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== start {self.starts} of {self.name} ===\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run does not hit the cluster
        )

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, nothing of it runs (a crash, an OOM kill)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)
        self._close_log()

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for the graceful exit (SIGKILL past ``timeout``); the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._close_log()
        return self.popen.returncode


class Cluster:
    """The processes of one production-mode deployment on loopback (see module docstring).

    Use as ``async with Cluster(root, database_url, redis_url) as cluster`` (or call
    ``setup``/``close``); ``database_url`` is an existing, empty database (see
    ``create_database``); ``env`` adds or overrides settings for every process.
    """

    def __init__(
        self,
        root: Path,
        database_url: str | None,
        redis_url: str | None,
        *,
        env: Mapping[str, str] | None = None,
        queue_prefix: str | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.database_url = database_url
        self.redis_url = redis_url
        self.queue_prefix = queue_prefix or f"tbtest:{uuid.uuid4().hex}:"
        self.start_timeout = start_timeout
        self.procs: list[Proc] = []
        base = {
            key: value
            for key, value in os.environ.items()
            # The cluster's settings come from here only, not from the caller's environment.
            if not key.startswith(("TEST_", "DATABASE_", "REDIS_", "QUEUE_", "TRADING_BACKEND_"))
        }
        self.env: dict[str, str] = {
            **base,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",  # the worker's ready line reaches its log at once
            "ENVIRONMENT": "development",
            "CREATE_DEMO_USER": "false",
            "TRADING_BACKEND_DATA_DIR": str(self.data_dir),
            "MASTER_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "ACCESS_TOKEN_MINUTES": "240",
            "QUEUE_PREFIX": self.queue_prefix,
            "EMBEDDED_WORKER": "false",
            "EMBEDDED_STRATEGIES": "false",
            "RATE_LIMIT_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "RISK_DEFAULT_LIMITS": BURST_RISK_LIMITS,
            # One tick at start, then none for an hour: every process's simulated market
            # (same seed) shows the same prices, so a LIMIT order priced from API instance
            # 1's quote is marketable at whichever worker carries it out.
            "MARKET_TICK_SECONDS": "3600",
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})
        self._http = httpx.AsyncClient(timeout=5)

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Cluster:
        await self.setup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "trading_backend.cli", *args]

    async def setup(self) -> None:
        """Directories, then ``db upgrade`` once (several processes migrating an empty
        database at the same moment would race)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        result = await asyncio.to_thread(
            subprocess.run,
            self._cli("db", "upgrade"),
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            timeout=180,
        )
        (self.logs / "db-upgrade.log").write_bytes(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ClusterError(f"db upgrade failed:\n{result.stderr.decode(errors='replace')}")

    async def close(self) -> None:
        """Stop every process (SIGTERM, graceful), then delete the Redis keys."""
        await asyncio.gather(*(asyncio.to_thread(p.terminate, 30.0) for p in self.procs))
        await self._http.aclose()
        if self.redis_url:
            await delete_redis_keys(self.redis_url, self.queue_prefix)

    # -- roles -------------------------------------------------------------------------------
    async def start_api(self, extra_env: Mapping[str, str] | None = None) -> Proc:
        """Start one ``serve`` instance on a free port; returns once ``/health`` is 200."""
        index = sum(p.role == "api" for p in self.procs) + 1
        port = free_port()
        proc = Proc(
            name=f"api{index}",
            role="api",
            args=self._cli("serve", "--host", "127.0.0.1", "--port", str(port), "--no-demo"),
            env={**self.env, **(extra_env or {})},
            log_path=self.logs / f"api{index}.log",
            port=port,
        )
        self.procs.append(proc)
        await self.launch(proc)
        return proc

    async def start_worker(self, extra_env: Mapping[str, str] | None = None) -> Proc:
        """Start one ``worker``; returns once it printed its ready line."""
        index = sum(p.role == "worker" for p in self.procs) + 1
        proc = Proc(
            name=f"worker{index}",
            role="worker",
            args=self._cli("worker"),
            env={**self.env, **(extra_env or {})},
            log_path=self.logs / f"worker{index}.log",
        )
        self.procs.append(proc)
        await self.launch(proc)
        return proc

    async def launch(self, proc: Proc) -> None:
        """(Re)start ``proc`` and wait until it is ready."""
        if proc.running:
            raise ClusterError(f"{proc.name} is already running")
        offset = proc.log_path.stat().st_size if proc.log_path.exists() else 0
        proc.spawn(self.data_dir)
        if proc.role == "api":
            await self._wait_healthy(proc)
        else:
            await self._wait_log_line(proc, WORKER_READY, offset)

    async def restart(self, proc: Proc, *, kill: bool = True) -> None:
        """Stop ``proc`` (SIGKILL, or SIGTERM with ``kill=False``) and start it again."""
        if kill:
            await asyncio.to_thread(proc.kill)
        else:
            await asyncio.to_thread(proc.terminate)
        await self.launch(proc)

    @property
    def apis(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "api"]

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "worker"]

    # -- readiness (polling with a deadline) ---------------------------------------------------
    def _check_alive(self, proc: Proc) -> None:
        if not proc.running:
            code = proc.popen.returncode if proc.popen is not None else None
            raise ClusterError(f"{proc.name} exited ({code}) while starting:\n{proc.log_tail()}")

    async def _wait_healthy(self, proc: Proc) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive(proc)
            try:
                response = await self._http.get(proc.base_url + "/health")
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.1)  # polling interval of a readiness probe
        raise ClusterError(f"{proc.name} not healthy in time ({last}):\n{proc.log_tail()}")

    async def _wait_log_line(self, proc: Proc, needle: str, offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with proc.log_path.open("rb") as handle:
                handle.seek(offset)
                if needle.encode() in handle.read():
                    return
            self._check_alive(proc)
            await asyncio.sleep(0.1)  # polling interval of a readiness probe
        raise ClusterError(f"{proc.name} did not get ready in time:\n{proc.log_tail()}")


# -- clients: users, orders, and reading the outcome from the database ----------------------
SYMBOLS = ("TCS", "INFY", "RELIANCE", "HDFCBANK", "ICICIBANK", "SBIN", "ITC", "LT")
FINAL = frozenset({"FILLED", "REJECTED", "CANCELLED", "EXPIRED"})
PLACE = "/api/v1/brokers/orders/place"


@dataclass(frozen=True)
class User:
    username: str
    user_id: str
    token: str
    config_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def register_user(
    client: httpx.AsyncClient, base_url: str, username: str, capital: int = 10_000_000_000
) -> User:
    """Register through the API and create a paper account with ``capital``."""
    response = await client.post(
        base_url + "/api/v1/auth/register",
        json={"username": username, "password": "cluster-pass-" + username},
    )
    if response.status_code != 201:
        raise ClusterError(f"register {username}: {response.status_code} {response.text}")
    body = response.json()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    created = await client.post(
        base_url + "/api/v1/brokers/configs",
        json={
            "broker": "paper",
            "name": f"{username} paper",
            "settings": {"initial_capital": capital},
        },
        headers=headers,
    )
    if created.status_code != 201:
        raise ClusterError(f"config for {username}: {created.status_code} {created.text}")
    return User(username, body["user_id"], body["access_token"], created.json()["config_id"])


@dataclass(frozen=True)
class Quote:
    bid: float
    ask: float
    tick: float


async def fetch_quotes(client: httpx.AsyncClient, base_url: str, user: User) -> dict[str, Quote]:
    """Bid, ask and tick size of ``SYMBOLS`` as API instance ``base_url`` sees them."""
    listed = await client.get(
        base_url + "/api/v1/market/instruments",
        params={"exchange": "NSE", "limit": 5000},
        headers=user.headers,
    )
    listed.raise_for_status()
    ticks = {i["symbol"]: float(i["tick_size"]) for i in listed.json()}
    found = {}
    for symbol in SYMBOLS:
        response = await client.get(
            base_url + f"/api/v1/market/quote/{symbol}", headers=user.headers
        )
        response.raise_for_status()
        body = response.json()
        found[symbol] = Quote(float(body["bid"]), float(body["ask"]), ticks[symbol])
    return found


def order_body(user: User, client_order_id: str, i: int, quotes: Mapping[str, Quote]) -> Any:
    """The ``i``-th order of a user: one share INTRADAY, BUY and SELL alternating, MARKET
    and LIMIT mixed (half each). A LIMIT is priced 1% through the touch, so it is
    marketable (fills at once) while inside the risk engine's 5% price band."""
    symbol = SYMBOLS[i % len(SYMBOLS)]
    side = "BUY" if i % 2 == 0 else "SELL"
    order: dict[str, Any] = {
        "symbol": symbol,
        "exchange": "NSE",
        "side": side,
        "order_type": "LIMIT" if i % 4 in (1, 2) else "MARKET",
        "product_type": "INTRADAY",
        "quantity": 1,
        "client_order_id": client_order_id,
    }
    if order["order_type"] == "LIMIT":
        q = quotes[symbol]
        ticks = q.ask * 1.01 / q.tick if side == "BUY" else q.bid * 0.99 / q.tick
        steps = int(ticks) + (1 if side == "BUY" else 0)
        order["price"] = f"{steps * q.tick:.2f}"
    return {"config_id": user.config_id, "order": order, "intentional": True}


class ClusterDb:
    """Reads the cluster's database directly: what the processes wrote, not what the API
    says (the test checks the API's promises against it)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    async def close(self) -> None:
        await self.engine.dispose()

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())

    async def status_counts(self) -> dict[str, int]:
        rows = await self.rows("SELECT status, count(*) FROM orders GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    async def not_final(self) -> int:
        return sum(n for status, n in (await self.status_counts()).items() if status not in FINAL)

    async def queue_rows(self) -> dict[str, int]:
        rows = await self.rows("SELECT status, count(*) FROM queue_entries GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    async def broker_orders(self) -> list[dict[str, Any]]:
        """Every order record of every paper account (``paper:<config>:o:<broker id>``)."""
        rows = await self.rows(
            "SELECT key, state FROM broker_state WHERE key LIKE 'paper:%' AND key LIKE '%:o:%'"
        )
        found = []
        for key, state in rows:
            value = json.loads(state) if isinstance(state, str) else state
            record = dict(value["order"])  # {"seq": n, "order": {...}}
            record["_key"] = key
            found.append(record)
        return found

    async def queue_latencies(self, client_ids_like: str = "%") -> list[float]:
        """Seconds from acceptance (the order's first event, written in the accepting
        transaction) to its final event (written by the worker), per final order whose
        ``client_order_id`` is LIKE ``client_ids_like``: queue wait plus execution."""
        rows = await self.rows(
            """
            SELECT o.id, min(e.created_at), max(e.created_at) FILTER (WHERE e.to_status = o.status)
            FROM orders o JOIN order_events e ON e.order_id = o.id
            WHERE o.client_order_id LIKE :pattern
            GROUP BY o.id
            """,
            pattern=client_ids_like,
        )
        return [
            (_as_datetime(done) - _as_datetime(accepted)).total_seconds()
            for _, accepted, done in rows
            if done
        ]


def _as_datetime(value: Any) -> datetime:
    """A timestamp from a raw query: PostgreSQL gives datetimes, SQLite the stored text."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


async def wait_until(
    check: Any, *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll ``await check()`` until it returns something truthy or ``timeout`` passes (then
    raise with the last value). For state that lives in another process's database."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f} s (last: {last!r})")
        await asyncio.sleep(interval)  # polling interval, bounded by the deadline
