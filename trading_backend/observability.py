"""Prometheus metrics for the process roles that have no API (issue #7).

``serve`` answers ``GET /metrics`` behind an admin API key. ``worker``, ``strategies run``
and ``marketdata run`` have no HTTP server of their own, so without this an operator sees
nothing of their queue work, order latency, strategy errors or feed health. With
``METRICS_PORT`` (or ``--metrics-port``) set, such a process serves Prometheus' exposition
on ``METRICS_HOST:METRICS_PORT`` with prometheus_client's own server (a daemon thread; the
role's event loop is not involved in answering a scrape).

What a scrape shows:

- everything the process registered with prometheus_client (the module-level counters
  and histograms of the queue, worker, strategy runner, event bus, leases, market feed);
- ``trading_backend_process_info{role=...}`` (set by every role, the API included), so
  dashboards can tell the processes apart;
- figures read from the role's runtime at scrape time (``RuntimeCollector``): orders in
  flight, the queue's entries by state (refreshed every ``QUEUE_REFRESH_SECONDS`` by the
  worker role: one database count, plus Redis lengths with the Redis queue), ticks
  received, the live feed's connection and lease.

The endpoint has no authentication (Prometheus scrapes it as it is): it binds to
127.0.0.1 unless METRICS_HOST says otherwise, and must stay on a private network.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Final

import structlog
import typer
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from trading_backend.runtime import Runtime
    from trading_backend.settings import Settings

log = structlog.get_logger(__name__)

ROLES: Final = ("api", "worker", "strategies", "marketdata")
# Roles whose runtime runs an order worker (`strategies run` starts one of its own).
WORKER_ROLES: Final = frozenset({"worker", "strategies"})
QUEUE_REFRESH_SECONDS: Final = 15.0
QUEUE_STATES: Final = ("ready", "claimed", "dead", "unpublished")

PROCESS_INFO = Gauge(
    "trading_backend_process_info",
    "1 for the role this process runs (api, worker, strategies, marketdata)",
    ["role"],
)


# The `--metrics-port` option of the roles' commands (worker, strategies run, marketdata run).
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="serve Prometheus metrics over plain HTTP on this port (default METRICS_PORT;"
        " 0: off) at METRICS_HOST (default 127.0.0.1); no authentication: keep it private",
    ),
]


class MetricsPortError(RuntimeError):
    """The metrics endpoint cannot listen where it was told to."""


def mark_role(role: str) -> None:
    """Label this process with its role (``trading_backend_process_info``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    PROCESS_INFO.labels(role).set(1)


class _ProcessRegistry(Collector):
    """Everything registered process-wide (module-level metrics), forwarded as it is."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class RuntimeCollector(Collector):
    """Figures of one role's runtime, read at scrape time from the server's thread: plain
    attribute reads (ints, flags), nothing that awaits or locks the event loop."""

    def __init__(self, runtime: Runtime, role: str) -> None:
        self.runtime = runtime
        self.role = role
        self.queue_depth: dict[str, int] = {}  # the last refresh (worker role)

    def collect(self) -> Iterable[Metric]:
        runtime = self.runtime
        if self.role in WORKER_ROLES:
            yield GaugeMetricFamily(
                "trading_backend_worker_in_flight",
                "Queue entries this process's order worker is carrying out right now",
                value=runtime.worker.in_flight,
            )
        if self.queue_depth:
            entries = GaugeMetricFamily(
                "trading_backend_queue_entries",
                "Queue entries by state, for the whole deployment (as of the last refresh)",
                labels=["state"],
            )
            for state in QUEUE_STATES:
                if state in self.queue_depth:
                    entries.add_metric([state], self.queue_depth[state])
            yield entries
        ticks = CounterMetricFamily(
            "trading_backend_market_ticks_received",
            "Quotes applied to this process's market: from its own feed, from the feed "
            "holder through Redis, or simulated (paper)",
            labels=["source"],
        )
        ticks.add_metric([runtime.settings.market_data_source], runtime.market_view.tick_count)
        yield ticks
        if self.role == "marketdata":
            yield from self._feed()

    def _feed(self) -> Iterable[Metric]:
        runtime = self.runtime
        feed = getattr(runtime, "_live_feed", None)  # set while this process runs the feed
        yield GaugeMetricFamily(
            "trading_backend_market_feed_connected",
            "1 while this process runs the live market feed and it is connected, else 0",
            value=1 if feed is not None and feed.connected else 0,
        )
        name = f"feed:{runtime.settings.market_data_config_id or 'unconfigured'}"
        lease = runtime.__dict__.get("leases", {}).get(name)
        yield GaugeMetricFamily(
            "trading_backend_market_feed_lease_held",
            "1 while this process holds the feed's cluster lease (runs the feed), 0 while "
            "it stands by",
            value=1 if lease is not None and lease.held.is_set() else 0,
        )


class RoleMetrics:
    """A role's metrics endpoint: bound when made (a taken port fails before the role
    touches anything), the runtime's figures added by ``attach`` once it exists."""

    def __init__(self, role: str, host: str, port: int) -> None:
        mark_role(role)
        self.role = role
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ProcessRegistry())
        self.collector: RuntimeCollector | None = None
        self._refresher: asyncio.Task[None] | None = None
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                " (METRICS_HOST / METRICS_PORT, --metrics-port)"
            ) from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port = int(server.server_port)
        log.info("metrics_serving", role=role, host=host, port=self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def attach(self, runtime: Runtime) -> RuntimeCollector:
        """Add the runtime's figures; the worker role also refreshes the queue's depth
        every ``QUEUE_REFRESH_SECONDS`` (call inside the role's event loop)."""
        collector = RuntimeCollector(runtime, self.role)
        self.registry.register(collector)
        self.collector = collector
        if self.role == "worker":
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_periodically(), name="metrics-queue-depth"
            )
        return collector

    async def refresh(self) -> bool:
        """Read the queue's depth now; False when the runtime is not started yet or the
        read failed (the last figures stay)."""
        collector = self.collector
        if collector is None or not collector.runtime.started:
            return False
        try:
            depth = await collector.runtime.queue.depth()
        except Exception as exc:  # noqa: BLE001 - an outage shows in /health, not here
            log.debug("metrics_queue_depth_failed", error=type(exc).__name__)
            return False
        collector.queue_depth = {k: int(v) for k, v in depth.items() if k in QUEUE_STATES}
        return True

    async def _refresh_periodically(self) -> None:
        # Every second while the runtime is still starting, then every refresh interval.
        while True:
            await self.refresh()
            started = self.collector is not None and self.collector.runtime.started
            await asyncio.sleep(QUEUE_REFRESH_SECONDS if started else 1.0)

    async def detach(self) -> None:
        """Stop reading the runtime (before it stops); the endpoint keeps answering."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """Stop answering and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def open_role_metrics(role: str, settings: Settings, port: int | None = None) -> RoleMetrics | None:
    """The role's endpoint on METRICS_HOST and ``port`` (default METRICS_PORT); None when
    the port is 0 (off). The role is labelled either way."""
    port = settings.metrics_port if port is None else port
    if not port:
        mark_role(role)
        return None
    return RoleMetrics(role, settings.metrics_host, port)


__all__ = [
    "PROCESS_INFO",
    "MetricsPortError",
    "MetricsPortOption",
    "RoleMetrics",
    "RuntimeCollector",
    "mark_role",
    "open_role_metrics",
]
