"""`trading-backend backtest` on CSV data: the summary, the report, --json, --sweep, and
bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.backtest.synthetic import daily_bars
from trading_backend.cli import app

runner = CliRunner()
ARGS = ["backtest", "--strategy", "sma_crossover", "--symbols", "NSE:INFY", "--timeframe", "1d"]


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "infy.csv"
    lines = ["symbol,exchange,timeframe,start,open,high,low,close,volume"]
    for bar in daily_bars(250):
        lines.append(
            f"{bar.symbol},{bar.exchange.value},1d,{bar.start.isoformat()},{bar.open},"
            f"{bar.high},{bar.low},{bar.close},{bar.volume}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_backtest_prints_its_summary_and_writes_the_report(
    csv_file: Path, tmp_path: Path
) -> None:
    report = tmp_path / "out.html"
    params = ["--param", "fast_period=5", "--param", "slow_period=20", "--param", "quantity=10"]
    result = runner.invoke(
        app, [*ARGS, *params, "--csv", str(csv_file), "--report", str(report), "--no-charges"]
    )
    assert result.exit_code == 0, result.output
    assert "final equity" in result.output and "sharpe" in result.output
    assert "report:" in result.output
    page = report.read_text()
    assert 'id="equity"' in page and 'class="buy"' in page

    as_json = runner.invoke(
        app,
        [*ARGS, *params, "--csv", str(tmp_path), "--json", "--no-report", "--from", "2022-03-01"],
    )
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert body["params"]["fast_period"] == 5 and body["report"] is None
    assert body["config"]["start"].startswith("2022-03-01") and body["metrics"]["trades"] >= 1


def test_a_sweep_prints_ranked_rows(csv_file: Path) -> None:
    result = runner.invoke(
        app,
        [*ARGS, "--sweep", "--param", "fast_period=5,10", "--param", "slow_period=10:20:10",
         "--csv", str(csv_file), "--workers", "2", "--rank-by", "total_return", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    invalid = [
        (r["params"]["fast_period"], r["params"]["slow_period"])
        for r in rows
        if r["status"] == "invalid"
    ]
    assert len(rows) == 4 and invalid == [(10, 10)]
    assert rows[0]["params"]["symbol"] == "INFY"  # filled from --symbols
    returns = [r["metrics"]["total_return"] for r in rows if r["status"] == "ok"]
    assert returns == sorted(returns, reverse=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "fast_period=50", "--param", "slow_period=20"], "fast_period must be below"),
        (["--param", "nonsense"], "must be name=value"),
        (["--from", "2022-13-01"], "--from '2022-13-01' is not a date"),
        (["--symbols", "MARS:INFY"], "unknown exchange"),
        (["--sweep", "--param", "fast_period=5,10", "--rank-by", "luck"], "is no metric"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    csv_file: Path, extra: list[str], message: str
) -> None:
    result = runner.invoke(app, [*ARGS, "--csv", str(csv_file), "--no-report", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
