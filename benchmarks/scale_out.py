"""Scale-out benchmark: orders per second end to end, and queue latency, by worker count.

One run measures, each on a fresh deployment of real processes on loopback:

- **embedded**: one ``serve`` process doing everything (API, embedded worker, database
  queue) on SQLite, as ``./scripts/start`` runs it;
- **PostgreSQL + Redis** with 1, 2 and 4 ``worker`` processes behind ``--apis`` API-only
  ``serve`` instances (Redis Streams queue, Redis event bus), as issue #7 deploys it.

For each: ``--users`` users with a paper account each; a short warm-up (one order per
user, not counted); then ``--orders`` orders (MARKET and marketable LIMIT, one share,
INTRADAY) placed through the REST API with ``wait=0`` (the request returns once the order
is accepted: persisted and queued) with ``--in-flight`` requests at once, alternating
between the API instances. Reported:

- ``orders_per_second``: orders / (first request sent → last order final in the
  database), the end-to-end rate; ``accepted_per_second``: the API's acceptance rate;
- queue latency p50/p99: per order, its acceptance event (written in the accepting
  transaction) → its final event (written by the worker that carried it out).

The figures include the load generator's own CPU: everything shares the machine's cores.

    python benchmarks/scale_out.py [--orders 2000] [--workers 1,2,4] [--apis 2]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/0]

Writes benchmarks/results/scale_out.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster.harness import (  # noqa: E402 - after the path set-up above
    FINAL,
    PLACE,
    Cluster,
    ClusterDb,
    User,
    create_database,
    drop_database,
    fetch_quotes,
    order_body,
    register_user,
    wait_until,
)

RESULTS = ROOT / "benchmarks" / "results"
RETRIES = [0]  # requests sent again after a connection error (reported per run)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def place(
    bases: list[str], users: list[User], quotes: Any, orders: int, in_flight: int, tag: str
) -> tuple[float, int]:
    """Place ``orders`` with ``in_flight`` requests at once; returns (seconds, refused)."""
    refused = 0
    items = iter(range(orders))
    retries = RETRIES
    limits = httpx.Limits(max_connections=in_flight * 2, max_keepalive_connections=in_flight * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def sender() -> None:
            nonlocal refused
            for k in items:
                user = users[k % len(users)]
                i = k // len(users)
                body = order_body(user, f"{tag}-{k:06d}", i, quotes)
                base = bases[(k + i) % len(bases)]
                for attempt in range(3):  # same client_order_id: a retry is idempotent
                    try:
                        response = await client.post(
                            base + PLACE, params={"wait": 0}, json=body, headers=user.headers
                        )
                        break
                    except httpx.TransportError:
                        retries[0] += 1
                        if attempt == 2:
                            raise
                if response.status_code not in (200, 201, 202):
                    refused += 1
                    if refused == 1:
                        print(f"  refused: {response.status_code} {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        return time.perf_counter() - started, refused


async def all_final(db: ClusterDb, expected: int) -> bool:
    counts = await db.status_counts()
    return sum(counts.values()) >= expected and all(s in FINAL for s in counts)


async def measure(cluster: Cluster, args: argparse.Namespace, label: str) -> dict[str, Any]:
    RETRIES[0] = 0
    bases = [p.base_url for p in cluster.apis]
    db_url = cluster.database_url or (
        f"sqlite+aiosqlite:///{(cluster.data_dir / 'trading.db').resolve()}"
    )
    db = ClusterDb(db_url)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            users = [
                await register_user(client, bases[n % len(bases)], f"bench{n:02d}")
                for n in range(args.users)
            ]
            quotes = await fetch_quotes(client, bases[0], users[0])
        # Warm-up: every account opened at every worker's broker once, connections made.
        await place(bases, users, quotes, len(users) * 2, args.in_flight, "warm")
        await wait_until(lambda: all_final(db, len(users) * 2), timeout=300, what="warm-up")

        started = time.perf_counter()
        accept_seconds, refused = await place(
            bases, users, quotes, args.orders, args.in_flight, "bench"
        )
        total = len(users) * 2 + args.orders
        await wait_until(
            lambda: all_final(db, total), timeout=1800, interval=0.1, what="all orders final"
        )
        seconds = time.perf_counter() - started
        latencies = await db.queue_latencies("bench-%")
        counts = await db.status_counts()
    finally:
        await db.close()
    dead = [p.name for p in cluster.procs if not p.running]
    if dead:
        raise RuntimeError(f"{dead} died during the run; logs in {cluster.logs}")
    result = {
        "mode": label,
        "connection_retries": RETRIES[0],
        "orders": args.orders,
        "refused": refused,
        "statuses": counts,
        "seconds": round(seconds, 2),
        "orders_per_second": round(args.orders / seconds, 1),
        "accepted_per_second": round(args.orders / accept_seconds, 1),
        "queue_latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "queue_latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "queue_latency_mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "latency_samples": len(latencies),
    }
    print(
        f"  {label}: {result['orders_per_second']} orders/s end to end "
        f"(accepted {result['accepted_per_second']}/s), queue latency p50 "
        f"{result['queue_latency_p50_ms']} ms p99 {result['queue_latency_p99_ms']} ms"
    )
    return result


async def run_embedded(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tb-scale-"))  # kept afterwards: the logs
    cluster = Cluster(
        root,
        None,  # SQLite in the data directory
        None,  # no Redis: the embedded queue and local events
        env={"EMBEDDED_WORKER": "true"},
    )
    async with cluster:
        await cluster.start_api()
        return await measure(cluster, args, "embedded (1 process, SQLite)")


async def run_distributed(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    database_url = await create_database(args.database_url, prefix="tb_scale")
    root = Path(tempfile.mkdtemp(prefix="tb-scale-"))  # kept afterwards: the logs
    try:
        async with Cluster(root, database_url, args.redis_url) as cluster:
            await asyncio.gather(*(cluster.start_api() for _ in range(args.apis)))
            await asyncio.gather(*(cluster.start_worker() for _ in range(workers)))
            label = f"PostgreSQL + Redis, {args.apis} API, {workers} worker(s)"
            result = await measure(cluster, args, label)
            result["workers"] = workers
            result["apis"] = args.apis
            return result
    finally:
        await drop_database(database_url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--apis", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server; each run gets its own throwaway database on it",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()

    runs = []
    if not args.skip_embedded:
        print("embedded ...")
        runs.append(await run_embedded(args))
    for count in (int(n) for n in args.workers.split(",")):
        print(f"{count} worker(s) ...")
        runs.append(await run_distributed(args, count))

    report = {
        "benchmark": "scale_out",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "orders": args.orders,
        "users": args.users,
        "in_flight": args.in_flight,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_out.json").write_text(json.dumps(report, indent=2) + "\n")

    print()
    print("| mode | orders/s end to end | accepted/s | queue p50 ms | queue p99 ms |")
    print("|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run['mode']} | {run['orders_per_second']} | {run['accepted_per_second']} "
            f"| {run['queue_latency_p50_ms']} | {run['queue_latency_p99_ms']} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
