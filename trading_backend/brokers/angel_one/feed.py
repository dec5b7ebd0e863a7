"""Our own asyncio client for Angel One's SmartStream market feed (WebSocket 2.0).

Why not the SDK's ``SmartWebSocketV2`` (``BROKER_PROTOCOLS.md`` Part 4, items 9-10): its
resubscribe registry is a class attribute shared by every instance (one user's reconnect
resubscribes everybody's tokens), it crashes resubscribing after an unsubscribe, its
``on_close`` never fires with current websocket-client, it gives up after one retry and it
runs a thread per socket. Here everything is per instance and per connection:

* ``AngelOneFeed`` owns up to ``max_connections`` (3, the per-client-code limit) sockets,
  each with its **own** registry of (exchange type, token, mode) subscriptions holding at
  most ``max_subscriptions`` (1000) pairs. New subscriptions fill the first connection
  with room, and a further connection is opened only when the open ones are full; beyond
  3 x 1000 ``subscribe`` refuses with ``FeedSubscriptionLimit`` and changes nothing.
* Heartbeat: text ``ping`` every ``ping_interval`` (10 s); a watchdog aborts a socket on
  which nothing (tick, pong, error) arrived for ``stale_after`` (20 s) seconds.
* Reconnect with exponential back-off and jitter, then resubscribe the connection's whole
  registry in batches of ``batch_size`` tokens.
* Handshake ``401`` (feed token expired, e.g. after the daily re-login): the
  ``refresh_credentials`` callback is asked once for fresh credentials and the connection
  retried; a second 401 (or no callback) fails the connection with ``FeedAuthError``.
  ``429`` (too many connections for the client code) fails ``start``/``subscribe`` with
  ``FeedConnectionLimit``; on a reconnect it is retried with back-off (the server may not
  have noticed the dead socket yet).
* In-band ``E1001``/``E1002`` text frames are reported to ``on_error``; an ``E1002``
  (quota) also removes the refused subscriptions from the registry, so resubscription
  does not repeat them forever.

Parsed packets (``packets.Packet``, prices in integer wire units) go to the async
``on_tick`` callback in arrival order; a callback that raises is logged and skipped.
Credentials never appear in logs, errors or ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.protocol import EXCHANGE_BY_TYPE, EXCHANGE_TYPES, FEED_WS_URL
from trading_backend.brokers.base import BrokerAuthError, BrokerError, BrokerUnavailable
from trading_backend.domain import ErrorCode

__all__ = [
    "AngelOneFeed",
    "FeedAuthError",
    "FeedConnectionLimit",
    "FeedCredentials",
    "FeedRejected",
    "FeedStats",
    "FeedSubscriptionLimit",
]

log = structlog.get_logger(__name__)

MAX_CONNECTIONS: Final = 3
MAX_SUBSCRIPTIONS: Final = 1000
BATCH_SIZE: Final = 500
PENDING_REQUESTS: Final = 256  # correlation IDs remembered to attribute in-band errors

SubKey = tuple[int, str, int]  # (exchange type, token, mode)
TickHandler = Callable[[packets.Packet], Awaitable[None]]
ErrorHandler = Callable[[BrokerError], Awaitable[None]]


class FeedAuthError(BrokerAuthError):
    """The feed refused the handshake (401): feed token, client code or key invalid."""


class FeedConnectionLimit(BrokerError):
    """Too many concurrent feed connections for the client code (429)."""

    code = ErrorCode.RATE_LIMITED


class FeedSubscriptionLimit(BrokerError):
    """More (token, mode) pairs than the connections may carry, or an E1002 refusal."""

    code = ErrorCode.RATE_LIMITED


class FeedRejected(BrokerError):
    """The feed said a request was malformed (E1001), or a request we refuse to send."""

    code = ErrorCode.VALIDATION_ERROR


@dataclass(frozen=True, slots=True)
class FeedCredentials:
    """What the handshake needs. Only the client code is shown by ``repr``."""

    client_code: str
    feed_token: str = field(repr=False)
    api_key: str = field(default="", repr=False)
    auth_token: str = field(default="", repr=False)  # the JWT, with or without "Bearer "

    def headers(self) -> dict[str, str]:
        headers = {"x-client-code": self.client_code, "x-feed-token": self.feed_token}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        if self.auth_token:
            jwt = self.auth_token.removeprefix("Bearer ").strip()
            headers["Authorization"] = f"Bearer {jwt}"
        return headers


@dataclass(frozen=True, slots=True)
class FeedStats:
    connected: bool
    connections: int  # sockets up now
    reconnects: int
    subscriptions: int
    ticks: int
    decode_errors: int
    last_tick_at: datetime | None
    last_error: str | None


class _Connection:
    """One socket, its supervisor task and its own registry (insertion ordered)."""

    def __init__(self, feed: AngelOneFeed, index: int) -> None:
        self.feed = feed
        self.index = index
        self.registry: dict[SubKey, None] = {}
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.first: asyncio.Future[None] | None = None
        self.send_lock = asyncio.Lock()
        self.ever_connected = False
        self.stopping = False
        self.failed: BrokerError | None = None
        self.last_message = 0.0
        self._correlation = 0
        self.pending: OrderedDict[str, tuple[int, int, tuple[SubKey, ...]]] = OrderedDict()

    @property
    def up(self) -> bool:
        return self.ws is not None

    @property
    def free(self) -> int:
        return self.feed.max_subscriptions - len(self.registry)

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        """Start the supervisor and wait for the first connection attempt's outcome."""
        if self.task is not None and not self.task.done():
            if self.first is not None:
                await asyncio.shield(self.first)
            return
        self.failed = None
        self.stopping = False
        self.first = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._supervise(), name=f"angel-feed-{self.index}")
        await asyncio.shield(self.first)

    async def stop(self) -> None:
        """Close politely (a close frame, so the server frees the slot at once), then end
        the supervisor, which must not take the closure for a drop and reconnect."""
        self.stopping = True
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(OSError, WebSocketException, TimeoutError):
                await asyncio.wait_for(ws.close(), self.feed.connect_timeout)
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ws = None

    def _settle_first(self, error: BrokerError | None) -> None:
        if self.first is not None and not self.first.done():
            if error is None:
                self.first.set_result(None)
            else:
                self.first.set_exception(error)

    async def _supervise(self) -> None:
        feed = self.feed
        attempt = 0
        refreshed = False
        try:
            while True:
                try:
                    ws = await connect(
                        feed.url,
                        additional_headers=feed.credentials.headers(),
                        ping_interval=None,  # our own text pings, as the docs ask
                        open_timeout=feed.connect_timeout,
                        close_timeout=feed.connect_timeout,
                        compression=None,
                        proxy=feed.proxy,
                    )
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    reason = exc.response.headers.get("x-error-message", "") or str(status)
                    if status == 401:
                        if feed.refresh_credentials is not None and not refreshed:
                            refreshed = True
                            if await self._refresh():
                                continue
                        await self._fail(FeedAuthError(f"feed refused the handshake: {reason}"))
                        return
                    if status == 429:
                        error: BrokerError = FeedConnectionLimit(
                            "too many feed connections for this client code",
                            client_code=feed.credentials.client_code,
                        )
                    else:
                        error = BrokerUnavailable(f"feed handshake failed with HTTP {status}")
                    if not self.ever_connected:
                        await self._fail(error)
                        return
                    feed._record_error(error)
                except (OSError, TimeoutError, WebSocketException) as exc:
                    error = BrokerUnavailable(f"feed unreachable: {type(exc).__name__}")
                    if not self.ever_connected:
                        await self._fail(error)
                        return
                    feed._record_error(error)
                else:
                    attempt, refreshed = 0, False
                    await self._connected(ws)
                    await self._session(ws)
                    self.ws = None
                    feed._changed()
                    if self.stopping:
                        return
                    log.info("angel_feed_disconnected", connection=self.index)
                delay = feed._backoff(attempt)
                attempt += 1
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave open() waiting forever
            log.exception("angel_feed_supervisor_crashed", connection=self.index)
            await self._fail(BrokerUnavailable("feed connection failed unexpectedly"))
        finally:
            self.ws = None

    async def _refresh(self) -> bool:
        feed = self.feed
        assert feed.refresh_credentials is not None
        try:
            credentials = await feed.refresh_credentials()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the callback failed (login refused...)
            log.warning("angel_feed_refresh_failed", error=type(exc).__name__)
            return False
        feed.credentials = credentials
        return True

    async def _fail(self, error: BrokerError) -> None:
        self.failed = error
        first_attempt = self.first is not None and not self.first.done()
        self._settle_first(error)
        log.warning("angel_feed_failed", connection=self.index, error=error.message)
        if not first_attempt:  # the caller of open() already gets it raised
            await self.feed._report(error)
        self.feed._changed()

    async def _connected(self, ws: ClientConnection) -> None:
        feed = self.feed
        if self.ever_connected:
            feed.reconnects += 1
        self.ever_connected = True
        self.last_message = time.monotonic()
        async with self.send_lock:
            self.ws = ws
            log.info("angel_feed_connected", connection=self.index, reconnects=feed.reconnects)
            self._settle_first(None)
            feed._changed()
            by_mode: dict[int, list[tuple[int, str]]] = {}
            for exchange_type, token, mode in self.registry:
                by_mode.setdefault(mode, []).append((exchange_type, token))
            for mode, items in by_mode.items():
                await self._send_locked(1, mode, items)
        feed._changed()

    async def _session(self, ws: ClientConnection) -> None:
        reader = asyncio.create_task(self._read(ws))
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            await asyncio.wait((reader, heartbeat), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, heartbeat):
                task.cancel()
            await asyncio.gather(reader, heartbeat, return_exceptions=True)
            if ws.transport is not None:
                ws.transport.abort()

    async def _read(self, ws: ClientConnection) -> None:
        feed = self.feed
        parse = packets.parse
        monotonic = time.monotonic
        try:
            async for message in ws:
                self.last_message = monotonic()
                if isinstance(message, bytes):
                    try:
                        packet = parse(message)
                    except packets.PacketError:
                        feed.decode_errors += 1
                        continue
                    feed.ticks += 1
                    feed.last_tick_at = feed._clock()
                    handler = feed.on_tick
                    if handler is not None:
                        try:
                            await handler(packet)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            log.exception("angel_feed_tick_handler_failed")
                    if feed._waiters:
                        feed._changed()
                elif message != "pong":
                    await self._text(message)
        except ConnectionClosed:
            return

    async def _heartbeat(self, ws: ClientConnection) -> None:
        feed = self.feed
        next_ping = time.monotonic() + feed.ping_interval
        while True:
            now = time.monotonic()
            stale_at = self.last_message + feed.stale_after
            if now >= stale_at:
                log.warning("angel_feed_stale", connection=self.index, after=feed.stale_after)
                return  # the session ends, the socket is aborted, the supervisor reconnects
            if now >= next_ping:
                try:
                    await ws.send("ping")
                except ConnectionClosed:
                    return
                next_ping = now + feed.ping_interval
            await asyncio.sleep(max(0.0, min(next_ping, stale_at) - time.monotonic()))

    async def _text(self, message: str) -> None:
        try:
            payload = json.loads(message)
        except ValueError:
            log.info("angel_feed_unexpected_text", size=len(message))
            return
        if not isinstance(payload, dict) or "errorCode" not in payload:
            return
        code = str(payload.get("errorCode"))
        text = str(payload.get("errorMessage") or "")
        request = self.pending.pop(str(payload.get("correlationID") or ""), None)
        refused: tuple[SubKey, ...] = ()
        if code == "E1002" and request is not None and request[0] == 1:
            refused = tuple(key for key in request[2] if key in self.registry)
            for key in refused:
                del self.registry[key]
                self.feed._where.pop(key, None)
        error: BrokerError
        if code == "E1002":
            error = FeedSubscriptionLimit(
                f"feed refused subscriptions (E1002): {text}", refused=len(refused)
            )
        else:
            error = FeedRejected(f"feed refused a request ({code}): {text}", error_code=code)
        await self.feed._report(error)
        self.feed._changed()

    # -- requests ------------------------------------------------------------------------
    async def send(self, action: int, mode: int, items: list[tuple[int, str]]) -> None:
        if not self.up:
            return  # the registry is resent on (re)connect
        async with self.send_lock:
            await self._send_locked(action, mode, items)

    async def _send_locked(self, action: int, mode: int, items: list[tuple[int, str]]) -> None:
        ws = self.ws
        if ws is None:
            return
        size = self.feed.batch_size
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            grouped: dict[int, list[str]] = {}
            for exchange_type, token in batch:
                grouped.setdefault(exchange_type, []).append(token)
            self._correlation = (self._correlation + 1) % 100_000_000
            correlation = f"c{self.index}{self._correlation:08d}"
            request = {
                "correlationID": correlation,
                "action": action,
                "params": {
                    "mode": mode,
                    "tokenList": [
                        {"exchangeType": et, "tokens": tokens} for et, tokens in grouped.items()
                    ],
                },
            }
            self.pending[correlation] = (action, mode, tuple((et, t, mode) for et, t in batch))
            while len(self.pending) > PENDING_REQUESTS:
                self.pending.popitem(last=False)
            try:
                await ws.send(json.dumps(request, separators=(",", ":")))
            except ConnectionClosed:
                return  # the supervisor reconnects and resubscribes the registry


