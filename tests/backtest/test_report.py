"""The HTML report: one self-contained page with the charts, fill markers, metrics and
trades, and every user-supplied text escaped."""

from __future__ import annotations

from pathlib import Path

from tests.backtest.synthetic import daily_bars
from trading_backend.backtest import Backtest, InMemorySource, parse_instrument
from trading_backend.backtest.report import drawdowns, series_by_key, write_report
from trading_backend.backtest.result import BacktestResult
from trading_backend.domain import Bar

PARAMS = {"symbol": "INFY", "timeframe": "1d", "fast_period": 5, "slow_period": 20, "quantity": 10}


async def _run(bars: list[Bar]) -> tuple[BacktestResult, dict[str, list[Bar]]]:
    backtest = Backtest(
        {"strategy": "sma_crossover", "params": PARAMS, "symbols": ["INFY"], "timeframe": "1d"},
        InMemorySource(bars),
    )
    result = await backtest.run()
    return result, series_by_key(backtest.series, result.instruments)


async def test_the_report_draws_the_charts_marks_the_fills_and_lists_metrics(
    tmp_path: Path,
) -> None:
    result, bars = await _run(daily_bars(300))
    assert result.fills
    page = write_report(tmp_path / "sub" / "r.html", result, bars).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    for chart in ('id="equity"', 'id="drawdown"', 'id="price-0"'):
        assert chart in page
    buys = sum(f.side.value == "BUY" for f in result.fills)
    assert page.count('class="buy"') == buys + buys  # a marker and a trades row per buy
    assert page.count('class="sell"') == 2 * (len(result.fills) - buys)
    assert result.metrics is not None
    assert "sharpe" in page and "max_drawdown" in page and "fast_period" in page
    assert f"Trades ({len(result.fills)} fills)" in page


async def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    result, bars = await _run(daily_bars(60))
    hostile = '<script>alert("x")</script>'
    key = result.instruments[0]
    result.instruments = [hostile]
    result.error = hostile
    page = write_report(tmp_path / "r.html", result, {hostile: bars[key]}).read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert parse_instrument("NSE:INFY")[0] == "INFY"


def test_drawdown_is_the_fall_from_the_running_peak() -> None:
    from decimal import Decimal

    values = [Decimal(v) for v in ("100", "120", "90", "130", "117")]
    assert drawdowns(values) == [0.0, 0.0, -0.25, 0.0, -0.1]
