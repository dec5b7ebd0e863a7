"""``trading-backend queue``: the order queue for operators: depth, dead letters, retry.

Like ``audit`` and ``risk``, these work on the database (and Redis, in Redis Streams mode)
directly through the same settings as the servers, so they work while no API runs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

app = typer.Typer(
    help="Order queue: depth, dead-lettered entries, requeue one.", no_args_is_help=True
)


@app.command("depth")
def depth(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Entries waiting, being worked on and dead (per priority on Redis Streams)."""
    from trading_backend import cli

    async def work(runtime: Any) -> tuple[str, dict[str, int]]:
        return getattr(runtime.queue, "backend", "embedded"), await runtime.queue.depth()

    backend, counts = cli._with_runtime(work)
    if as_json:
        cli.console.print_json(json.dumps({"backend": backend, "depth": counts}))
        return
    table = Table(title=f"queue ({backend})")
    table.add_column("state")
    table.add_column("entries", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    cli.console.print(table)


@app.command("dead-letters")
def dead_letters(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="entries to show")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Entries that failed too often, newest first, with their order's status."""
    from trading_backend import cli
    from trading_backend.execution.redis_queue import DeadLetter, list_dead_letters

    async def work(runtime: Any) -> list[DeadLetter]:
        return await list_dead_letters(runtime.db, limit)

    found: list[DeadLetter] = cli._with_runtime(work)
    if as_json:
        cli.console.print_json(
            json.dumps(
                [
                    {
                        "entry_id": d.entry_id,
                        "kind": d.kind,
                        "order_id": d.order_id,
                        "priority": d.priority,
                        "attempts": d.attempts,
                        "error": d.error,
                        "created_at": d.created_at.isoformat(),
                        "order_status": d.order_status,
                        "user_id": d.user_id,
                        "retryable": d.retryable,
                    }
                    for d in found
                ]
            )
        )
        return
    if not found:
        cli.console.print("no dead letters")
        return
    table = Table(title="dead letters")
    for column in ("entry", "kind", "order", "order status", "attempts", "error", "retryable"):
        table.add_column(column)
    for d in found:
        table.add_row(
            str(d.entry_id),
            d.kind,
            d.order_id,
            d.order_status or "(gone)",
            str(d.attempts),
            (d.error or "")[:80],
            "yes" if d.retryable else "no",
        )
    cli.console.print(table)


@app.command("retry")
def retry(
    entry_id: Annotated[int, typer.Argument(min=1, help="the dead entry's id")],
) -> None:
    """Requeue a dead entry with fresh attempts, if its order can still take it.

    A placement is requeued only while its order is still PENDING; a cancel or modify only
    while the order is still working."""
    from trading_backend import cli
    from trading_backend.execution.redis_queue import retry_dead_letter

    async def work(runtime: Any) -> None:
        await retry_dead_letter(runtime.db, runtime.queue, entry_id)

    cli._with_runtime(work)
    cli.console.print(f"[green]queue entry {entry_id} requeued[/green]")
