"""``trading-backend audit``: check the audit log's hash chain and read recent rows.

Both commands work on the database directly (like ``user`` and ``keys``), through the
same settings and runtime bootstrapping as the rest of the command line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

app = typer.Typer(
    help="Audit log: verify the tamper-evident hash chain, list recent entries.",
    no_args_is_help=True,
)


@app.command("verify")
def verify(
    batch: Annotated[int, typer.Option(min=1, help="rows read per query")] = 1000,
) -> None:
    """Recompute the whole hash chain. Exit 0 when intact, 1 at the first bad row."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from trading_backend import cli
    from trading_backend.accounts.audit import VerifyResult, verify_chain

    async def work(runtime: Any) -> VerifyResult:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=cli.err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("verifying audit chain", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await verify_chain(runtime.db, batch_size=batch, progress=progress)

    result: VerifyResult = cli._with_runtime(work)
    if result.ok:
        cli.console.print(
            f"[green]audit chain intact: {result.rows_checked} rows[/green]"
            f" (head #{result.head_id} {result.head_hash})"
        )
        return
    cli.err_console.print(
        f"[red]audit chain BROKEN at row #{result.first_bad_id}[/red]: {result.reason}"
        f" ({result.rows_checked} rows checked before it)"
    )
    raise typer.Exit(1)


@app.command("list")
def list_(
    user: Annotated[str | None, typer.Option("--user", help="user id or username")] = None,
    action: Annotated[str | None, typer.Option(help="only this action, e.g. auth.login")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="rows to show")] = 50,
) -> None:
    """Show the most recent audit entries, newest first."""
    from trading_backend import cli
    from trading_backend.accounts.audit import list_rows

    async def work(runtime: Any) -> list[Any]:
        user_id: str | None = None
        if user is not None:
            info = await runtime.accounts.resolve_user(user)
            user_id = info.id if info is not None else user  # a removed user's id still works
        return list(
            await list_rows(runtime.db, user_id=user_id, action=action, before_id=None, limit=limit)
        )

    rows = cli._with_runtime(work)
    table = Table()
    for column in ("id", "time", "user", "action", "target", "ip", "correlation", "data"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.created_at.isoformat(timespec="seconds"),
            row.user_id or "",
            row.action,
            row.target or "",
            row.ip or "",
            row.correlation_id or "",
            json.dumps(row.data or {}, separators=(",", ":"), sort_keys=True),
        )
    cli.console.print(table)
