"""Backtest speed: bars per second for an SMA 10/30 crossover, ours beside backtrader.

    python benchmarks/backtest_speed.py [--bars 1000000] [--fast 10] [--slow 30]
        [--repeats 3] [--output benchmarks/results/backtest_speed.json]

The same run, the same data: ``--bars`` deterministic synthetic one-minute bars of one NSE
equity (a geometric random walk, seed 7, on NSE session minutes 09:15-15:30 IST,
weekdays), prices on a 0.25 grid so that backtrader's float averages compare exactly like
our Decimal ones. Both sides trade the same rule: long only, 10 shares, MARKET orders
filled at the next bar's open, no slippage, no spread, no charges, ample cash.

* ours: ``Backtest`` with the built-in ``sma_crossover`` over an ``InMemorySource`` of
  prepared ``Bar`` objects;
* backtrader: ``Cerebro`` with ``PandasData`` over a prepared DataFrame and a strategy
  using ``bt.ind.CrossOver(SMA(10), SMA(30))``, buying on +1 when flat and closing on -1.

What is timed, on each side, as wall-clock time and as this process's CPU time (the two
cores of the project's machine are shared, and other processes' work stretches wall time
but not CPU time; the ratio is reported for both): the whole run from prepared in-memory
data to a finished result (ours: ``await Backtest(...).run()``, which includes loading
the source, the replay, the paper account's matching and charges, the equity curve and
the metrics;
backtrader: ``cerebro.run()``, which includes loading the DataFrame into its lines, the
indicators, the broker and its default observers). Building the data (our ``Bar``
objects, backtrader's DataFrame, from the same numpy arrays) is not timed on either side
(``data_build_seconds`` reports both together). Ours runs ``--repeats`` times (default 3)
and its median is reported beside backtrader's single run (two minutes on a million bars,
long enough to average out the shared machine's noise; ours takes seconds, so one burst
of another process's work would otherwise decide the figure). The trade lists (time,
side, price, quantity) must be identical: the run fails otherwise.

Results go to ``--output`` (with python, machine and timestamp), a summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trading_backend.backtest import Backtest, InMemorySource  # noqa: E402
from trading_backend.domain import Bar, Exchange, Timeframe  # noqa: E402
from trading_backend.domain.calendar import IST  # noqa: E402

SYMBOL = "INFY"
GRID = 4  # prices are multiples of 1/GRID
FIRST_DAY = date(2020, 1, 1)
Trade = tuple[datetime, str, Decimal, int]


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float  # seconds of this process's CPU time (what other processes do not add to)


@dataclass
class Data:
    bars: list[Bar]
    frame: Any  # pandas.DataFrame for backtrader


def session_minutes(count: int, timeframe: Timeframe = Timeframe.M1) -> list[datetime]:
    """The starts (UTC) of ``count`` consecutive NSE session bars from ``FIRST_DAY``."""
    step = timeframe.duration
    per_day = int(timedelta(hours=6, minutes=15) / step)
    starts: list[datetime] = []
    day = FIRST_DAY
    while len(starts) < count:
        if day.weekday() < 5:
            open_ = datetime(day.year, day.month, day.day, 9, 15, tzinfo=IST).astimezone(UTC)
            starts.extend(open_ + i * step for i in range(min(per_day, count - len(starts))))
        day += timedelta(days=1)
    return starts


def synthetic(count: int, *, timeframe: Timeframe = Timeframe.M1, seed: int = 7) -> Data:
    """Deterministic OHLC bars and the same data as a DataFrame (see the module doc)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sigma = 0.0005 * (timeframe.duration / timedelta(minutes=1)) ** 0.5
    closes = np.maximum(np.round(1000 * np.exp(rng.normal(0, sigma, count).cumsum()) * GRID), 1)
    opens = np.concatenate([[1000 * GRID], closes[:-1]])
    highs = np.maximum(opens, closes) + np.round(np.abs(rng.normal(0, 0.3, count)) * GRID)
    lows = np.maximum(
        np.minimum(opens, closes) - np.round(np.abs(rng.normal(0, 0.3, count)) * GRID), 1
    )
    volumes = rng.integers(1_000, 50_000, count)
    starts = session_minutes(count, timeframe)
    step = timeframe.duration
    quarter = [Decimal(i) / GRID for i in range(int(max(highs.max(), 1)) + 1)]
    bars = [
        Bar(
            SYMBOL,
            Exchange.NSE,
            timeframe,
            start,
            start + step,
            quarter[o],
            quarter[h],
            quarter[lo],
            quarter[c],
            v,
        )
        for start, o, h, lo, c, v in zip(
            starts,
            opens.astype(int).tolist(),
            highs.astype(int).tolist(),
            lows.astype(int).tolist(),
            closes.astype(int).tolist(),
            volumes.tolist(),
            strict=True,
        )
    ]
    frame = pd.DataFrame(
        {
            "open": opens / GRID,
            "high": highs / GRID,
            "low": lows / GRID,
            "close": closes / GRID,
            "volume": volumes.astype(float),
        },
        index=pd.DatetimeIndex([s.replace(tzinfo=None) for s in starts]),
    )
    return Data(bars, frame)


