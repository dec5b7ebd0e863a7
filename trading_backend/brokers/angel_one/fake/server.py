"""Serving a ``FakeSmartAPI``: in the caller's event loop (``running_fake``) or in a
background thread with its own loop (``FakeThread``) for synchronous clients such as the
official SDK.

Both bind 127.0.0.1:0 (or a given port) *before* starting uvicorn, so the URL is known and
connections made before uvicorn's first accept simply wait in the listen backlog: callers
never need to sleep or poll for readiness.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from trading_backend.brokers.angel_one.fake.app import create_app
from trading_backend.brokers.angel_one.fake.core import FakeSmartAPI
from trading_backend.brokers.angel_one.protocol import FEED_WS_PATH, ORDER_WS_PATH


@dataclass(slots=True)
class RunningFake:
    """Where a running fake listens."""

    fake: FakeSmartAPI
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def feed_url(self) -> str:
        return f"ws://{self.host}:{self.port}{FEED_WS_PATH}"

    @property
    def order_ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{ORDER_WS_PATH}"


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def make_server(fake: FakeSmartAPI, **config: Any) -> uvicorn.Server:
    options: dict[str, Any] = {
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 2,
        "ws_ping_interval": None,  # the fake never pings clients; it answers their pings
    }
    options.update(config)
    return uvicorn.Server(uvicorn.Config(create_app(fake), **options))


@asynccontextmanager
async def running_fake(
    fake: FakeSmartAPI, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningFake]:
    """Serve ``fake`` on this event loop for the duration of the block."""
    listener = bind(host, port)
    server = make_server(fake)
    await fake.attach()
    task = asyncio.create_task(server.serve(sockets=[listener]), name="fake-smartapi")
    try:
        yield RunningFake(fake, host, listener.getsockname()[1])
    finally:
        await fake.detach()  # releases requests held by timeout faults first
        server.should_exit = True
        await task
        listener.close()


class FakeThread:
    """The same server on a daemon thread with its own loop (``start()`` / ``stop()``)."""

    def __init__(self, fake: FakeSmartAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self._listener = bind(host, port)
        self.running = RunningFake(fake, host, self._listener.getsockname()[1])
        self._server = make_server(fake)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-smartapi", daemon=True)

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def feed_url(self) -> str:
        return self.running.feed_url

    @property
    def order_ws_url(self) -> str:
        return self.running.order_ws_url

    def start(self, timeout: float = 10.0) -> FakeThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fake SmartAPI thread did not start")
        if self._error is not None:
            raise RuntimeError("fake SmartAPI thread failed") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced to start()/stop()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.fake.attach()
        self._ready.set()
        try:
            await self._server.serve(sockets=[self._listener])
        finally:
            await self.fake.detach()

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until queued WebSocket messages have been handed to their sockets."""
        self.call(self.fake.settle(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._release)
            self._server.should_exit = True
            self._thread.join(timeout)
        self._listener.close()

    def _release(self) -> None:
        if self.fake._released is not None:
            self.fake._released.set()
