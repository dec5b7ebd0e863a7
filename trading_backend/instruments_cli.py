"""``trading-backend instruments``: load a broker's instrument master, search it.

``load`` reads Angel One's ``OpenAPIScripMaster.json`` from a file or downloads it
(ANGEL_ONE_SCRIP_MASTER_URL by default), parses and normalises it, applies the
MAX_EQUITY_INSTRUMENTS / MAX_DERIVATIVES_INSTRUMENTS / LOAD_ALL_INSTRUMENTS /
MAX_TOTAL_INSTRUMENTS settings and replaces the broker's rows in one transaction, with a
progress bar per phase on stderr and a summary at the end. A file that is not a JSON
array, or far smaller than the table it would replace (INSTRUMENTS_MIN_RATIO), is refused
and the table kept (``--force`` overrides the size check). Both commands work on the
database directly, like ``data`` and ``user``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Instrument masters: load (Angel One scrip master) and search.",
    no_args_is_help=True,
)

SUPPORTED_BROKERS = ("angel_one",)
_PHASES = {
    "download": "reading the instrument master",
    "parse": "parsing rows",
    "write": "writing to the database",
}


def _progress() -> Any:
    """One rich bar per phase on stderr, kept on screen after the load."""
    from trading_backend.data_cli import phase_progress

    labels = {**_PHASES, "download": _PHASES["download"] + " (bytes)"}
    return phase_progress(labels, transient=False)


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    from trading_backend import cli

    data = summary.as_dict()
    cli.console.print(
        f"loaded [bold]{data['rows_written']}[/bold] {data['broker']} instruments "
        f"(replacing {data['previous_rows']}) from {data['source']}: "
        f"{data['rows_read']} rows read, {sum(data['skipped'].values())} skipped, "
        f"{data['seconds'].get('total', 0):.2f} s"
    )
    table = Table("category", "kept", "left out by the caps")
    for category in sorted(set(data["kept"]) | set(data["dropped_by_caps"])):
        table.add_row(
            category,
            str(data["kept"].get(category, 0)),
            str(data["dropped_by_caps"].get(category, 0)),
        )
    cli.console.print(table)
    if data["skipped"]:
        reasons = Table("skipped because", "rows")
        for reason, count in data["skipped"].items():
            reasons.add_row(reason, str(count))
        cli.console.print(reasons)


def _check_broker(broker: str) -> str:
    from trading_backend import cli

    name = broker.strip().lower()
    if name not in SUPPORTED_BROKERS:
        cli._fail(
            f"no instrument master loader for {broker!r} (supported: "
            f"{', '.join(SUPPORTED_BROKERS)})",
            "BROKER_NOT_SUPPORTED",
        )
    return name


@app.command("load")
def load(
    broker: Annotated[str, typer.Option(help="whose instrument master")] = "angel_one",
    file: Annotated[
        str | None, typer.Option("--file", help="a local OpenAPIScripMaster.json")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="download from here (default: ANGEL_ONE_SCRIP_MASTER_URL)"),
    ] = None,
    load_all: Annotated[
        bool | None,
        typer.Option(
            "--all/--capped",
            help="keep everything up to MAX_TOTAL_INSTRUMENTS, or apply the per-category "
            "caps (default: LOAD_ALL_INSTRUMENTS)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="replace the table even with far fewer rows than it holds")
    ] = False,
) -> None:
    """Load (replace) a broker's instruments from its instrument master."""
    from trading_backend import cli
    from trading_backend.brokers.angel_one.scrip_master import InstrumentCaps
    from trading_backend.marketdata.instruments import load_angel_one

    _check_broker(broker)
    if file and url:
        cli._fail("give --file or --url, not both", "VALIDATION_ERROR")
    settings = cli._settings()

    async def work(runtime: Any) -> Any:
        with _progress() as progress:
            return await load_angel_one(
                runtime.instruments,
                path=file,
                url=None if file else (url or settings.angel_one_scrip_master_url),
                caps=InstrumentCaps.from_settings(settings, load_all=load_all),
                progress=progress,
                force=force,
                timeout=settings.instruments_download_timeout,
            )

    _print_summary(cli._with_runtime(work))


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="symbol, name or token (any case, any part)")],
    broker: Annotated[str, typer.Option(help="whose instruments")] = "angel_one",
    exchange: Annotated[str | None, typer.Option(help="only this exchange")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="EQ, INDEX, FUT, CE or PE")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
) -> None:
    """Search the loaded instruments, best matches first."""
    from rich.table import Table

    from trading_backend import cli
    from trading_backend.domain import ErrorCode, Exchange, InstrumentType

    try:
        exchange_value = Exchange(exchange.upper()) if exchange else None
        type_value = InstrumentType(type_.upper()) if type_ else None
    except ValueError as exc:
        cli._fail(str(exc), ErrorCode.VALIDATION_ERROR.value)
        return

    async def work(runtime: Any) -> Any:
        return await runtime.instruments.search(
            query,
            broker=broker,
            exchange=exchange_value,
            instrument_type=type_value,
            limit=limit,
        )

    found = cli._with_runtime(work)
    if not found:
        cli.console.print(f"no {broker} instruments match {query!r}")
        return
    table = Table("exchange", "symbol", "type", "token", "broker symbol", "lot", "tick", "expiry")
    for instrument in found:
        table.add_row(
            instrument.exchange.value,
            instrument.symbol,
            instrument.instrument_type.value,
            instrument.token,
            instrument.broker_symbol,
            str(instrument.lot_size),
            format(instrument.tick_size, "f"),
            instrument.expiry.isoformat() if instrument.expiry else "",
        )
    cli.console.print(table)
