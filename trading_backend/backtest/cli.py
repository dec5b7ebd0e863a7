"""``trading-backend backtest``: run one backtest (or a parameter sweep) from the shell.

Data comes from ``--csv`` files (the candle CSV of ``data import``/``data export``), or
by default from the database's candle cache, gaps filled from the paper broker's
synthetic history (``--source paper``; ``--source database`` uses the cache alone). One
run prints a summary table and writes the HTML report (``report.py``); ``--sweep`` runs
every combination of the ``--param`` lists in worker processes and prints them ranked.
Bad input (config, params, data) is one line on standard error and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trading_backend.domain import DomainError

Params = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="strategy param name=value (repeatable; typed by the strategy's params). With "
        "--sweep: name=v1,v2,... or name=start:stop:step",
    ),
]

SUMMARY_METRICS = (
    "total_return",
    "cagr",
    "sharpe",
    "sortino",
    "max_drawdown",
    "annual_volatility",
    "trades",
    "win_rate",
    "profit_factor",
)


def _bad(message: str, code: str = "VALIDATION_ERROR") -> None:
    from trading_backend import cli

    cli.err_console.print(
        f"[red]error[/red] [{code}]: {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(pairs: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            _bad(f"--param {pair!r} must be name=value")
        params[name.strip()] = _value(value.strip())
    return params


def _csv_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv")
        elif path.is_file():
            files.append(path)
        else:
            _bad(f"--csv {str(path)!r}: no such file or directory")
    if not files:
        _bad("--csv names no CSV file")
    return files


def _default_report(strategy: str) -> Path:
    """``DATA_DIR/reports/backtest-<strategy>-<UTC time>.html`` (DATA_DIR: ``data``)."""
    from trading_backend.settings import Settings

    try:
        base = Settings().data_dir
    except Exception:  # noqa: BLE001 - a broken environment still gets its report
        base = Path("data")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in strategy)[:40]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / "reports" / f"backtest-{safe}-{stamp}.html"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return str(value)


def _run_with_data(csv: list[Path] | None, source_name: str, seed: int, work: Any) -> Any:
    """``work(source)`` with the CSV files or the database's candle cache."""
    from trading_backend.backtest.data import CandleSource, CsvSource, paper_history
    from trading_backend.marketdata.candles import CandleCsvError

    if csv:
        try:
            return work(CsvSource(*_csv_files(csv)))
        except CandleCsvError as exc:
            lines = "; ".join(f"line {n}: {m}" for n, m in exc.errors[:3])
            _bad(f"invalid candle CSV ({lines})", exc.code.value)
    from trading_backend import cli
    from trading_backend.marketdata.candles import CandleService

    async def with_runtime(runtime: Any) -> Any:
        fetch = paper_history(seed) if source_name == "paper" else None
        source = CandleSource(CandleService(runtime.db), "paper", fetch)
        try:
            return await work(source, awaitable=True)
        except DomainError as exc:
            return exc

    outcome = cli._with_runtime(with_runtime)
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def backtest(
    strategy: Annotated[str, typer.Option(help="strategy kind, e.g. sma_crossover")],
    symbols: Annotated[
        str | None,
        typer.Option(help="comma list of EXCHANGE:SYMBOL or SYMBOL (NSE); default: the strategy's"),
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="first day (2024-01-31) or ISO time")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="last day (included) or end time")] = None,
    timeframe: Annotated[
        str | None, typer.Option(help="1m, 3m, 5m, 15m, 30m, 1h or 1d (default: the strategy's)")
    ] = None,
    param: Params = None,
    csv: Annotated[
        list[Path] | None,
        typer.Option(help="candle CSV file or directory of them (repeatable); default: database"),
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="without --csv: 'paper' (candle cache, gaps filled from the paper broker's "
            "history) or 'database' (the cache alone)"
        ),
    ] = "paper",
    capital: Annotated[str, typer.Option(help="initial capital")] = "1000000",
    slippage_bps: Annotated[str, typer.Option(help="slippage of market orders, in bps")] = "0",
    no_charges: Annotated[bool, typer.Option("--no-charges", help="no brokerage or taxes")] = False,
    seed: Annotated[int, typer.Option(help="seed of the paper broker's synthetic history")] = 42,
    report: Annotated[
        Path | None,
        typer.Option(
            help="HTML report path (default: DATA_DIR/reports/backtest-<kind>-<time>.html)"
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="write no HTML report")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="run every combination of the --param lists")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="sweep worker processes (default: CPU count)")
    ] = None,
    rank_by: Annotated[
        str, typer.Option(help="sweep ranking metric (lower-is-better metrics ascend)")
    ] = "sharpe",
    top: Annotated[int, typer.Option(min=1, help="sweep rows shown in the table")] = 20,
) -> None:
    """Backtest a strategy on historical bars: a summary table and an HTML report (equity,
    drawdown, fills on the price chart), or with --sweep a ranked parameter grid."""
    from trading_backend.data_cli import _moment

    if source not in ("paper", "database"):
        _bad(f"--source must be 'paper' or 'database', not {source!r}")
    config: dict[str, Any] = {
        "strategy": strategy,
        "initial_capital": capital,
        "slippage_bps": slippage_bps,
        "charges": not no_charges,
        "seed": seed,
    }
    if symbols:
        config["symbols"] = [s.strip() for s in symbols.split(",") if s.strip()]
    if timeframe:
        config["timeframe"] = timeframe.strip()
    try:
        if from_:
            config["start"] = _moment(from_, "--from", end=False).isoformat()
        if to:
            config["end"] = _moment(to, "--to", end=True).isoformat()
        if sweep:
            _sweep(config, param, csv, source, seed, workers, rank_by, top, as_json)
        else:
            config["params"] = _params(param)
            from trading_backend.backtest.config import fill_params

            _single(fill_params(config), csv, source, seed, report, no_report, as_json)
    except typer.Exit as exc:
        if exc.exit_code == 1:  # data_cli._moment's failure is bad input here
            raise typer.Exit(2) from None
        raise
    except DomainError as exc:
        from trading_backend.backtest.sweep import short_error

        _bad(short_error(exc), exc.code.value)
    except ValueError as exc:  # e.g. an instrument that does not parse
        _bad(str(exc))


