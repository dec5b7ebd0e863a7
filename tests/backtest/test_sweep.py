"""Parameter sweeps: grid expansion, ranking, invalid combinations as rows, two workers."""

from __future__ import annotations

import pytest

from tests.backtest.synthetic import daily_bars
from trading_backend.backtest import InMemorySource
from trading_backend.backtest.sweep import SweepRow, expand_grid, parse_grid, rank, run_sweep
from trading_backend.domain import DomainError

BASE = {
    "strategy": "sma_crossover",
    "symbols": ["INFY"],
    "timeframe": "1d",
    "params": {"symbol": "INFY", "timeframe": "1d", "quantity": 10},
}


def test_values_lists_and_ranges_expand_to_the_grid() -> None:
    grid = parse_grid(["fast_period=5,10", "slow_period=20:40:10", "allow_short=true"])
    assert grid == {"fast_period": [5, 10], "slow_period": [20, 30, 40], "allow_short": [True]}
    combos = expand_grid(grid)
    assert len(combos) == 6
    assert combos[0] == {"fast_period": 5, "slow_period": 20, "allow_short": True}
    assert parse_grid(["x=0.5:1:0.25"]) == {"x": ["0.50", "0.75", "1.00"]}
    for bad in (["fast_period"], ["x=5:1:1"], ["x=1:5:0"], ["x=a:b:c"]):
        with pytest.raises(DomainError):
            parse_grid(bad)


def test_ranking_descends_or_ascends_by_metric_and_puts_missing_last() -> None:
    rows = [
        SweepRow({"i": 0}, metrics={"sharpe": 1.0, "annual_volatility": 0.3}),
        SweepRow({"i": 1}, status="invalid", error="no"),
        SweepRow({"i": 2}, metrics={"sharpe": 2.0, "annual_volatility": 0.1}),
        SweepRow({"i": 3}, metrics={"sharpe": None, "annual_volatility": 0.2}),
    ]
    assert [r.params["i"] for r in rank(rows, "sharpe")] == [2, 0, 1, 3]
    assert [r.params["i"] for r in rank(rows, "annual_volatility")] == [2, 3, 0, 1]
    with pytest.raises(DomainError):
        rank(rows, "luck")


def test_a_sweep_runs_on_two_workers_and_reports_invalid_combinations() -> None:
    seen: list[tuple[int, int]] = []
    rows = run_sweep(
        BASE,
        {"fast_period": [5, 10, 30], "slow_period": [20, 30]},
        InMemorySource(daily_bars(250)),
        rank_by="total_return",
        workers=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(rows) == 6 and seen[-1] == (6, 6)
    invalid = [r for r in rows if r.status == "invalid"]
    assert {(r.params["fast_period"], r.params["slow_period"]) for r in invalid} == {
        (30, 20),
        (30, 30),
    }
    assert all("fast_period must be below slow_period" in (r.error or "") for r in invalid)
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) == 4 and rows[:4] == ok  # ranked rows first, invalid last
    returns = [r.metrics["total_return"] for r in ok]
    assert returns == sorted(returns, reverse=True)
    assert all(r.final_equity is not None and r.params["quantity"] == 10 for r in ok)
