"""Order pipeline benchmark: POST /api/v1/brokers/orders/place end to end.

Each order is accepted, risk-checked, persisted, queued, executed on the paper broker by
the embedded worker and its fill persisted before the response (the endpoint waits for the
broker's answer). In the same run, a bare FastAPI endpoint taking the same payload is
measured the same way as the ceiling, and the ratio is printed.

    python benchmarks/order_pipeline.py [--orders 2000] [--concurrency 16] [--database-url URL]

Both servers run as uvicorn subprocesses on loopback; the client is one asyncio process
with ``--concurrency`` requests in flight. Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SYMBOLS = ["TCS", "INFY", "RELIANCE", "HDFCBANK", "ICICIBANK", "SBIN", "ITC", "LT"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app.removesuffix("()"),
            *(["--factory"] if app.endswith("()") else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(url: str, path: str) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url + path, timeout=1)
                if response.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def payload(config_id: str, i: int) -> dict[str, Any]:
    return {
        "config_id": config_id,
        "order": {
            "symbol": SYMBOLS[i % len(SYMBOLS)],
            "exchange": "NSE",
            "side": "BUY" if i % 2 == 0 else "SELL",
            "order_type": "MARKET",
            "product_type": "INTRADAY",
            "quantity": 1,
        },
        "intentional": True,  # identical orders on purpose: not duplicates for the risk engine
    }


async def drive(
    url: str, headers: dict[str, str], config_id: str, n: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    first_error: list[str] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one_worker() -> None:
            nonlocal errors
            for i in counter:
                started = time.perf_counter()
                response = await client.post(
                    "/api/v1/brokers/orders/place", json=payload(config_id, i)
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 201 or response.json().get("status") != "FILLED":
                    errors += 1
                    if not first_error:
                        first_error.append(f"{response.status_code} {response.text[:300]}")

        # warm-up
        for i in range(20):
            await client.post("/api/v1/brokers/orders/place", json=payload(config_id, i))
        started = time.perf_counter()
        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "orders": n,
        "errors": errors,
        "seconds": elapsed,
        "orders_per_second": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "first_error": first_error[0] if first_error else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="tb-bench-")
    env = {
        **os.environ,
        "TRADING_BACKEND_DATA_DIR": data_dir,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        # Limits stay on (their cost is part of the path) but high enough not to refuse.
        "RATE_LIMIT_ORDERS": "1000000/second",
        "RATE_LIMIT_API": "1000000/second",
        # The risk engine checks every rule; its order rate (10/s by default) is raised.
        "RISK_DEFAULT_LIMITS": '{"order_rate_per_second": 1000000}',
    }
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    else:
        env.pop("DATABASE_URL", None)
    # Set-up through the CLI: migrations, a user and a paper account with room to trade.
    cli = [sys.executable, "-m", "trading_backend.cli"]
    subprocess.run(
        [*cli, "user", "create", "bench", "--password", "bench-password"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *cli,
            "broker",
            "add",
            "--user",
            "bench",
            "--name",
            "bench",
            "--config-id",
            "bench-paper",
            "--setting",
            "initial_capital=10000000000",
        ],
        env=env,
        check=True,
        capture_output=True,
    )

    ours_port, bare_port = free_port(), free_port()
    ours = start(
        "trading_backend.api.app:create_app()", ours_port, {**env, "CREATE_DEMO_USER": "false"}
    )
    bare = start("benchmarks._bare_app:app", bare_port, env)
    try:
        ours_url, bare_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{bare_port}"
        await wait_ready(ours_url, "/health")
        await wait_ready(bare_url, "/docs")
        async with httpx.AsyncClient(base_url=ours_url) as client:
            token = (
                await client.post(
                    "/api/v1/auth/login", json={"username": "bench", "password": "bench-password"}
                )
            ).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        pipeline = await drive(ours_url, headers, "bench-paper", args.orders, args.concurrency)
        ceiling = await drive(bare_url, {}, "bench-paper", args.orders, args.concurrency)
    finally:
        for process in (ours, bare):
            process.terminate()
            process.wait(timeout=30)

    ratio = pipeline["orders_per_second"] / ceiling["orders_per_second"]
    result = {
        "benchmark": "order_pipeline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "database": "postgresql" if args.database_url else "sqlite",
        "concurrency": args.concurrency,
        "pipeline": pipeline,
        "bare_fastapi_ceiling": ceiling,
        "throughput_ratio_vs_ceiling": ratio,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"order_pipeline_{result['database']}_c{args.concurrency}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':24}{'orders/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in (("trading-backend", pipeline), ("bare FastAPI ceiling", ceiling)):
        print(
            f"{name:24}{r['orders_per_second']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>8}"
        )
    print(f"ratio (ours / ceiling): {ratio:.3f}   -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
