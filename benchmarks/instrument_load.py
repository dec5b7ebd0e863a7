"""Instrument master load benchmark: Angel One's full scrip master into the database.

    python benchmarks/instrument_load.py [--rows 150000] [--repeat 3] [--database-url URL]

Generates a realistic file in the real format (``angel_one.fake.scrip_master``, 150,000
rows, about 31 MB), then measures ``load_angel_one`` with LOAD_ALL_INSTRUMENTS=true:
parse + normalise + choose + the atomic write, from bytes already in memory (the download
is network-bound and not ours to speed up). Each run is a fresh child process that loads
twice: into an empty table ("first") and over a full one ("replace": the daily case).
Memory: the child's peak RSS (``ru_maxrss``, including the interpreter and imports) and,
in a separate child, tracemalloc's peak of the load itself (tracemalloc slows code down,
so it never shares a run with the timings). SQLite always; PostgreSQL too with
``--database-url`` or TEST_DATABASE_URL (a throwaway database is created and dropped).
Goal: under 3 s and 400 MB. Results go to benchmarks/results/instrument_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
TODAY = date(2026, 11, 25)
GOAL_SECONDS = 3.0
GOAL_MB = 400


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _child(file: str, url: str, mode: str) -> dict[str, Any]:
    from trading_backend.brokers.angel_one.scrip_master import InstrumentCaps
    from trading_backend.marketdata.instruments import InstrumentStore, load_angel_one
    from trading_backend.storage.database import create_engine, session_factory, upgrade_database

    engine = create_engine(url)
    await upgrade_database(engine)
    store = InstrumentStore(session_factory(engine))
    caps = InstrumentCaps(load_all=True, max_total=10**9)
    data = Path(file).read_bytes()
    baseline = _rss_mb()
    out: dict[str, Any] = {"baseline_rss_mb": round(baseline, 1)}
    try:
        for phase in ("first", "replace"):
            if mode == "tracemalloc":
                tracemalloc.start()
            started = time.perf_counter()
            summary = await load_angel_one(store, data=data, caps=caps, today=TODAY)
            elapsed = time.perf_counter() - started
            entry: dict[str, Any] = {
                "seconds": round(elapsed, 4),
                "parse_seconds": round(summary.seconds["parse"], 4),
                "write_seconds": round(summary.seconds["write"], 4),
                "rows_written": summary.rows_written,
            }
            if mode == "tracemalloc":
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                entry = {"tracemalloc_peak_mb": round(peak / 2**20, 1)}
            out[phase] = entry
        out["peak_rss_mb"] = round(_rss_mb(), 1)
    finally:
        await engine.dispose()
    return out


def _run_child(file: str, url: str, mode: str) -> dict[str, Any]:
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--file", file, "--child-url", url],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _pg_database(base_url: str, create: bool, name: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from trading_backend.settings import normalise_database_url
    from trading_backend.storage.database import create_engine

    base = make_url(normalise_database_url(base_url))
    admin = create_engine(base.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            if create:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def _measure(backend: str, file: str, url: str, repeat: int) -> dict[str, Any]:
    runs = [_run_child(file, url, "time") for _ in range(repeat)]
    memory = _run_child(file, url, "tracemalloc")
    best_first = min(r["first"]["seconds"] for r in runs)
    best_replace = min(r["replace"]["seconds"] for r in runs)
    peak_rss = max(r["peak_rss_mb"] for r in runs)
    peak_traced = max(
        memory["first"]["tracemalloc_peak_mb"], memory["replace"]["tracemalloc_peak_mb"]
    )
    result = {
        "backend": backend,
        "best_first_load_seconds": best_first,
        "best_replace_seconds": best_replace,
        "peak_rss_mb": peak_rss,
        "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs),
        "tracemalloc_peak_mb": peak_traced,
        "meets_goal": max(best_first, best_replace) < GOAL_SECONDS and peak_rss < GOAL_MB,
        "runs": runs,
    }
    print(
        f"{backend:10s} first {best_first:.2f} s  replace {best_replace:.2f} s  "
        f"peak RSS {peak_rss:.0f} MB  tracemalloc peak {peak_traced:.0f} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--child", choices=("time", "tracemalloc"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.file, args.child_url, args.child))))
        return

    from trading_backend.brokers.angel_one.fake.scrip_master import (
        generate_scrip_master,
        write_scrip_master,
    )

    with tempfile.TemporaryDirectory(prefix="instrument-load-") as tmp:
        file = str(Path(tmp) / "OpenAPIScripMaster.json")
        started = time.perf_counter()
        size = write_scrip_master(file, generate_scrip_master(args.rows, seed=0, today=TODAY))
        generated = time.perf_counter() - started
        print(f"generated {args.rows} rows ({size / 1e6:.1f} MB) in {generated:.2f} s", flush=True)
        backends = [_measure("sqlite", file, f"sqlite+aiosqlite:///{tmp}/bench.db", args.repeat)]
        if args.database_url:
            name = f"tb_bench_instruments_{uuid.uuid4().hex[:6]}"
            url = asyncio.run(_pg_database(args.database_url, True, name))
            try:
                backends.append(_measure("postgresql", file, url, args.repeat))
            finally:
                asyncio.run(_pg_database(args.database_url, False, name))
    result = {
        "benchmark": "instrument_load",
        "rows": args.rows,
        "file_mb": round(size / 1e6, 1),
        "load_all_instruments": True,
        "goal": {"seconds": GOAL_SECONDS, "peak_rss_mb": GOAL_MB},
        "backends": backends,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "instrument_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
