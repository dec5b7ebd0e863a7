"""``trading-backend data``: historical candles in and out of the database as CSV.

Both commands work on the database directly (like ``user`` and ``audit``), through the
same settings and runtime bootstrapping as the rest of the command line. ``export`` can
fill gaps in the cache from the paper broker's synthetic history first; real brokers
need a user's session, so their cached candles are exported as they are (``--no-fetch``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import typer

from trading_backend.marketdata.candles import CandleCsvError

app = typer.Typer(
    help="Historical candles: import and export CSV (cached in the database).",
    no_args_is_help=True,
)

DEFAULT_DAYS = 30  # ``export`` without --from: this many days before --to
_PHASES = {
    "fetching": "fetching missing candles",
    "validating": "checking lines",
    "writing": "writing to the database",
    "exporting": "writing CSV",
}


@contextmanager
def phase_progress(
    labels: dict[str, str], *, transient: bool = True
) -> Iterator[Callable[[str, int, int | None], None]]:
    """A ``(phase, done, total)`` progress callback drawing one rich bar per phase on
    stderr (so an export to standard output stays clean); shared by the CLI commands
    that do long work (candle import/export, instrument loads)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    from trading_backend import cli

    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=cli.err_console,
        transient=transient,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int | None) -> None:
            task = tasks.get(phase)
            if task is None:
                task = tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(task, completed=done, total=total)

        yield update


def _progress() -> Any:
    return phase_progress(_PHASES)


def _moment(text: str, option: str, *, end: bool) -> datetime:
    """``YYYY-MM-DD`` is a whole UTC day (``--to`` includes it); anything else is an
    ISO-8601 time, UTC when it has no offset."""
    from trading_backend import cli

    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            midnight = datetime.combine(day, datetime.min.time(), UTC)
            return midnight + timedelta(days=1) if end else midnight
        moment = datetime.fromisoformat(value)
    except ValueError:
        cli._fail(
            f"{option} {text!r} is not a date (2024-01-31) or an ISO-8601 time "
            "(2024-01-31T09:15:00+05:30)",
            "VALIDATION_ERROR",
        )
        raise  # unreachable: _fail exits
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _report_csv_error(exc: CandleCsvError) -> None:
    from trading_backend import cli

    cli.err_console.print(
        f"[red]error[/red] [{exc.code.value}]: invalid candle CSV, nothing imported",
        highlight=False,
    )
    for line, message in exc.errors:
        cli.err_console.print(f"  line {line}: {message}", highlight=False, markup=False)
    more = exc.error_count - len(exc.errors)
    if more > 0:
        cli.err_console.print(f"  ... and {more} more bad lines", highlight=False)
    raise typer.Exit(1)


@app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="CSV file ('-' reads standard input)")],
    broker: Annotated[str, typer.Option(help="broker whose cache receives the candles")] = "paper",
) -> None:
    """Import candles from CSV (symbol,exchange,timeframe,start,open,high,low,close,volume).

    Every line is checked first; one bad line imports nothing. Re-importing is harmless,
    and a line for a stored candle replaces it.
    """
    from trading_backend import cli
    from trading_backend.marketdata.candles import CandleService

    async def work(runtime: Any) -> int | CandleCsvError:
        service = CandleService(runtime.db)
        source = sys.stdin if path == "-" else path
        try:
            with _progress() as progress:
                return await service.import_csv(source, broker, progress=progress)
        except CandleCsvError as exc:
            return exc

    result = cli._with_runtime(work)
    if isinstance(result, CandleCsvError):
        _report_csv_error(result)
        return
    cli.console.print(f"imported {result} candles into the {broker.strip().lower()} cache")


@app.command("export")
def export(
    symbol: Annotated[str, typer.Option(help="trading symbol, e.g. TCS")],
    exchange: Annotated[str, typer.Option(help="exchange, e.g. NSE or CRYPTO")] = "NSE",
    timeframe: Annotated[str, typer.Option(help="1m, 3m, 5m, 15m, 30m, 1h or 1d")] = "1d",
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help=f"first day or time (default: {DEFAULT_DAYS} days before --to)"
        ),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="last day (included) or end time (default: now)")
    ] = None,
    broker: Annotated[str, typer.Option(help="broker whose candles to export")] = "paper",
    fetch: Annotated[
        bool | None,
        typer.Option(
            "--fetch/--no-fetch",
            help="fetch missing candles from the paper broker first, or export the cache as "
            "it is (default: fetch for paper)",
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="CSV file to write ('-': standard output)")
    ] = "-",
) -> None:
    """Export one instrument's candles as CSV (the format that data import reads)."""
    from trading_backend import cli
    from trading_backend.brokers.base import BrokerConfigData
    from trading_backend.brokers.paper import PaperBroker
    from trading_backend.marketdata.candles import CandleService

    name = broker.strip().lower()
    if fetch is None:
        fetch = name == "paper"
    if fetch and name != "paper":
        cli._fail(
            f"the command line fetches from the paper broker only; add --no-fetch to export "
            f"the cached candles of {name!r}",
            "BROKER_NOT_SUPPORTED",
        )
    end = _moment(to, "--to", end=True) if to else datetime.now(UTC)
    start = _moment(from_, "--from", end=False) if from_ else end - timedelta(days=DEFAULT_DAYS)

    async def work(runtime: Any) -> int:
        service = CandleService(runtime.db)
        fetcher = None
        if fetch:
            # History needs no account: a throwaway broker object over the shared market.
            paper = PaperBroker(
                BrokerConfigData(config_id="cli-history", user_id="cli", broker="paper"),
                runtime.broker_context,
            )
            fetcher = paper.get_historical_candles
        target = stdout if output == "-" else output
        with _progress() as progress:
            return await service.export_csv(
                target,
                name,
                symbol,
                exchange,
                timeframe,
                start,
                end,
                fetch=fetcher,
                progress=progress,
            )

    # Log lines (structlog prints to standard output) must not end up inside the CSV.
    stdout = sys.stdout
    quiet = contextlib.redirect_stdout(sys.stderr) if output == "-" else contextlib.nullcontext()
    with quiet:
        count = cli._with_runtime(work)
    where = "standard output" if output == "-" else output
    cli.err_console.print(
        f"exported {count} {timeframe} candles of {exchange.upper()}:{symbol.upper()} to {where}",
        highlight=False,
    )
