"""The order-status WebSocket client (``wss://tns.angelone.in/smart-order-update``).

Why our own: the SDK's client is thread-based and shares state between users. This one
is a small asyncio task per account (BROKER_PROTOCOLS §1.13):

* connects with ``Authorization: Bearer <jwt>`` (plus the SDK's ``x-api-key``,
  ``x-client-code``, ``x-feed-token`` headers), the JWT fetched from the session at each
  connect so a re-login's token is used on the next connection;
* sends a text ``ping`` every ``ping_interval`` seconds (10 s, as Angel asks) and ignores
  the ``pong`` replies and the ``AB00`` "connected" message;
* hands every other message's ``orderData`` row to ``on_row`` (in arrival order);
* reconnects with exponential back-off after a drop; a 401/403 handshake (stale token)
  asks the session for a fresh login first;
* exposes ``connected`` (an ``asyncio.Event``) and ``on_state`` callbacks so the adapter
  polls the order book while the socket is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["OrderUpdateStream"]

log = structlog.get_logger(__name__)

RowHandler = Callable[[dict[str, Any]], Awaitable[None]]
HeadersProvider = Callable[[], Awaitable[dict[str, str]]]
StateHandler = Callable[[bool], Awaitable[None]]


class OrderUpdateStream:
    def __init__(
        self,
        url: str,
        headers: HeadersProvider,
        on_row: RowHandler,
        *,
        on_state: StateHandler | None = None,
        on_auth_failure: Callable[[], Awaitable[None]] | None = None,
        ping_interval: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._headers = headers
        self._on_row = on_row
        self._on_state = on_state
        self._on_auth_failure = on_auth_failure
        self.ping_interval = ping_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()  # set while down (after a first attempt)
        self.connections = 0  # successful handshakes so far
        self.messages = 0
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="angel-order-updates")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._set_connected(False)

    async def reconnect(self) -> None:
        """Drop the current connection (e.g. a new JWT after re-login); the loop reconnects."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _set_connected(self, up: bool) -> None:
        if not up:
            self.disconnected.set()
        if up == self.connected.is_set():
            return
        if up:
            self.connected.set()
            self.disconnected.clear()
        else:
            self.connected.clear()
        if self._on_state is not None:
            try:
                await self._on_state(up)
            except Exception:
                log.exception("angel_order_ws_state_callback_failed")

    async def _run(self) -> None:
        failures = 0  # consecutive attempts without a connection
        while not self._stopping:
            try:
                headers = await self._headers()
                async with connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=self.open_timeout,
                    proxy=None,
                    ping_interval=None,  # we send Angel's text pings ourselves
                    compression=None,
                ) as ws:
                    self._ws = ws
                    self.connections += 1
                    failures = 0
                    await self._set_connected(True)
                    log.info("angel_order_ws_connected", url=self.url)
                    await self._serve(ws)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                log.warning("angel_order_ws_refused", status=status)
                if status in (401, 403) and self._on_auth_failure is not None:
                    with contextlib.suppress(Exception):
                        await self._on_auth_failure()
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                log.info("angel_order_ws_dropped", error=type(exc).__name__)
            except Exception:
                log.exception("angel_order_ws_failed")
            finally:
                self._ws = None
            await self._set_connected(False)
            if self._stopping:
                break
            await asyncio.sleep(min(self.backoff_max, self.backoff_initial * 2**failures))
            failures += 1

    async def _serve(self, ws: ClientConnection) -> None:
        pinger = asyncio.create_task(self._ping(ws), name="angel-order-ws-ping")
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    message = message.decode("utf-8", "replace")
                text = message.strip()
                if not text or text.lower() == "pong":
                    continue
                try:
                    payload = json.loads(text)
                except ValueError:
                    log.warning("angel_order_ws_unreadable", size=len(text))
                    continue
                if not isinstance(payload, dict):
                    continue
                if str(payload.get("order-status", "")).upper() == "AB00":
                    continue  # the "connected" greeting, with an empty orderData
                row = payload.get("orderData")
                if not isinstance(row, dict) or not row.get("orderid"):
                    continue
                self.messages += 1
                try:
                    await self._on_row(row)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("angel_order_update_handler_failed")
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pinger

    async def _ping(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await ws.send("ping")
            except ConnectionClosed:
                return
