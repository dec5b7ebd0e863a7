"""The speed benchmark's own code, on 2,000 bars (not timed): it builds its data, runs
both engines and finds the same trades."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "backtest_speed.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("backtest_speed_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_compares_identical_trades_on_a_small_run() -> None:
    benchmark = load()
    figures = benchmark.measure(2_000, 10, 30)
    assert figures["bars"] == 2_000
    assert figures["trades"] > 20
    assert figures["identical_trades"] is True and figures["difference"] is None
    assert figures["ours_bars_per_second"] > 0 and figures["backtrader_bars_per_second"] > 0


def test_the_data_is_deterministic_and_on_nse_session_minutes() -> None:
    benchmark = load()
    first, second = benchmark.synthetic(500), benchmark.synthetic(500)
    assert first.bars == second.bars
    assert len(first.frame) == 500
    starts = [b.start for b in first.bars]
    assert starts == sorted(starts) and len(set(starts)) == 500
    # 375 minutes a session: the 376th bar opens the next weekday at 09:15 IST.
    assert (starts[375] - starts[374]).total_seconds() > 3600
    assert all(float(b.close) * 4 == int(float(b.close) * 4) for b in first.bars)
