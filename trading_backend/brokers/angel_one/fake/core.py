"""``FakeSmartAPI``: the state of one fake Angel One service (accounts, sessions, market,
faults, recorded requests) and the bridge that pushes order events and ticks to sockets.

Thread model: the HTTP app runs on one event loop (the test's, or a background thread's for
synchronous clients such as the official SDK). Tests may call ``set_price`` and friends from
another thread, so every state change happens under one ``RLock`` and outgoing WebSocket
traffic goes through a single queue drained by one task on the server loop, which keeps
events in order (``open pending`` before ``open`` before ``complete``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog

from trading_backend.brokers.angel_one.fake.auth import Session, SessionStore, strip_bearer
from trading_backend.brokers.angel_one.fake.errors import FakeAPIError
from trading_backend.brokers.angel_one.fake.faults import Faults, RateLimiter
from trading_backend.brokers.angel_one.fake.instruments import (
    Instrument,
    build_universe,
    default_rows,
)
from trading_backend.brokers.angel_one.fake.state import Account, Engine, Order, OrderEvent
from trading_backend.brokers.angel_one.protocol import IST, ORDER_WS_CODE_BY_STATUS

log = structlog.get_logger(__name__)


class FeedServer(Protocol):
    """What the fake needs from ``fake/feed_ws.py``'s ``FakeFeedServer`` (Helper FEED)."""

    async def endpoint(self, websocket: Any) -> None: ...

    async def publish(self, exchange: str, token: str, fields: Mapping[str, Any]) -> object: ...


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it, for assertions such as "placeOrder was called once"."""

    route: str  # protocol.ROUTES name, or "unknown"
    method: str
    path: str
    client_code: str | None
    body: Any
    at: datetime
    outcome: str = ""  # "ok", an error code, "rate_limited", "http_503", "timeout", "empty"
    headers: dict[str, str] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FakeSmartAPI:
    """A protocol-faithful, stateful Angel One SmartAPI for tests and local development."""

    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        instruments: Iterable[Mapping[str, object]] | None = None,
        seed: int = 0,
        *,
        prices: Mapping[tuple[str, str], Decimal] | None = None,
    ) -> None:
        self.clock: Callable[[], datetime] = clock or _utc_now
        self.seed = seed
        today = self.clock().astimezone(IST).date()
        rows = list(instruments) if instruments is not None else default_rows(today)
        self.scrip_master, universe, start = build_universe(rows, seed)
        if prices:
            start.update({(e.upper(), str(t)): Decimal(p) for (e, t), p in prices.items()})
        self.lock = threading.RLock()
        self.engine = Engine(universe, start, self.clock, seed)
        self.sessions = SessionStore()
        self.limiter = RateLimiter()
        self.faults = Faults(self.invalidate_tokens, self.drop_websockets)
        self.requests: list[RecordedRequest] = []
        self.feed: FeedServer | None = self._make_feed()
        self._order_sockets: dict[str, set[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Callable[[], Awaitable[object]]] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._released: asyncio.Event | None = None

    # ------------------------------------------------------------------ setup
    def add_client(
        self,
        client_code: str,
        pin: str,
        totp_secret: str,
        api_key: str,
        cash: Decimal = Decimal("1000000"),
        *,
        name: str = "Test User",
    ) -> Account:
        with self.lock:
            account = Account(client_code, str(pin), totp_secret, api_key, Decimal(cash), name)
            self.engine.accounts[client_code] = account
            return account

    def account(self, client_code: str) -> Account:
        return self.engine.accounts[client_code]

    def account_by_api_key(self, api_key: str) -> Account | None:
        return next((a for a in self.engine.accounts.values() if a.api_key == api_key), None)

    def instrument(self, exchange: str, token: str) -> Instrument:
        return self.engine.instrument(exchange, token)

    def find(self, symbol: str, exchange: str | None = None) -> Instrument:
        """The instrument whose trading symbol is ``symbol`` (tests address F&O this way)."""
        for inst in self.engine.instruments.values():
            if inst.symbol == symbol and (exchange is None or inst.exchange == exchange):
                return inst
        raise KeyError(symbol)

    def ltp(self, exchange: str, token: str) -> Decimal:
        return self.engine.quote(self.instrument(exchange, token)).ltp

    def orders(self, client_code: str) -> list[Order]:
        return list(self.account(client_code).orders.values())

    def calls(self, route: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    @property
    def auto_process(self) -> bool:
        """False: new orders stay ``put order req received`` until ``process_orders()``."""
        return self.engine.auto_process

    @auto_process.setter
    def auto_process(self, value: bool) -> None:
        self.engine.auto_process = value

    def process_orders(self) -> None:
        """Advance every order still waiting in ``put order req received``."""
        with self.lock:
            events: list[OrderEvent] = []
            for account in self.engine.accounts.values():
                for order in list(account.orders.values()):
                    events.extend(self.engine.process(order))
        self.emit_order_events(events)

    # ------------------------------------------------------------------ market
    def set_price(self, exchange: str, token: str, price: Decimal | str | int) -> None:
        """Move the market: fills crossing LIMIT orders, triggers stops and GTT rules, pushes
        the order events and one feed tick. Safe to call from any thread."""
        with self.lock:
            inst = self.instrument(exchange, token)
            value = Decimal(str(price))
            if value <= 0:
                raise ValueError("price must be positive")
            events = self.engine.on_price(inst, value)
            quote = self.engine.quote(inst)
            fields = {
                "ltp": quote.ltp,
                "last_traded_quantity": quote.last_qty,
                "average_price": quote.avg,
                "volume": quote.volume,
                "open": quote.open,
                "high": quote.high,
                "low": quote.low,
                "close": quote.close,
                "open_interest": quote.oi,
                "exchange_timestamp": quote.updated,
            }
        self.emit_order_events(events)
        feed = self.feed
        if feed is not None:
            self._emit(lambda: feed.publish(inst.exchange, inst.token, fields))

    # ------------------------------------------------------------------ sessions
    def invalidate_tokens(self, client_code: str) -> int:
        with self.lock:
            return self.sessions.revoke_client(client_code)

    def session_for_jwt(self, token: str | None) -> Session | None:
        session = self.sessions.by_jwt(strip_bearer(token))
        if session is None or not session.alive(self.clock()):
            return None
        return session

    def authenticate_feed(self, params: Mapping[str, str]) -> str | None:
        """Feed handshake check for ``FakeFeedServer``: client code + feed token (headers or
        query); a JWT or API key, when given, must belong to the same client."""
        client = params.get("x-client-code") or params.get("clientcode") or params.get("clientCode")
        token = params.get("x-feed-token") or params.get("feedtoken") or params.get("feedToken")
        if not client or not token:
            return None
        session = self.sessions.by_feed(token)
        if session is None or not session.alive(self.clock()) or session.client_code != client:
            return None
        jwt = params.get("authorization")
        if jwt:  # optional (the Java SDK omits it), but when sent it must be live and ours
            owner = self.session_for_jwt(jwt)
            if owner is None or owner.client_code != client:
                return None
        api_key = params.get("x-api-key") or params.get("apikey") or params.get("apiKey")
        if api_key and api_key != self.account(client).api_key:
            return None
        return client

    # ------------------------------------------------------------------ events
    def emit_order_events(self, events: Iterable[OrderEvent]) -> None:
        for event in events:
            code = ORDER_WS_CODE_BY_STATUS.get(event.status)
            if code is None:
                continue
            message = order_ws_message(event.client_code, code, event.row)
            self._emit(functools.partial(self._send_order_ws, event.client_code, message))

    async def _send_order_ws(self, client_code: str, message: dict[str, Any]) -> None:
        for ws in list(self._order_sockets.get(client_code, ())):
            try:
                await ws.send_json(message)
            except Exception:  # noqa: BLE001 - a dead socket must not stop the others
                self._order_sockets.get(client_code, set()).discard(ws)

    def register_order_socket(self, client_code: str, ws: Any) -> bool:
        """Add a socket unless the client already has 3 (the real limit)."""
        sockets = self._order_sockets.setdefault(client_code, set())
        if len(sockets) >= 3:
            return False
        sockets.add(ws)
        return True

    def unregister_order_socket(self, client_code: str, ws: Any) -> None:
        self._order_sockets.get(client_code, set()).discard(ws)

    def order_socket_count(self, client_code: str) -> int:
        return len(self._order_sockets.get(client_code, ()))

    def drop_websockets(self) -> int:
        """Abort every order-update socket (and the feed's); returns the order sockets hit."""
        sockets = [ws for group in self._order_sockets.values() for ws in group]
        self._order_sockets.clear()

        async def drop() -> None:
            from trading_backend.brokers.angel_one.fake.order_ws import abort

            for ws in sockets:
                await abort(ws)
            drop_all = getattr(self.feed, "drop_all", None)
            if drop_all is not None:
                await drop_all()

        self._emit(drop)
        return len(sockets)

    def _emit(self, job: Callable[[], Awaitable[object]]) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return  # no server running: nobody could be listening
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            queue.put_nowait(job)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, job)

    async def _dispatch(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                log.warning("fake_smartapi_dispatch_failed", exc_info=True)
            finally:
                self._queue.task_done()

    async def settle(self) -> None:
        """Wait until every queued WebSocket message has been handed to its socket."""
        if self._queue is not None:
            await self._queue.join()

    # ------------------------------------------------------------------ lifecycle
    async def attach(self) -> None:
        """Bind to the running loop (called by the server runner before serving)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._released = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="fake-smartapi-dispatch")

    async def detach(self) -> None:
        if self._released is not None:
            self._released.set()  # wake requests held by a timeout fault
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._loop = self._queue = self._dispatcher = None

    async def hold(self, seconds: float) -> None:
        """Sleep for a timeout fault, but let server shutdown end it early."""
        if self._released is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    def _make_feed(self) -> FeedServer | None:
        """Helper FEED's ``FakeFeedServer`` when ``fake/feed_ws.py`` is present."""
        try:
            from trading_backend.brokers.angel_one.fake.feed_ws import FakeFeedServer
        except ImportError:
            return None
        feed: FeedServer = FakeFeedServer(self.authenticate_feed, clock=self.clock)
        return feed


def empty_order_data() -> dict[str, Any]:
    """``orderData`` of the AB00 greeting: every field empty (§1.13)."""
    numeric = {"price", "triggerprice", "squareoff", "stoploss", "trailingstoploss"}
    numeric |= {"strikeprice", "averageprice"}
    keys = (
        "variety ordertype producttype duration price triggerprice quantity disclosedquantity "
        "squareoff stoploss trailingstoploss tradingsymbol transactiontype exchange symboltoken "
        "ordertag instrumenttype strikeprice optiontype expirydate lotsize cancelsize "
        "averageprice filledshares unfilledshares orderid text status orderstatus updatetime "
        "exchtime exchorderupdatetime fillid filltime parentorderid uniqueorderid "
        "exchangeorderid"
    ).split()
    return {k: (0 if k in numeric else "") for k in keys}


def order_ws_message(client_code: str, code: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "user-id": client_code,
        "status-code": "200",
        "order-status": code,
        "error-message": "",
        "orderData": dict(row),
    }


__all__ = ["FakeAPIError", "FakeSmartAPI", "RecordedRequest", "empty_order_data"]