def config(
    fast: int, slow: int, timeframe: Timeframe = Timeframe.M1, quantity: int = 10
) -> dict[str, Any]:
    return {
        "strategy": "sma_crossover",
        "params": {
            "symbol": SYMBOL,
            "exchange": "NSE",
            "timeframe": timeframe.value,
            "fast_period": fast,
            "slow_period": slow,
            "quantity": quantity,
        },
        "initial_capital": "1000000000",
        "charges": False,
        "slippage_bps": "0",
        "half_spread_ticks": 0,
        "partial_fills": False,
    }


async def run_ours(
    bars: list[Bar], fast: int, slow: int, timeframe: Timeframe = Timeframe.M1
) -> tuple[list[Trade], Timing, Any]:
    source = InMemorySource({(SYMBOL, Exchange.NSE): bars})
    backtest = Backtest(config(fast, slow, timeframe), source)
    began, cpu = time.perf_counter(), time.process_time()
    result = await backtest.run()
    elapsed = Timing(time.perf_counter() - began, time.process_time() - cpu)
    if result.error:
        raise RuntimeError(f"our backtest failed: {result.error}")
    trades = [(f.timestamp, f.side.value, f.price, f.quantity) for f in result.fills]
    return trades, elapsed, result


def run_backtrader(
    frame: Any, fast: int, slow: int, quantity: int = 10
) -> tuple[list[Trade], Timing]:
    import backtrader as bt

    trades: list[Trade] = []

    class SmaCross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.cross = bt.ind.CrossOver(bt.ind.SMA(period=fast), bt.ind.SMA(period=slow))

        def next(self) -> None:
            if not self.position:
                if self.cross[0] > 0:
                    self.buy(size=quantity)
            elif self.cross[0] < 0:
                self.close()

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                when = bt.num2date(order.executed.dt).replace(tzinfo=UTC)
                when = datetime.fromtimestamp(round(when.timestamp()), UTC)
                side = "BUY" if order.isbuy() else "SELL"
                price = Decimal(repr(order.executed.price))
                trades.append((when, side, price, abs(int(order.executed.size))))

    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(1e12)
    began, cpu = time.perf_counter(), time.process_time()
    cerebro.run()
    elapsed = Timing(time.perf_counter() - began, time.process_time() - cpu)
    return trades, elapsed


def first_difference(ours: list[Trade], theirs: list[Trade]) -> str | None:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return f"trade {i}: ours {a}, backtrader {b}"
    if len(ours) != len(theirs):
        return f"ours has {len(ours)} trades, backtrader {len(theirs)}"
    return None


def measure(
    count: int, fast: int, slow: int, *, with_backtrader: bool = True, repeats: int = 3
) -> dict[str, Any]:
    began = time.perf_counter()
    data = synthetic(count)
    build = time.perf_counter() - began
    runs: list[Timing] = []
    ours: list[Trade] = []
    for _ in range(max(repeats, 1)):
        ours, timing, _ = asyncio.run(run_ours(data.bars, fast, slow))
        runs.append(timing)
    wall = statistics.median(r.wall for r in runs)
    cpu = statistics.median(r.cpu for r in runs)
    figures: dict[str, Any] = {
        "bars": count,
        "fast": fast,
        "slow": slow,
        "trades": len(ours),
        "ours_runs_seconds": [round(r.wall, 3) for r in runs],
        "ours_runs_cpu_seconds": [round(r.cpu, 3) for r in runs],
        "ours_seconds": round(wall, 3),
        "ours_cpu_seconds": round(cpu, 3),
        "ours_bars_per_second": round(count / wall),
        "ours_bars_per_cpu_second": round(count / cpu),
        "data_build_seconds": round(build, 3),
    }
    if with_backtrader:
        theirs, timing = run_backtrader(data.frame, fast, slow)
        difference = first_difference(ours, theirs)
        figures.update(
            {
                "backtrader_seconds": round(timing.wall, 3),
                "backtrader_cpu_seconds": round(timing.cpu, 3),
                "backtrader_bars_per_second": round(count / timing.wall),
                "backtrader_bars_per_cpu_second": round(count / timing.cpu),
                "ratio": round(timing.wall / wall, 1),
                "ratio_cpu": round(timing.cpu / cpu, 1),
                "identical_trades": difference is None,
                "difference": difference,
            }
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--fast", type=int, default=10)
    parser.add_argument("--slow", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median reported)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "backtest_speed.json"
    )
    args = parser.parse_args()
    figures = measure(args.bars, args.fast, args.slow, repeats=args.repeats)
    report = {
        "benchmark": "backtest_speed",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    runs = ", ".join(f"{r:.2f}" for r in figures["ours_runs_seconds"])
    f = figures
    print(
        f"{args.bars} one-minute bars, SMA {args.fast}/{args.slow}, {f['trades']} trades\n"
        f"                wall s     bars/s     CPU s  bars/CPU s\n"
        f"  ours:       {f['ours_seconds']:8.2f} {f['ours_bars_per_second']:>10,}"
        f"  {f['ours_cpu_seconds']:8.2f} {f['ours_bars_per_cpu_second']:>10,}"
        f"   (median of {runs} s)\n"
        f"  backtrader: {f['backtrader_seconds']:8.2f} {f['backtrader_bars_per_second']:>10,}"
        f"  {f['backtrader_cpu_seconds']:8.2f} {f['backtrader_bars_per_cpu_second']:>10,}\n"
        f"  ratio:      {f['ratio']}x wall, {f['ratio_cpu']}x CPU;"
        f"   identical trades: {f['identical_trades']}"
    )
    if not figures["identical_trades"]:
        print(f"  first difference: {figures['difference']}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
