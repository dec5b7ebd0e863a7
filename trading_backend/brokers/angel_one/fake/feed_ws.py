"""The fake SmartStream (WebSocket 2.0) market feed, as the real one behaves on the wire.

``FakeFeedServer.endpoint`` is a Starlette WebSocket endpoint (the fake SmartAPI app mounts
it at ``/smart-stream``). What it reproduces (``BROKER_PROTOCOLS.md`` §1.9, §1.12):

* Handshake auth from headers (``Authorization``, ``x-api-key``, ``x-client-code``,
  ``x-feed-token``) or query parameters (``clientCode``, ``feedToken``, ``apiKey``); the
  check itself is the injected ``authenticate`` callable, which sees the lower-cased
  headers merged with the query parameters and returns the client code (or ``None``).
  Refusals are HTTP ``401`` with an ``x-error-message`` header; the 4th concurrent
  connection of one client code gets ``429``. Both use the ASGI "WebSocket denial
  response" extension (uvicorn supports it). On a server without it the handshake is
  closed with 1008 (policy violation) instead, which clients see as HTTP 403.
* Text frames: ``ping`` -> ``pong``; subscribe / unsubscribe JSON (``action`` 1/0,
  ``params.mode`` 1-4, ``params.tokenList`` of ``{"exchangeType", "tokens"}``, the
  exchange type as an int or a digit string). No acknowledgement on success; ``E1001``
  for a malformed request, ``E1002`` when the connection's quota of (token, mode) pairs
  would be exceeded (the whole request is then refused, nothing is half-subscribed).
  Duplicate subscriptions are ignored. Depth-20 (mode 4) is only for exchange type 1 and
  at most 50 tokens per connection (E1001 / E1002 otherwise).
* Control pings are answered by the WebSocket server itself.
* ``publish`` sends every subscriber one binary packet per subscribed mode, with
  synthetic but self-consistent Quote / SnapQuote / Depth fields derived from the price
  (day open/high/low, cumulative volume, a two-tick spread, circuits at +-10 %).
* ``drop_all`` closes every socket with 1011 (fault injection). ASGI cannot drop a TCP
  connection without a close frame (a true 1006), so 1011 "internal error" is the closest
  abnormal closure; clients must treat both the same way (reconnect and resubscribe).

Tests wait on state changes with ``wait_until`` (an ``asyncio.Condition`` notified on
every connect, disconnect, request and publish), never with sleeps.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

import structlog
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.protocol import EXCHANGE_BY_TYPE, EXCHANGE_TYPES

__all__ = [
    "E1001",
    "E1002",
    "FakeFeedServer",
    "FeedAuthRefused",
    "FeedConnection",
    "FeedRequest",
]

log = structlog.get_logger(__name__)

E1001: Final = "E1001"
E1002: Final = "E1002"
ERROR_MESSAGES: Final = {
    E1001: "Invalid Request Payload.",
    E1002: "Invalid Request. Subscription Limit Exceeded.",
}
DEPTH_EXCHANGE_TYPE: Final = 1
MAX_DEPTH_TOKENS: Final = 50
DROP_CODE: Final = 1011
POLICY_VIOLATION: Final = 1008

Authenticate = Callable[[Mapping[str, str]], "str | Awaitable[str | None] | None"]
SubKey = tuple[int, str]  # (exchange type, token)


class FeedAuthRefused(Exception):
    """Raised by ``authenticate`` to choose the ``x-error-message`` of the 401, e.g.
    ``Invalid Header - Invalid Feed Token``. Returning ``None`` gives a generic one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _BadRequest(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """A valid subscribe/unsubscribe request as the fake received it."""

    connection_id: int
    client_code: str
    action: int  # 1 subscribe, 0 unsubscribe
    mode: int
    items: tuple[SubKey, ...]
    correlation_id: str


@dataclass(eq=False)
class FeedConnection:
    """One accepted socket: its owner and its own subscription registry."""

    id: int
    client_code: str
    websocket: WebSocket
    modes: dict[SubKey, set[int]] = field(default_factory=dict)
    count: int = 0  # (token, mode) pairs: what the quota counts
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    open: bool = True

    def pairs(self) -> set[tuple[int, str, int]]:
        return {(et, token, mode) for (et, token), modes in self.modes.items() for mode in modes}


@dataclass
class _Book:
    """Per-instrument day state behind the synthetic Quote/SnapQuote fields."""

    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    turnover: int = 0
    sequence: int = 0


class FakeFeedServer:
    def __init__(
        self,
        authenticate: Authenticate,
        max_connections: int = 3,
        max_subscriptions: int = 1000,
        *,
        clock: Callable[[], datetime] | None = None,
        max_depth_tokens: int = MAX_DEPTH_TOKENS,
    ) -> None:
        self._authenticate = authenticate
        self.max_connections = max_connections
        self.max_subscriptions = max_subscriptions
        self.max_depth_tokens = max_depth_tokens
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ids = itertools.count(1)
        self._connections: dict[int, FeedConnection] = {}
        self._books: dict[SubKey, _Book] = {}
        self._changed = asyncio.Condition()
        self.requests: list[FeedRequest] = []  # every valid request, oldest first
        self.errors: list[tuple[str, str]] = []  # (client code, E100x) sent in-band
        self.refusals: list[tuple[int, str]] = []  # (HTTP status, x-error-message)
        self.accepted = 0  # connections ever accepted
        self.pings = 0  # text pings received
        self.answer_pings = True  # False: a socket that is open but dead (watchdog tests)

    # -- inspection ----------------------------------------------------------------------
    @property
    def connections(self) -> list[FeedConnection]:
        return [c for c in self._connections.values() if c.open]

    def connection_count(self, client_code: str | None = None) -> int:
        return sum(1 for c in self.connections if client_code in (None, c.client_code))

    def subscriptions(self, client_code: str | None = None) -> set[tuple[int, str, int]]:
        """Every (exchange type, token, mode) subscribed on open connections."""
        out: set[tuple[int, str, int]] = set()
        for connection in self.connections:
            if client_code in (None, connection.client_code):
                out |= connection.pairs()
        return out

    def subscribe_requests(self, token: str | None = None) -> list[FeedRequest]:
        """Valid subscribe requests received (naming ``token`` when given)."""
        return [
            r
            for r in self.requests
            if r.action == 1 and (token is None or any(t == token for _, t in r.items))
        ]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; re-checked on every state change of the fake.
        Raises ``TimeoutError`` when it does not within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- handshake -----------------------------------------------------------------------
    async def endpoint(self, websocket: WebSocket) -> None:
        params: dict[str, str] = {k.lower(): v for k, v in websocket.headers.items()}
        params.update(websocket.query_params)
        message = _default_refusal(params)
        try:
            result = self._authenticate(params)
            client_code = await result if inspect.isawaitable(result) else result
        except FeedAuthRefused as exc:
            client_code, message = None, exc.message
        if not client_code:
            await self._refuse(websocket, 401, message)
            return
        if self.connection_count(client_code) >= self.max_connections:
            await self._refuse(websocket, 429, "Too Many Requests")
            return
        # Registered before the first await below: two racing handshakes cannot both
        # take the last free slot.
        connection = FeedConnection(next(self._ids), client_code, websocket)
        self._connections[connection.id] = connection
        try:
            await websocket.accept()
            self.accepted += 1
            log.debug("fake_feed_connected", client=client_code, connection=connection.id)
            await self._notify()
            await self._serve(connection)
        finally:
            connection.open = False
            self._connections.pop(connection.id, None)
            await self._notify()

    async def _refuse(self, websocket: WebSocket, status: int, message: str) -> None:
        self.refusals.append((status, message))
        try:
            await websocket.send_denial_response(
                Response(status_code=status, headers={"x-error-message": message})
            )
        except RuntimeError:  # server without the denial-response extension
            await websocket.close(code=POLICY_VIOLATION, reason=f"{status} {message}")
        await self._notify()

    # -- frames --------------------------------------------------------------------------
    async def _serve(self, connection: FeedConnection) -> None:
        websocket = connection.websocket
        while connection.open:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:  # clients never send binary frames
                await self._error(connection, E1001, "", "binary frame")
                continue
            if text == "ping":
                self.pings += 1
                if self.answer_pings:
                    await self._send(connection, "pong")
                await self._notify()
                continue
            await self._handle_request(connection, text)

    async def _handle_request(self, connection: FeedConnection, text: str) -> None:
        correlation = ""
        try:
            payload = json.loads(text)
            if isinstance(payload, dict):
                correlation = str(payload.get("correlationID") or "")
            request = _parse_request(payload, connection, correlation)
            if request.action == 1:
                self._subscribe(connection, request)
            else:
                self._unsubscribe(connection, request)
        except json.JSONDecodeError:
            await self._error(connection, E1001, correlation, "not JSON")
            return
        except _BadRequest as bad:
            await self._error(connection, bad.code, correlation, bad.detail)
            return
        self.requests.append(request)
        await self._notify()

    def _subscribe(self, connection: FeedConnection, request: FeedRequest) -> None:
        fresh = [
            item
            for item in dict.fromkeys(request.items)
            if request.mode not in connection.modes.get(item, ())
        ]
        if connection.count + len(fresh) > self.max_subscriptions:
            raise _BadRequest(E1002, "subscription quota exceeded")
        if request.mode == packets.MODE_DEPTH_20:
            depth = sum(1 for modes in connection.modes.values() if packets.MODE_DEPTH_20 in modes)
            if depth + len(fresh) > self.max_depth_tokens:
                raise _BadRequest(E1002, "depth-20 token limit exceeded")
        for item in fresh:
            connection.modes.setdefault(item, set()).add(request.mode)
        connection.count += len(fresh)

    def _unsubscribe(self, connection: FeedConnection, request: FeedRequest) -> None:
        for item in dict.fromkeys(request.items):
            modes = connection.modes.get(item)
            if modes and request.mode in modes:
                modes.discard(request.mode)
                connection.count -= 1
                if not modes:
                    del connection.modes[item]

    async def _error(
        self, connection: FeedConnection, code: str, correlation: str, why: str
    ) -> None:
        self.errors.append((connection.client_code, code))
        log.debug("fake_feed_error", client=connection.client_code, code=code, why=why)
        body = {
            "correlationID": correlation,
            "errorCode": code,
            "errorMessage": ERROR_MESSAGES[code],
        }
        await self._send(connection, json.dumps(body))
        await self._notify()

    async def _send(self, connection: FeedConnection, data: str | bytes) -> bool:
        if not connection.open:
            return False
        try:
            async with connection.send_lock:
                if isinstance(data, bytes):
                    await connection.websocket.send_bytes(data)
                else:
                    await connection.websocket.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            connection.open = False
            return False
        return True

    # -- market --------------------------------------------------------------------------
    async def publish(
        self, exchange: str | int, token: str, fields: Mapping[str, Any] | Decimal | int | str
    ) -> int:
        """Send one tick of ``exchange``/``token`` to every subscriber, one packet per
        subscribed mode; returns the number of packets sent.

        ``fields`` is the new last price in rupees, or a mapping with ``ltp`` and
        optionally ``last_traded_quantity`` (alias ``quantity``, default 1), ``volume``
        (day volume; else cumulated here), ``average_price``, ``open``/``high``/``low``/
        ``close``, ``bid``/``ask``, ``open_interest`` and ``exchange_timestamp`` (alias
        ``timestamp``; an aware datetime or epoch ms; the fake's clock otherwise).
        Prices are rupees (``Decimal``/``str``/``int``)."""
        exchange_type = _exchange_type(exchange)
        values: Mapping[str, Any] = (
            fields if isinstance(fields, Mapping) else {"ltp": Decimal(str(fields))}
        )
        key = (exchange_type, str(token))
        built = self._build(key, values)
        sent = 0
        for connection in self.connections:
            for mode in sorted(connection.modes.get(key, ())):
                if await self._send(connection, built[mode]):
                    sent += 1
        await self._notify()
        return sent

    def _build(self, key: SubKey, values: Mapping[str, Any]) -> dict[int, bytes]:
        exchange_type, token = key
        unit = packets.price_divisor(exchange_type)

        def price(name: str, default: int) -> int:
            value = values.get(name)
            if value is None:
                return default
            # Rounded, not refused: an average price may have more digits than the wire.
            return int((Decimal(str(value)) * unit).to_integral_value(ROUND_HALF_UP))

        ltp = price("ltp", 0)
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = _Book(open=ltp, high=ltp, low=ltp, close=ltp)
        quantity = int(values.get("last_traded_quantity", values.get("quantity", 1)) or 0)
        book.sequence += 1
        book.high, book.low = max(book.high, ltp), min(book.low, ltp)
        book.volume = int(values.get("volume", book.volume + quantity))
        book.turnover += ltp * quantity
        open_, high = price("open", book.open), price("high", book.high)
        low, close = price("low", book.low), price("close", book.close)
        stamp = values.get("exchange_timestamp", values.get("timestamp"))
        if isinstance(stamp, int) and not isinstance(stamp, bool):
            millis = stamp  # already epoch milliseconds
        else:
            millis = int((stamp or self._clock()).timestamp() * 1000)
        tick = 5 * unit // 100 if unit == 100 else unit // 400  # 0.05 rupee; 0.0025 for CDS
        best_bid, best_ask = price("bid", max(ltp - tick, 0)), price("ask", ltp + tick)
        average = price("average_price", book.turnover // book.volume if book.volume else ltp)

        def side(best: int, step: int, levels: int, wide: bool) -> tuple[packets.Level, ...]:
            limit = 2**31 - 1 if not wide else 2**63 - 1
            return tuple(
                packets.Level(min(100 * (i + 1), limit), min(max(best + step * i, 0), limit), i + 1)
                for i in range(levels)
            )

        bids5, asks5 = side(best_bid, -tick, 5, True), side(best_ask, tick, 5, True)
        quote = packets.QuotePacket(
            packets.MODE_QUOTE,
            exchange_type,
            token,
            book.sequence,
            millis,
            ltp,
            quantity,
            average,
            book.volume,
            float(sum(level.quantity for level in bids5) * 10),
            float(sum(level.quantity for level in asks5) * 10),
            open_,
            high,
            low,
            close,
        )
        snap = packets.SnapQuotePacket._make(
            (
                packets.MODE_SNAP_QUOTE,
                *quote[1:],
                millis // 1000,  # last traded time: seconds, as community code reads it
                int(values.get("open_interest", 0)),
                0.0,
                bids5,
                asks5,
                close + close // 10,
                close - close // 10,
                max(high, close * 13 // 10),
                min(low, close * 7 // 10),
            )
        )
        depth = packets.Depth20Packet(
            packets.MODE_DEPTH_20,
            exchange_type,
            token,
            millis,
            millis,
            side(best_bid, -tick, 20, False),
            side(best_ask, tick, 20, False),
        )
        return {
            packets.MODE_LTP: packets.pack_ltp(
                packets.LtpPacket(
                    packets.MODE_LTP, exchange_type, token, book.sequence, millis, ltp
                )
            ),
            packets.MODE_QUOTE: packets.pack_quote(quote),
            packets.MODE_SNAP_QUOTE: packets.pack_snapquote(snap),
            packets.MODE_DEPTH_20: packets.pack_depth20(depth),
        }

    # -- faults --------------------------------------------------------------------------
    async def send_error(
        self, code: str = E1001, client_code: str | None = None, correlation: str = ""
    ) -> int:
        """Push an in-band error frame to every open socket (of ``client_code``), as the
        real feed does for a request it refuses; returns the sockets reached."""
        reached = 0
        for connection in self.connections:
            if client_code in (None, connection.client_code):
                await self._error(connection, code, correlation, "injected")
                reached += 1
        return reached

    async def drop_all(self) -> int:
        """Close every open socket abnormally (1011); returns how many were dropped."""
        dropped = 0
        for connection in self.connections:
            connection.open = False
            try:
                async with connection.send_lock:
                    await connection.websocket.close(code=DROP_CODE, reason="dropped by fake")
                dropped += 1
            except (WebSocketDisconnect, RuntimeError, OSError):
                continue
        await self._notify()
        return dropped


def _default_refusal(params: Mapping[str, str]) -> str:
    if not (params.get("x-client-code") or params.get("clientCode")):
        return "Invalid Header - Invalid Client Code"
    if not (params.get("x-feed-token") or params.get("feedToken")):
        return "Invalid Header - Invalid Feed Token"
    return "Invalid Header - Invalid Auth token"


def _exchange_type(value: str | int) -> int:
    if isinstance(value, int):
        exchange_type = value
    elif value.isdigit():
        exchange_type = int(value)
    elif value.upper() in EXCHANGE_TYPES:
        return EXCHANGE_TYPES[value.upper()]
    else:
        raise ValueError(f"unknown exchange {value!r}")
    if exchange_type not in EXCHANGE_BY_TYPE:
        raise ValueError(f"unknown exchange type {exchange_type}")
    return exchange_type


def _small_int(value: object, allowed: Iterable[int], what: str) -> int:
    if isinstance(value, bool):
        raise _BadRequest(E1001, f"{what} is a boolean")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or value not in set(allowed):
        raise _BadRequest(E1001, f"bad {what}: {value!r}")
    return value


def _parse_request(payload: object, connection: FeedConnection, correlation: str) -> FeedRequest:
    if not isinstance(payload, dict):
        raise _BadRequest(E1001, "not a JSON object")
    action = _small_int(payload.get("action"), (0, 1), "action")
    params = payload.get("params")
    if not isinstance(params, dict):
        raise _BadRequest(E1001, "params missing")
    mode = _small_int(params.get("mode"), packets.MODE_SIZES, "mode")
    token_list = params.get("tokenList")
    if not isinstance(token_list, list) or not token_list:
        raise _BadRequest(E1001, "tokenList missing")
    items: list[SubKey] = []
    for entry in token_list:
        if not isinstance(entry, dict):
            raise _BadRequest(E1001, "tokenList entry is not an object")
        exchange_type = _small_int(entry.get("exchangeType"), EXCHANGE_BY_TYPE, "exchangeType")
        if mode == packets.MODE_DEPTH_20 and exchange_type != DEPTH_EXCHANGE_TYPE:
            raise _BadRequest(E1001, "depth-20 is only for exchange type 1")
        tokens = entry.get("tokens")
        if not isinstance(tokens, list) or not tokens:
            raise _BadRequest(E1001, "tokens missing")
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, str | int):
                raise _BadRequest(E1001, "token is not a string")
            text = str(token).strip()
            if not text or len(text) > packets.TOKEN_SIZE or not text.isascii():
                raise _BadRequest(E1001, "bad token")
            items.append((exchange_type, text))
    return FeedRequest(
        connection.id, connection.client_code, action, mode, tuple(items), correlation
    )