class AngelOneFeed:
    """SmartStream client for one client code. ``start`` opens the first socket (raising
    ``FeedAuthError`` / ``FeedConnectionLimit`` / ``BrokerUnavailable`` when it cannot);
    ``subscribe`` / ``unsubscribe`` work before and after it; ``close`` ends everything."""

    def __init__(
        self,
        credentials: FeedCredentials,
        on_tick: TickHandler | None = None,
        *,
        url: str = FEED_WS_URL,
        refresh_credentials: Callable[[], Awaitable[FeedCredentials]] | None = None,
        on_error: ErrorHandler | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        batch_size: int = BATCH_SIZE,
        ping_interval: float = 10.0,
        stale_after: float = 20.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        proxy: str | Literal[True] | None = True,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be 1..{MAX_CONNECTIONS}")
        self.credentials = credentials
        self.on_tick = on_tick
        self.on_error = on_error
        self.url = url
        self.refresh_credentials = refresh_credentials
        self.max_connections = max_connections
        self.max_subscriptions = max_subscriptions
        self.batch_size = batch_size
        self.ping_interval = ping_interval
        self.stale_after = stale_after
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.proxy = proxy
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()
        self._connections: list[_Connection] = []
        self._where: dict[SubKey, _Connection] = {}
        self._lock = asyncio.Lock()
        self._running = False
        self._event = asyncio.Event()
        self._waiters = 0
        self.reconnects = 0
        self.ticks = 0
        self.decode_errors = 0
        self.last_tick_at: datetime | None = None
        self.last_error: BrokerError | None = None

    def __repr__(self) -> str:
        return (
            f"AngelOneFeed(client_code={self.credentials.client_code!r}, "
            f"connections={self.connections}, subscriptions={self.subscriptions})"
        )

    # -- state ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return any(c.up for c in self._connections)

    @property
    def connections(self) -> int:
        return sum(1 for c in self._connections if c.up)

    @property
    def subscriptions(self) -> int:
        return len(self._where)

    def subscribed(self) -> set[SubKey]:
        return set(self._where)

    def stats(self) -> FeedStats:
        return FeedStats(
            connected=self.connected,
            connections=self.connections,
            reconnects=self.reconnects,
            subscriptions=self.subscriptions,
            ticks=self.ticks,
            decode_errors=self.decode_errors,
            last_tick_at=self.last_tick_at,
            last_error=self.last_error.message if self.last_error else None,
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked whenever the feed's state changes
        (connect, disconnect, tick, error). ``TimeoutError`` after ``timeout`` seconds."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    # No await between the check and clear(): a change cannot slip by.
                    self._event.clear()
                    await self._event.wait()
        finally:
            self._waiters -= 1

    def _changed(self) -> None:
        if self._waiters:
            self._event.set()

    def _record_error(self, error: BrokerError) -> None:
        self.last_error = error
        self._changed()

    async def _report(self, error: BrokerError) -> None:
        self.last_error = error
        if self.on_error is not None:
            try:
                await self.on_error(error)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("angel_feed_error_handler_failed")

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: a random delay in [50 %, 100 %] of
        ``backoff_initial * 2**attempt`` (capped), so a fleet of clients cut off
        together does not reconnect in lockstep."""
        ceiling = min(self.backoff_max, self.backoff_initial * float(2 ** min(attempt, 30)))
        return ceiling * (0.5 + self._rng.random() / 2)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        async with self._lock:
            if self._running:
                return
            self._running = True
            if not self._connections:
                self._connections.append(_Connection(self, 0))
            try:
                for connection in self._connections:
                    await connection.open()
            except BrokerError:
                self._running = False
                for connection in self._connections:
                    await connection.stop()
                raise

    async def close(self) -> None:
        async with self._lock:
            self._running = False
            for connection in self._connections:
                await connection.stop()
        self._changed()

    async def update_credentials(self, credentials: FeedCredentials) -> None:
        """Use new credentials from the next (re)connection on (e.g. after re-login)."""
        self.credentials = credentials

    # -- subscriptions -------------------------------------------------------------------
    async def subscribe(
        self, instruments: Iterable[tuple[int | str, str]], mode: int = packets.MODE_LTP
    ) -> None:
        """Subscribe (exchange, token) pairs in ``mode``; the exchange is an exchange type
        (1, 2...) or a name ("NSE"). Already subscribed pairs are ignored."""
        keys = self._keys(instruments, mode)
        async with self._lock:
            fresh = [key for key in dict.fromkeys(keys) if key not in self._where]
            if not fresh:
                return
            spare = sum(c.free for c in self._connections)
            spare += (self.max_connections - len(self._connections)) * self.max_subscriptions
            if len(fresh) > spare:
                raise FeedSubscriptionLimit(
                    f"{len(fresh)} new subscriptions exceed the {spare} left "
                    f"({self.max_connections} connections x {self.max_subscriptions})",
                    requested=len(fresh),
                    available=spare,
                )
            plan: list[tuple[_Connection, list[SubKey]]] = []
            new: list[_Connection] = []
            candidates = list(self._connections)
            remaining = fresh
            while remaining:  # terminates: the capacity was checked above
                if candidates:
                    connection = candidates.pop(0)
                else:
                    connection = _Connection(self, len(self._connections) + len(new))
                    new.append(connection)
                take = remaining[: connection.free]
                if take:
                    plan.append((connection, take))
                    remaining = remaining[len(take) :]
            if self._running:
                for connection in new:
                    try:
                        await connection.open()
                    except BrokerError:
                        for opened in new:
                            await opened.stop()
                        raise
            self._connections.extend(new)
            for connection, chunk in plan:
                for key in chunk:
                    connection.registry[key] = None
                    self._where[key] = connection
            for connection, chunk in plan:
                await connection.send(1, mode, [(et, token) for et, token, _ in chunk])

    async def unsubscribe(
        self, instruments: Iterable[tuple[int | str, str]], mode: int = packets.MODE_LTP
    ) -> None:
        keys = self._keys(instruments, mode)
        async with self._lock:
            by_connection: dict[_Connection, list[tuple[int, str]]] = {}
            for key in dict.fromkeys(keys):
                connection = self._where.pop(key, None)
                if connection is None:
                    continue
                connection.registry.pop(key, None)
                by_connection.setdefault(connection, []).append((key[0], key[1]))
            for connection, items in by_connection.items():
                await connection.send(0, mode, items)

    @staticmethod
    def _keys(instruments: Iterable[tuple[int | str, str]], mode: int) -> list[SubKey]:
        if mode not in packets.MODE_SIZES:
            raise FeedRejected(f"unknown feed mode {mode!r} (1 LTP, 2 Quote, 3 SnapQuote, 4 Depth)")
        keys: list[SubKey] = []
        for exchange, token in instruments:
            exchange_type = exchange_type_of(exchange)
            text = str(token).strip()
            if not text or len(text) > packets.TOKEN_SIZE or not text.isascii():
                raise FeedRejected(f"invalid instrument token {token!r}")
            if mode == packets.MODE_DEPTH_20 and exchange_type != 1:
                raise FeedRejected("depth-20 (mode 4) is only available for NSE cash (type 1)")
            keys.append((exchange_type, text, mode))
        return keys


def exchange_type_of(exchange: int | str) -> int:
    """The SmartStream exchange type of an exchange name ("NSE") or type (1, "1")."""
    if isinstance(exchange, str):
        name = exchange.strip().upper()
        if name in EXCHANGE_TYPES:
            return EXCHANGE_TYPES[name]
        if name.isdigit():
            exchange = int(name)
    if isinstance(exchange, int) and not isinstance(exchange, bool):
        if exchange in EXCHANGE_BY_TYPE:
            return exchange
    raise FeedRejected(f"unknown exchange {exchange!r}")