def _single(
    config: dict[str, Any],
    csv: list[Path] | None,
    source_name: str,
    seed: int,
    report: Path | None,
    no_report: bool,
    as_json: bool,
) -> None:
    from trading_backend import cli
    from trading_backend.backtest.engine import Backtest
    from trading_backend.backtest.report import series_by_key, write_report

    engine: dict[str, Any] = {}

    def work(source: Any, awaitable: bool = False) -> Any:
        backtest = Backtest(config, source)  # validates config and params before any data
        engine["backtest"] = backtest
        if awaitable:
            return backtest.run()
        import asyncio

        return asyncio.run(backtest.run())

    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        result = _run_with_data(csv, source_name, seed, work)
    path: Path | None = None
    if not no_report:
        backtest = engine["backtest"]
        path = write_report(
            report or _default_report(config["strategy"]),
            result,
            series_by_key(backtest.series, result.instruments),
        )
    if as_json:
        body = result.to_dict()
        body["report"] = str(path) if path else None
        sys.stdout.write(json.dumps(body, default=str) + "\n")
    else:
        cli.console.print(_summary(result))
        if path is not None:
            cli.console.print(f"report: {path}", highlight=False)
    if result.error:
        cli.err_console.print(f"[red]the strategy failed:[/red] {result.error}", highlight=False)
        raise typer.Exit(1)


def _summary(result: Any) -> Table:
    table = Table(title=f"{result.config.strategy} on {', '.join(result.instruments)}")
    table.add_column("")
    table.add_column("", justify="right")
    metrics = result.metrics.to_dict() if result.metrics is not None else {}
    rows: list[tuple[str, Any]] = [
        ("bars", result.bars_processed),
        ("initial capital", result.initial_capital),
        ("final equity", result.final_equity),
        ("net profit", result.final_equity - result.initial_capital),
        ("charges", result.total_charges),
        ("fills", len(result.fills)),
        *((name, metrics.get(name)) for name in SUMMARY_METRICS),
        ("elapsed (s)", round(result.elapsed_seconds, 3)),
    ]
    for name, value in rows:
        table.add_row(name, _shown(value))
    return table


def _sweep(
    config: dict[str, Any],
    param: list[str] | None,
    csv: list[Path] | None,
    source_name: str,
    seed: int,
    workers: int | None,
    rank_by: str,
    top: int,
    as_json: bool,
) -> None:
    from trading_backend import cli
    from trading_backend.backtest.sweep import RANKABLE, parse_grid, run_sweep
    from trading_backend.data_cli import phase_progress

    if rank_by not in RANKABLE:
        _bad(f"--rank-by {rank_by!r} is no metric; one of {', '.join(sorted(RANKABLE))}")
    grid = parse_grid(param or [])
    fixed = {k: v[0] for k, v in grid.items() if len(v) == 1}
    from trading_backend.backtest.config import fill_params

    base = fill_params({**config, "params": fixed})
    varying = {k: v for k, v in grid.items() if len(v) > 1}
    if csv:
        from trading_backend.backtest.data import CsvSource

        source: Any = CsvSource(*_csv_files(csv))
    else:
        source = _database_source(source_name, seed)
    with phase_progress({"sweep": "backtests"}, transient=False) as progress:
        rows = run_sweep(
            base,
            varying,
            source,
            rank_by=rank_by,
            workers=workers,
            progress=lambda done, total: progress("sweep", done, total),
        )
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in rows], default=str) + "\n")
        return
    table = Table(title=f"{config['strategy']}: {len(rows)} combinations ranked by {rank_by}")
    for column in ("#", *varying, "status", rank_by, "total_return", "max_drawdown", "trades"):
        table.add_column(column)
    for i, row in enumerate(rows[:top], 1):
        shown = [
            _shown(row.metrics.get(m) if m not in ("final_equity", "fills") else getattr(row, m))
            for m in (rank_by, "total_return", "max_drawdown", "trades")
        ]
        status = row.status if row.error is None else f"{row.status}: {row.error[:120]}"
        table.add_row(str(i), *(_shown(row.params.get(k)) for k in varying), status, *shown)
    cli.console.print(table)


def _database_source(source_name: str, seed: int) -> Any:
    """Bars of the candle cache, loaded up front (the sweep loads once, in this process)."""
    from trading_backend import cli
    from trading_backend.backtest.data import CandleSource, paper_history
    from trading_backend.marketdata.candles import CandleService

    class CacheSource:
        async def load(self, instruments: Any, timeframe: Any, start: Any, end: Any) -> Any:
            async def work(runtime: Any) -> Any:
                fetch = paper_history(seed) if source_name == "paper" else None
                inner = CandleSource(CandleService(runtime.db), "paper", fetch)
                try:
                    return await inner.load(instruments, timeframe, start, end)
                except DomainError as exc:
                    return exc

            import asyncio

            outcome = await asyncio.to_thread(cli._with_runtime, work)
            if isinstance(outcome, DomainError):
                raise outcome
            return outcome

    return CacheSource()


def register(app: typer.Typer) -> None:
    """Add ``backtest`` to the main command line."""
    app.command("backtest")(backtest)
