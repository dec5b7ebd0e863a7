"""``trading-backend marketdata run``: the process role that runs the live market feed.

A broker limits feed connections per account, so a cluster runs the market-data account's
feed once (the lease ``feed:<MARKET_DATA_CONFIG_ID>``) and shares its quotes through Redis
(``marketdata.distribution``). This role is a process that does nothing else: it stands
by for the lease, and while it holds it, runs the feed, publishes quotes and subscribes
what every process watches. Run one or two (the second is a hot standby), and set
``EMBEDDED_MARKET_FEED=false`` on the other roles to keep the feed off the API and worker
processes; with the default (true) any process that starts the market may take it.

It refuses to start when it would be useless: in paper mode (``MARKET_DATA_SOURCE=paper``)
every process keeps its own simulated market, there is no feed to share; without
``REDIS_URL`` (or with ``EVENT_BUS=local``) its quotes could reach nobody.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer

from trading_backend.observability import MetricsPortOption

app = typer.Typer(help="The live market-data feed (a cluster singleton).", no_args_is_help=True)

EXIT_NOT_APPLICABLE = 2


def why_not_applicable(settings: Any) -> str | None:
    """Why this role would do nothing useful with ``settings`` (None when it would)."""
    if settings.market_data_source == "paper":
        return (
            "MARKET_DATA_SOURCE=paper: every process runs its own simulated market, there is "
            "no broker feed to run; start this role only with a live source (e.g. angel_one)"
        )
    if not settings.market_data_config_id:
        return (
            f"MARKET_DATA_SOURCE={settings.market_data_source} needs MARKET_DATA_CONFIG_ID, "
            "the broker config whose session feeds market data"
        )
    if not settings.redis_url or settings.event_bus == "local":
        return (
            "the shared feed needs REDIS_URL and the Redis event bus (EVENT_BUS auto or "
            "redis): without them its quotes would reach no other process, and every "
            "process that starts the market runs its own feed"
        )
    return None


@app.command("run")
def run(metrics_port: MetricsPortOption = None) -> None:
    """Run the live market feed for the whole cluster (standing by while another process
    holds it); Ctrl-C or SIGTERM stop it gracefully and hand the feed to a standby."""
    from trading_backend import cli
    from trading_backend.logging import configure_logging
    from trading_backend.runtime import Runtime

    settings = cli._settings()
    reason = why_not_applicable(settings)
    if reason is not None:
        cli.err_console.print(f"[red]marketdata run has nothing to do[/red]: {reason}")
        raise typer.Exit(EXIT_NOT_APPLICABLE)
    configure_logging(settings.log_level, settings.log_json)
    metrics = cli._role_metrics("marketdata", settings, metrics_port)  # -- metrics (#7)

    async def main() -> None:
        runtime = Runtime(settings)
        if metrics is not None:
            metrics.attach(runtime)
        await runtime.start(worker=False, market=False, health_monitor=False, market_feed=True)
        try:
            await runtime.wait_for_signal(
                lambda: cli.console.print(
                    f"market feed of config {settings.market_data_config_id} "
                    "(running here or standing by); Ctrl-C or SIGTERM to stop"
                )
            )
        finally:
            if metrics is not None:
                await metrics.detach()
            await runtime.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.close()
