"""Bar aggregation benchmark: ticks per second through ``BarAggregator``.

    python benchmarks/bar_aggregation.py [--ticks 1000000] [--instruments 1] [--exchange NSE]

One instrument (by default) aggregated into all seven timeframes, one tick a second of
market time inside the session (so bars complete as they would live), prices from a
seeded random walk prepared up front so only aggregation is timed. The best of
``--repeat`` runs is reported and written to benchmarks/results/bar_aggregation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trading_backend.domain import Exchange, Timeframe  # noqa: E402
from trading_backend.marketdata.bars import BarAggregator, session_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def prepare(
    count: int, instruments: int, exchange: Exchange
) -> list[tuple[str, Exchange, Decimal, int, datetime]]:
    rng = random.Random(7)
    moment = datetime(2026, 11, 23, 3, 45, tzinfo=UTC)  # Monday 09:15 IST
    prices = [Decimal("1000.00")] * instruments
    ticks = []
    tick = Decimal("0.05")
    while len(ticks) < count:
        if session_for(exchange, moment) is None:
            moment += timedelta(hours=1)
            continue
        for n in range(instruments):
            prices[n] = max(tick, prices[n] + tick * rng.randint(-3, 3))
            ticks.append((f"SYM{n}", exchange, prices[n], rng.randint(1, 500), moment))
        moment += timedelta(seconds=1)
    return ticks[:count]


def run(ticks: list[tuple[str, Exchange, Decimal, int, datetime]]) -> tuple[float, int]:
    aggregator = BarAggregator(list(Timeframe))
    on_tick = aggregator.on_tick
    bars = 0
    started = time.perf_counter()
    for symbol, exchange, price, volume, timestamp in ticks:
        completed = on_tick(symbol, exchange, price, volume, timestamp)
        if completed:
            bars += len(completed)
    elapsed = time.perf_counter() - started
    bars += len(aggregator.flush(ticks[-1][4] + timedelta(days=2)))
    return elapsed, bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--instruments", type=int, default=1)
    parser.add_argument("--exchange", default="NSE")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    exchange = Exchange(args.exchange)
    ticks = prepare(args.ticks, args.instruments, exchange)
    runs = [run(ticks) for _ in range(args.repeat)]
    best, bars = min(runs)
    result = {
        "benchmark": "bar_aggregation",
        "ticks": len(ticks),
        "instruments": args.instruments,
        "timeframes": [tf.value for tf in Timeframe],
        "exchange": exchange.value,
        "bars_completed": bars,
        "best_seconds": round(best, 4),
        "ticks_per_second": round(len(ticks) / best),
        "runs_seconds": [round(r[0], 4) for r in runs],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"bar_aggregation_{exchange.value.lower()}_i{args.instruments}.json"
    out = RESULTS / (
        "bar_aggregation.json" if args.instruments == 1 and exchange is Exchange.NSE else name
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['ticks_per_second']:,} ticks/s ({len(ticks):,} ticks, {args.instruments} "
        f"instrument(s) x {len(Timeframe)} timeframes, {bars:,} bars) -> {out}"
    )


if __name__ == "__main__":
    main()
