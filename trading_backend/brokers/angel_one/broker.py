"""``AngelOneBroker``: the ``Broker`` interface over Angel One SmartAPI.

How the pieces fit:

* ``client.SmartApiClient`` speaks HTTP (headers, envelopes, retries of reads, failure
  classes), spending from the client code's shared ``ratelimit`` budget and going through
  this session's ``circuit.CircuitBreaker``;
* ``auth.AngelSession`` owns the tokens (TOTP login, midnight expiry and scheduled
  re-login, one re-login on a session error);
* ``mapping`` translates orders, rows, fills, positions, funds, quotes and candles;
* ``resolver`` turns our symbols into Angel's ``tradingsymbol``/``symboltoken``
  (``context.extras["instrument_resolver"]`` when the runtime has the instrument store,
  else ``searchScrip`` plus a cache);
* ``order_updates.OrderUpdateStream`` pushes order changes; while it is down the order
  book is polled every ``poll_interval`` seconds, and each reconnection polls once to
  catch up. Every change becomes an ``OrderUpdate`` carrying the order's fills from the
  trade book (the recorder counts each trade id once).

**Orders are never resent.** ``place_order`` sends one request. If the answer is lost
(timeout, dropped connection, 5xx, empty/unreadable body, transient Angel error, or a
success without an order id) it looks the order up by its tag in the order book
(``lookup_attempts`` reads, 1/s): found, its order id is returned; not found,
``BrokerTimeout`` tells the worker to mark the order UNKNOWN and reconcile. The tag rule
(``client_order_id[1:]`` for our 20-character ids) is in ``mapping``.

Order and trade book reads are limited to 1/s by Angel: reads within ``book_max_age``
seconds share one fetch (and concurrent readers share the fetch in flight); every write
invalidates the cache.

Settings (``config.settings``, all optional): ``root_url``, ``order_ws_url``,
``feed_ws_url``, ``timeout`` (HTTP seconds), ``order_updates`` (``websocket`` | ``poll`` |
``off``), ``poll_interval``, ``lookup_attempts``, ``read_retries``, ``book_max_age``,
``circuit_failures``, ``circuit_cooldown``, ``rate_limit_max_wait``,
``rate_limit_backoff``, ``relogin_delay``, ``local_ip``, ``public_ip``, ``mac_address``.
Credentials (``config.credentials``): ``api_key``, ``client_code``, ``pin`` (alias
``password``), ``totp_secret``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import structlog

from trading_backend.brokers.angel_one import mapping
from trading_backend.brokers.angel_one.auth import AngelCredentials, AngelSession
from trading_backend.brokers.angel_one.circuit import CircuitBreaker
from trading_backend.brokers.angel_one.client import SmartApiClient, error_from_envelope
from trading_backend.brokers.angel_one.order_updates import OrderUpdateStream
from trading_backend.brokers.angel_one.protocol import (
    CANDLE_INTERVAL_MAX_DAYS,
    CANDLE_TIME_FORMAT,
    EMPTY_RESULT_ERRORS,
    FEED_WS_URL,
    IST,
    ORDER_WS_URL,
    REST_ROOT,
    TRANSIENT_ERRORS,
    as_list,
    format_price,
    to_decimal,
    to_int,
)
from trading_backend.brokers.angel_one.ratelimit import ClientRateLimiter, limiter_for
from trading_backend.brokers.angel_one.resolver import (
    ResolvedSymbol,
    SearchScripResolver,
    not_found,
    resolve_with,
)
from trading_backend.brokers.base import (
    Broker,
    BrokerConfigData,
    BrokerContext,
    BrokerError,
    BrokerOrder,
    BrokerOrderState,
    BrokerRejected,
    BrokerTimeout,
    OrderUpdate,
    SessionGate,  # -- shared sessions (issue #7)
)
from trading_backend.domain import Bar, ErrorCode, Exchange, Fill, OrderType, Timeframe

__all__ = ["AngelOneBroker", "AngelSettings"]

log = structlog.get_logger(__name__)

QUOTE_BATCH = 50  # tokens per market/v1/quote request
QUOTE_MODES = ("LTP", "OHLC", "FULL")
GTT_STATUSES = ("NEW", "CANCELLED", "ACTIVE", "SENTTOEXCHANGE", "FORALL")
UPDATE_MODES = ("websocket", "poll", "off")


def _invalid(message: str, **details: object) -> BrokerRejected:
    return BrokerRejected(message, ErrorCode.VALIDATION_ERROR, **details)


@dataclass(frozen=True, slots=True)
class AngelSettings:
    root_url: str = REST_ROOT
    order_ws_url: str = ORDER_WS_URL
    feed_ws_url: str = FEED_WS_URL
    timeout: float = 7.0
    order_updates: str = "websocket"
    poll_interval: float = 5.0
    lookup_attempts: int = 2
    read_retries: int = 2
    book_max_age: float = 1.0
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0
    rate_limit_max_wait: float = 10.0
    rate_limit_backoff: float = 60.0
    relogin_delay: float = 5.0
    local_ip: str = "127.0.0.1"
    public_ip: str = "106.193.147.98"
    mac_address: str | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> AngelSettings:
        """Validate ``config.settings``: unknown keys and bad values are VALIDATION_ERRORs
        (a typo must not silently leave a config pointed at the real exchange)."""
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise _invalid(
                f"unknown Angel One settings: {', '.join(unknown)};"
                f" known: {', '.join(sorted(known))}",
                keys=unknown,
            )
        out: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            default = known[key].default
            if key.endswith("_url"):
                text = str(value).strip().rstrip("/") if key == "root_url" else str(value)
                schemes = ("http://", "https://") if key == "root_url" else ("ws://", "wss://")
                if not text.startswith(schemes):
                    raise _invalid(f"{key} must start with {' or '.join(schemes)}", field=key)
                out[key] = text
            elif key == "order_updates":
                if value not in UPDATE_MODES:
                    raise _invalid(
                        f"order_updates must be one of {', '.join(UPDATE_MODES)}", field=key
                    )
                out[key] = value
            elif isinstance(default, bool) or isinstance(value, bool):
                raise _invalid(f"{key} must be a number", field=key)
            elif isinstance(default, int):
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    raise _invalid(f"{key} must be a whole number", field=key) from None
                if number < (1 if key in ("lookup_attempts", "circuit_failures") else 0):
                    raise _invalid(f"{key} is out of range", field=key)
                out[key] = number
            elif isinstance(default, float):
                try:
                    number_f = float(value)
                except (TypeError, ValueError):
                    raise _invalid(f"{key} must be a number", field=key) from None
                if not (0 <= number_f <= 86_400) or (key == "timeout" and number_f <= 0):
                    raise _invalid(f"{key} is out of range", field=key)
                out[key] = number_f
            else:
                out[key] = str(value)
        return cls(**out)


class _Book:
    """A cached, single-flight read of a 1/s endpoint (order book, trade book)."""

    def __init__(self, fetch: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        self._fetch = fetch
        self._lock = asyncio.Lock()
        self.rows: list[dict[str, Any]] = []
        self.fetched_at: float | None = None  # monotonic time the fetch *started*
        self.min_fetch = 0.0
        self.fetches = 0

    def invalidate(self) -> None:
        self.min_fetch = time.monotonic()

    async def get(self, fresh_after: float) -> list[dict[str, Any]]:
        """Rows from a fetch started at or after ``fresh_after`` (monotonic)."""
        async with self._lock:
            floor = max(fresh_after, self.min_fetch)
            if self.fetched_at is not None and self.fetched_at >= floor:
                return self.rows
            started = time.monotonic()
            rows = await self._fetch()
            self.rows, self.fetched_at = rows, started
            self.fetches += 1
            return rows


class AngelOneBroker(Broker):
    """One Angel One account (see the module docstring)."""

    name: ClassVar[str] = "angel_one"

    def __init__(
        self,
        config: BrokerConfigData,
        context: BrokerContext | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: ClientRateLimiter | None = None,
    ) -> None:
        super().__init__(config, context)
        self.settings = AngelSettings.from_mapping(config.settings)
        self.credentials = AngelCredentials.from_mapping(dict(config.credentials or {}))
        extras = self.context.extras
        self.clock: Callable[[], datetime] = (
            clock or extras.get("angel_one_clock") or (lambda: datetime.now(UTC))
        )
        sleeper = sleep or extras.get("angel_one_sleep") or asyncio.sleep
        self.circuit = CircuitBreaker(
            self.name,
            config.config_id,
            failure_threshold=self.settings.circuit_failures,
            cooldown=self.settings.circuit_cooldown,
        )
        self.limiter = limiter or limiter_for(self.credentials.client_code)
        self.limiter.max_wait = self.settings.rate_limit_max_wait
        self.client = SmartApiClient(
            self.credentials.api_key,
            client_code=self.credentials.client_code,
            base_url=self.settings.root_url,
            transport=transport or extras.get("angel_one_transport"),
            timeout=self.settings.timeout,
            limiter=self.limiter,
            circuit=self.circuit,
            read_retries=self.settings.read_retries,
            rate_limit_backoff=self.settings.rate_limit_backoff,
            local_ip=self.settings.local_ip,
            public_ip=self.settings.public_ip,
            mac_address=self.settings.mac_address,
        )
        self.session = AngelSession(
            self.client,
            self.credentials,
            clock=self.clock,
            sleep=sleeper,
            relogin_delay=self.settings.relogin_delay,
        )
        self.session.on_login.append(self._after_login)
        external = extras.get("instrument_resolver")
        self._external_resolver = external
        self.search_resolver = SearchScripResolver(self._search_rows)
        self._order_book = _Book(self._fetch_order_book)
        self._trade_book = _Book(self._fetch_trade_book)
        self._rows: dict[str, dict[str, Any]] = {}  # orderid -> latest row
        self._client_ids: dict[str, str] = {}  # orderid -> our client order id
        self._known: dict[str, tuple[Any, ...]] = {}  # orderid -> last state emitted
        self._handle_lock = asyncio.Lock()
        self._stream: OrderUpdateStream | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_wake = asyncio.Event()
        self._catch_up = False
        self._started = False
        self._closed = False
        self.polls = 0

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> None:
        AngelSettings.from_mapping(settings)

    def __repr__(self) -> str:
        return (
            f"AngelOneBroker(config_id={self.config.config_id!r},"
            f" client_code={self.credentials.client_code!r})"
        )

    # -- session -------------------------------------------------------------------------
    async def authenticate(self) -> bool:
        """Log in (or refresh a same-day session), read the order book once and start the
        order updates. Raises ``BrokerAuthError`` (INVALID_TOTP for a refused TOTP)."""
        if self.session.is_valid():
            pass
        elif self.session.refresh_token is not None and self.session.jwt is not None:
            await self.session.refresh()
        else:
            await self.session.ensure()
        if not self._started:
            self._started = True
            try:
                await self._seed_order_book()
            except BrokerError as exc:
                log.warning(
                    "angel_initial_order_book_failed",
                    config_id=self.config.config_id,
                    error=exc.message,
                )
            self._start_updates()
        return True

    async def is_session_valid(self) -> bool:
        return self.session.is_valid()

    # -- shared sessions (issue #7): tokens shared between processes (auth.AngelSession)
    def export_session(self) -> dict[str, Any] | None:
        return self.session.export()

    def restore_session(self, data: dict[str, Any]) -> bool:
        return self.session.restore(data)

    def session_account(self) -> str:
        return self.credentials.client_code

    def set_session_gate(self, gate: SessionGate | None) -> bool:
        self.session.renewal_gate = gate
        return True

    # -- end shared sessions

    async def _after_login(self) -> None:
        # A new JWT: the order-update socket must reconnect with it.
        if self._stream is not None and self._stream.running:
            await self._stream.reconnect()

    async def logout(self) -> None:
        await self._stop_updates()
        await self.session.logout()

    async def close(self) -> None:
        self._closed = True
        await self._stop_updates()
        await self.session.close()
        await self.client.aclose()
        self.circuit.forget()

    def status(self) -> dict[str, Any]:
        """Session, circuit and update-channel state (no secrets)."""
        return {
            "client_code": self.credentials.client_code,
            "session_valid": self.session.is_valid(),
            "expires_at": self.session.expires_at.isoformat() if self.session.expires_at else None,
            "logins": self.session.login_count,
            "circuit": self.circuit.to_dict(),
            "order_updates": self.settings.order_updates,
            "order_ws_connected": bool(self._stream and self._stream.connected.is_set()),
            "polls": self.polls,
        }

    def feed_credentials(self) -> dict[str, str]:
        """What the SmartStream feed needs (Helper FEED's client): never log it."""
        if not self.session.is_valid() or self.session.feed_token is None:
            raise BrokerError("no Angel One session: authenticate first", ErrorCode.AUTH_ERROR)
        assert self.session.jwt is not None
        return {
            "url": self.settings.feed_ws_url,
            "jwt": self.session.jwt,
            "api_key": self.credentials.api_key,
            "client_code": self.credentials.client_code,
            "feed_token": self.session.feed_token,
        }

    async def profile(self) -> dict[str, Any]:
        return await self.session.profile()

    async def refresh_session(self) -> None:
        await self.session.refresh()

    # -- plumbing --------------------------------------------------------------------------
    async def _data(self, route: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return await self.session.call_data(route, body, **kw)

    async def _list(self, route: str, body: dict[str, Any] | None = None) -> list[Any]:
        """A list route: ``null`` and the "nothing found" codes are an empty list."""
        envelope = await self.session.call(route, body)
        if not envelope.ok:
            if envelope.error_code in EMPTY_RESULT_ERRORS:
                return []
            raise error_from_envelope(envelope, route)
        return as_list(envelope.data)

    async def _fetch_order_book(self) -> list[dict[str, Any]]:
        rows = [r for r in await self._list("order_book") if isinstance(r, dict)]
        for row in rows:
            self._remember_row(row)
        return rows

    async def _fetch_trade_book(self) -> list[dict[str, Any]]:
        return [r for r in await self._list("trade_book") if isinstance(r, dict)]

    def _remember_row(self, row: dict[str, Any]) -> None:
        order_id = str(row.get("orderid") or "")
        if not order_id:
            return
        previous = self._rows.get(order_id, {})
        merged = {**previous, **{k: v for k, v in row.items() if v not in (None, "")}}
        self._rows[order_id] = merged
        client_id = mapping.client_id_from_tag(row.get("ordertag"))
        if client_id:
            self._client_ids[order_id] = client_id

    async def _book_rows(self, fresh: bool = False) -> list[dict[str, Any]]:
        now = time.monotonic()
        return await self._order_book.get(now if fresh else now - self.settings.book_max_age)

    async def _trade_rows(self, fresh: bool = False) -> list[dict[str, Any]]:
        now = time.monotonic()
        return await self._trade_book.get(now if fresh else now - self.settings.book_max_age)

    def _invalidate_books(self) -> None:
        self._order_book.invalidate()
        self._trade_book.invalidate()

    def _symbol_for(self, exchange: str, tradingsymbol: str, token: str | None) -> str:
        external = self._external_resolver
        if external is not None and hasattr(external, "symbol_for"):
            try:
                found = external.symbol_for(exchange, tradingsymbol, token)
            except Exception:  # noqa: BLE001 - fall back to our own mapping
                found = None
            if isinstance(found, str) and found:
                return found
        return self.search_resolver.symbol_for(exchange, tradingsymbol, token)

    def _state(self, row: dict[str, Any]) -> BrokerOrderState:
        state = mapping.order_state_from_row(row, self._symbol_for, self.clock())
        if state.client_order_id is None:
            state.client_order_id = self._client_ids.get(state.broker_order_id)
        return state

    def _today(self) -> Any:
        return self.clock().astimezone(IST).date()

    async def _search_rows(self, exchange: str, query: str) -> list[dict[str, Any]]:
        return [
            r
            for r in await self._list("search_scrip", {"exchange": exchange, "searchscrip": query})
            if isinstance(r, dict)
        ]

    async def resolve(self, exchange: str, symbol: str) -> ResolvedSymbol:
        """Our symbol -> Angel's tradingsymbol and token; INSTRUMENT_NOT_FOUND if unknown."""
        exchange, symbol = str(exchange).upper(), symbol.strip().upper()
        mapping.angel_exchange(exchange)
        cached = self.search_resolver.cached(exchange, symbol)
        if cached is not None:
            return cached
        resolved: ResolvedSymbol | None = None
        if self._external_resolver is not None:
            resolved = await resolve_with(self._external_resolver, exchange, symbol)
            if resolved is not None:
                self.search_resolver.remember(exchange, symbol, resolved)
        if resolved is None:
            resolved = await self.search_resolver.resolve(exchange, symbol)
        if resolved is None:
            raise not_found(exchange, symbol)
        return resolved

    # -- orders ----------------------------------------------------------------------------
    async def place_order(self, order: BrokerOrder) -> str:
        resolved = await self.resolve(str(order.exchange), order.symbol)
        body = mapping.place_order_body(order, resolved)
        tag = body.get("ordertag")
        self._invalidate_books()
        try:
            envelope = await self.session.call("place_order", body)
        except BrokerTimeout as exc:
            return await self._find_placed(tag, order, exc.message)
        finally:
            self._invalidate_books()
        if envelope.ok:
            data = envelope.data if isinstance(envelope.data, dict) else {}
            order_id = data.get("orderid")
            if order_id:
                order_id = str(order_id)
                if order.client_order_id:
                    self._client_ids[order_id] = order.client_order_id
                log.info(
                    "angel_order_placed",
                    config_id=self.config.config_id,
                    broker_order_id=order_id,
                    client_order_id=order.client_order_id,
                )
                return order_id
            return await self._find_placed(tag, order, "placeOrder succeeded without an order id")
        if envelope.error_code in TRANSIENT_ERRORS:
            return await self._find_placed(
                tag, order, f"transient error {envelope.error_code}: {envelope.message}"
            )
        raise error_from_envelope(envelope, "place_order")

    async def _find_placed(self, tag: str | None, order: BrokerOrder, cause: str) -> str:
        """The order's fate is unknown: look for it by tag; never send it again."""
        log.warning(
            "angel_place_outcome_unknown",
            config_id=self.config.config_id,
            client_order_id=order.client_order_id,
            cause=cause,
        )
        if tag is not None:
            for _ in range(self.settings.lookup_attempts):
                try:
                    rows = await self._book_rows(fresh=True)
                except BrokerError as exc:
                    log.warning("angel_lookup_failed", error=exc.message)
                    continue
                for row in rows:
                    if str(row.get("ordertag") or "") == tag:
                        order_id = str(row.get("orderid"))
                        if order.client_order_id:
                            self._client_ids[order_id] = order.client_order_id
                        log.info(
                            "angel_order_found_by_tag",
                            config_id=self.config.config_id,
                            broker_order_id=order_id,
                        )
                        return order_id
        raise BrokerTimeout(
            f"Angel One placeOrder: {cause}; the order is not in the order book (yet):"
            " its fate is unknown, reconcile (it is never resent)",
            client_order_id=order.client_order_id,
        )

    async def _row(self, broker_order_id: str) -> dict[str, Any]:
        row = self._rows.get(broker_order_id)
        if row is None:
            for candidate in await self._book_rows():
                if str(candidate.get("orderid")) == broker_order_id:
                    row = candidate
                    break
        if row is None:
            raise BrokerRejected(
                f"order {broker_order_id} not found at Angel One",
                ErrorCode.ORDER_NOT_FOUND,
                broker_order_id=broker_order_id,
            )
        return row

    async def modify_order(
        self,
        broker_order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
    ) -> None:
        row = await self._row(broker_order_id)
        body = mapping.modify_body(
            row,
            quantity=quantity,
            price=price,
            trigger_price=trigger_price,
            order_type=order_type,
        )
        self._invalidate_books()
        try:
            await self._data("modify_order", body)
        finally:
            self._invalidate_books()
        # What we asked for is what the next modify starts from.
        patched = dict(row)
        for key in ("ordertype", "price", "triggerprice", "quantity"):
            if body.get(key) is not None:
                patched[key] = body[key]
        self._rows[broker_order_id] = patched

    async def cancel_order(self, broker_order_id: str) -> None:
        row = await self._row(broker_order_id)
        self._invalidate_books()
        try:
            await self._data("cancel_order", mapping.cancel_body(row))
        finally:
            self._invalidate_books()

    async def get_order(self, broker_order_id: str) -> BrokerOrderState:
        for row in await self._book_rows():
            if str(row.get("orderid")) == broker_order_id:
                return self._state(row)
        raise BrokerRejected(
            f"order {broker_order_id} not found at Angel One",
            ErrorCode.ORDER_NOT_FOUND,
            broker_order_id=broker_order_id,
        )

    async def order_details(self, unique_order_id: str) -> BrokerOrderState:
        """``details/{uniqueorderid}`` (10/s, unlike the 1/s order book)."""
        data = await self._data("order_details", path_params={"uniqueorderid": unique_order_id})
        if not isinstance(data, dict) or not data.get("orderid"):
            raise BrokerRejected(
                f"order {unique_order_id} not found at Angel One", ErrorCode.ORDER_NOT_FOUND
            )
        self._remember_row(data)
        return self._state(data)

    async def get_orders(self) -> list[BrokerOrderState]:
        return [self._state(row) for row in await self._book_rows()]

    async def find_order_by_client_id(self, client_order_id: str) -> BrokerOrderState | None:
        """By tag (see ``mapping``), in a fresh read of the order book."""
        try:
            tag = mapping.order_tag(client_order_id)
        except BrokerRejected:
            return None
        for row in await self._book_rows(fresh=True):
            if str(row.get("ordertag") or "") == tag:
                state = self._state(row)
                state.client_order_id = client_order_id
                return state
        return None

    async def get_trades(self) -> list[Fill]:
        rows = await self._trade_rows()
        if any(str(r.get("orderid")) not in self._client_ids for r in rows):
            with contextlib.suppress(BrokerError):
                await self._book_rows()  # learn the tags of orders we have not seen
        return self._fills(rows)

    def _fills(self, rows: Iterable[dict[str, Any]]) -> list[Fill]:
        today = self._today()
        fills: list[Fill] = []
        for row in rows:
            try:
                fills.append(
                    mapping.fill_from_trade(row, today, self._symbol_for, self._client_ids)
                )
            except (ValueError, KeyError) as exc:
                log.warning("angel_unreadable_trade", error=str(exc))
        return fills

    # -- order updates ---------------------------------------------------------------------
    async def _seed_order_book(self) -> None:
        """Read the order book once at session start: later changes are then reported
        as changes (the worker's start-up reconciliation brings our orders in line)."""
        for row in await self._book_rows(fresh=True):
            state = self._state(row)
            self._known[state.broker_order_id] = self._key(state)

    @staticmethod
    def _key(state: BrokerOrderState) -> tuple[Any, ...]:
        return (
            state.status,
            state.filled_quantity,
            state.quantity,
            state.price,
            state.trigger_price,
            state.order_type,
        )

    def _start_updates(self) -> None:
        mode = self.settings.order_updates
        if mode == "off" or self._closed:
            return
        if mode == "websocket" and self._stream is None:
            self._stream = OrderUpdateStream(
                self.settings.order_ws_url,
                self._ws_headers,
                self._on_ws_row,
                on_state=self._on_ws_state,
                on_auth_failure=self._on_ws_auth_failure,
            )
            self._stream.start()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(
                self._poll_loop(), name=f"angel-poll-{self.config.config_id}"
            )

    async def _stop_updates(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.stop()
        poller, self._poller = self._poller, None
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        self._started = False

    async def _ws_headers(self) -> dict[str, str]:
        jwt = await self.session.ensure()
        headers = {
            "Authorization": f"Bearer {jwt}",
            "x-api-key": self.credentials.api_key,
            "x-client-code": self.credentials.client_code,
        }
        if self.session.feed_token:
            headers["x-feed-token"] = self.session.feed_token
        return headers

    async def _on_ws_state(self, up: bool) -> None:
        # Down: poll now and every poll_interval. Up again: one catch-up poll.
        self._catch_up = True
        self._poll_wake.set()
        log.info("angel_order_ws_state", config_id=self.config.config_id, connected=up)

    async def _on_ws_auth_failure(self) -> None:
        try:
            await self.session.refresh()
        except BrokerError as exc:
            log.warning("angel_order_ws_relogin_failed", error=exc.message)

    async def _on_ws_row(self, row: dict[str, Any]) -> None:
        await self._handle_row(row)

    def _stream_up(self) -> bool:
        return self._stream is not None and self._stream.connected.is_set()

    async def _poll_loop(self) -> None:
        while not self._closed:
            self._poll_wake.clear()  # a wake-up during the poll below is kept for the next
            if self._catch_up or not self._stream_up():
                self._catch_up = False
                try:
                    await self.poll_once()
                except BrokerError as exc:
                    log.warning(
                        "angel_order_poll_failed",
                        config_id=self.config.config_id,
                        error=exc.message,
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("angel_order_poll_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_wake.wait(), self.settings.poll_interval)

    async def poll_once(self) -> int:
        """Read the order book and emit an update for every order that changed;
        returns how many were emitted."""
        self.polls += 1
        emitted = 0
        for row in await self._book_rows(fresh=True):
            if await self._handle_row(row):
                emitted += 1
        return emitted

    async def _handle_row(self, row: dict[str, Any]) -> bool:
        """Emit an ``OrderUpdate`` if this row tells something new (one row at a time,
        so updates leave in the order they came)."""
        async with self._handle_lock:
            self._remember_row(row)
            order_id = str(row.get("orderid") or "")
            merged = self._rows.get(order_id, row)
            state = self._state(merged)
            key = self._key(state)
            previous = self._known.get(order_id)
            if previous == key:
                return False
            fills: list[Fill] = []
            filled_before = previous[1] if previous is not None else 0
            if state.filled_quantity > 0 and state.filled_quantity != filled_before:
                fills = await self._fills_for(order_id, state.filled_quantity)
            self._known[order_id] = key
            try:
                await self._emit(OrderUpdate(self.config.config_id, state, fills))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "angel_order_update_handler_failed",
                    config_id=self.config.config_id,
                    broker_order_id=order_id,
                )
            return True

    async def _fills_for(self, order_id: str, filled: int, attempts: int = 3) -> list[Fill]:
        """The order's fills from the trade book, read again (1/s) while it lags behind
        the order's filled quantity."""
        fills: list[Fill] = []
        for attempt in range(attempts):
            try:
                rows = await self._trade_rows(fresh=attempt > 0)
            except BrokerError as exc:
                log.warning("angel_trade_book_failed", error=exc.message)
                break
            fills = [f for f in self._fills(rows) if f.broker_order_id == order_id]
            if sum(f.quantity for f in fills) >= filled:
                break
            if attempt == 0:
                self._trade_book.invalidate()
        return fills

    # -- portfolio -------------------------------------------------------------------------
    async def get_positions(self) -> list[dict[str, Any]]:
        return [
            mapping.position_from_row(r, self._symbol_for)
            for r in await self._list("positions")
            if isinstance(r, dict)
        ]

    async def get_balance(self) -> dict[str, Any]:
        data = await self._data("rms")
        return mapping.balance_from_rms(data if isinstance(data, dict) else None)

    async def get_holdings(self) -> list[dict[str, Any]]:
        return [
            mapping.holding_from_row(r, self._symbol_for)
            for r in await self._list("holdings")
            if isinstance(r, dict)
        ]

    async def get_all_holdings(self) -> dict[str, Any]:
        """getAllHolding: ``{holdings: [...], totals: {...}}`` (numbers as Decimal)."""
        envelope = await self.session.call("all_holdings")
        if not envelope.ok:
            if envelope.error_code in EMPTY_RESULT_ERRORS:
                return {"holdings": [], "totals": {}}
            raise error_from_envelope(envelope, "all_holdings")
        data = envelope.data if isinstance(envelope.data, dict) else {}
        totals = data.get("totalholding") if isinstance(data.get("totalholding"), dict) else {}
        return {
            "holdings": [
                mapping.holding_from_row(r, self._symbol_for)
                for r in as_list(data.get("holdings"))
                if isinstance(r, dict)
            ],
            "totals": {k: to_decimal(v) for k, v in (totals or {}).items()},
        }

    async def convert_position(
        self,
        symbol: str,
        exchange: str,
        *,
        side: str,
        quantity: int,
        from_product: str,
        to_product: str,
    ) -> None:
        """Move an open position between product types (e.g. INTRADAY -> DELIVERY)."""
        if quantity <= 0:
            raise _invalid("quantity must be positive", field="quantity")
        resolved = await self.resolve(exchange, symbol)
        side = str(side).upper()
        if side not in ("BUY", "SELL"):
            raise _invalid("side must be BUY or SELL", field="side")
        body = {
            "exchange": str(exchange).upper(),
            "symboltoken": resolved.token,
            "tradingsymbol": resolved.tradingsymbol,
            "oldproducttype": str(from_product).upper(),
            "newproducttype": str(to_product).upper(),
            "transactiontype": side,
            "quantity": quantity,
            "type": "DAY",
        }
        await self._data("convert_position", body)

    # -- market data -----------------------------------------------------------------------
    async def get_ltp(self, symbol: str, exchange: str) -> dict[str, Any]:
        resolved = await self.resolve(exchange, symbol)
        data = await self._data(
            "ltp",
            {
                "exchange": str(exchange).upper(),
                "tradingsymbol": resolved.tradingsymbol,
                "symboltoken": resolved.token,
            },
        )
        data = data if isinstance(data, dict) else {}
        return {
            "symbol": symbol.upper(),
            "exchange": str(exchange).upper(),
            "ltp": to_decimal(data.get("ltp")),
            "open": to_decimal(data.get("open")),
            "high": to_decimal(data.get("high")),
            "low": to_decimal(data.get("low")),
            "close": to_decimal(data.get("close")),
        }

    async def quote(
        self, instruments: list[tuple[str, str]], mode: str = "FULL"
    ) -> dict[str, dict[str, Any]]:
        """Quotes of ``[(exchange, symbol), ...]`` keyed ``EXCHANGE:SYMBOL``, in batches of
        at most 50 tokens. A symbol Angel could not quote is left out."""
        mode = mode.upper()
        if mode not in QUOTE_MODES:
            raise _invalid(f"mode must be one of {', '.join(QUOTE_MODES)}", field="mode")
        wanted: list[tuple[str, str, ResolvedSymbol]] = []
        for exchange, symbol in instruments:
            resolved = await self.resolve(exchange, symbol)
            wanted.append((exchange.upper(), symbol.upper(), resolved))
        by_token = {(e, r.token): s for e, s, r in wanted}
        result: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), QUOTE_BATCH):
            batch = wanted[start : start + QUOTE_BATCH]
            tokens: dict[str, list[str]] = {}
            for exchange, _, resolved in batch:
                listed = tokens.setdefault(exchange, [])
                if resolved.token not in listed:
                    listed.append(resolved.token)
            data = await self._data("quote", {"mode": mode, "exchangeTokens": tokens})
            fetched = as_list(data.get("fetched")) if isinstance(data, dict) else []
            for item in fetched:
                if not isinstance(item, dict):
                    continue
                exchange = str(item.get("exchange") or "").upper()
                found = by_token.get((exchange, str(item.get("symbolToken"))))
                if found is None:
                    continue
                result[f"{exchange}:{found}"] = mapping.quote_to_market_data(
                    item, found, self.clock()
                )
        return result

    async def get_market_data(self, symbol: str, exchange: str) -> dict[str, Any]:
        quotes = await self.quote([(exchange, symbol)], "FULL")
        key = f"{str(exchange).upper()}:{symbol.strip().upper()}"
        if key not in quotes:
            raise not_found(str(exchange).upper(), symbol.upper())
        return quotes[key]

    async def search_scrip(self, exchange: str, query: str) -> list[dict[str, str]]:
        exchange = mapping.angel_exchange(exchange)
        if not query or not query.strip():
            raise _invalid("search text is required", field="query")
        return [
            {
                "exchange": str(r.get("exchange") or exchange),
                "tradingsymbol": str(r.get("tradingsymbol") or ""),
                "symboltoken": str(r.get("symboltoken") or ""),
            }
            for r in await self._search_rows(exchange, query.strip().upper())
        ]

    async def get_historical_candles(
        self,
        symbol: str,
        exchange: str,
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        """Complete bars starting in ``[start, end)``, oldest first, fetched in spans of
        at most ``protocol.CANDLE_INTERVAL_MAX_DAYS`` per request."""
        try:
            timeframe = Timeframe(timeframe)
        except ValueError:
            raise _invalid(f"unsupported timeframe {timeframe!r}", field="timeframe") from None
        interval = mapping.TIMEFRAME_TO_INTERVAL.get(timeframe)
        if interval is None:
            raise _invalid(f"Angel One has no {timeframe} candles", field="timeframe")
        if start.tzinfo is None or end.tzinfo is None:
            raise _invalid("start and end must carry a time zone", field="start")
        try:
            our_exchange = Exchange(str(exchange).upper())
        except ValueError:
            raise _invalid(f"unknown exchange {exchange!r}", field="exchange") from None
        if end <= start:
            return []
        resolved = await self.resolve(our_exchange.value, symbol)
        now = self.clock()
        bars: dict[datetime, Bar] = {}
        for chunk_start, chunk_end in mapping.candle_chunks(
            start, end, CANDLE_INTERVAL_MAX_DAYS[interval]
        ):
            body = {
                "exchange": our_exchange.value,
                "symboltoken": resolved.token,
                "interval": interval,
                "fromdate": chunk_start.astimezone(IST).strftime(CANDLE_TIME_FORMAT),
                "todate": chunk_end.astimezone(IST).strftime(CANDLE_TIME_FORMAT),
            }
            for row in await self._list("candles", body):
                bar = mapping.bar_from_candle(row, symbol.upper(), our_exchange, timeframe)
                if bar is not None and start <= bar.start < end and bar.end <= now:
                    bars[bar.start] = bar
        return [bars[k] for k in sorted(bars)]

    # -- GTT -------------------------------------------------------------------------------
    async def gtt_create(
        self,
        symbol: str,
        exchange: str,
        *,
        side: str,
        product_type: str,
        price: Decimal,
        quantity: int,
        trigger_price: Decimal,
        disclosed_quantity: int = 0,
        time_period: int | None = 365,
    ) -> str:
        """Create a GTT rule (NSE/BSE, DELIVERY or MARGIN); returns its id."""
        if str(exchange).upper() not in ("NSE", "BSE"):
            raise _invalid("GTT rules exist only on NSE and BSE", field="exchange")
        if quantity <= 0 or price <= 0 or trigger_price <= 0:
            raise _invalid("quantity, price and trigger_price must be positive")
        resolved = await self.resolve(exchange, symbol)
        data = await self._data(
            "gtt_create",
            {
                "tradingsymbol": resolved.tradingsymbol,
                "symboltoken": resolved.token,
                "exchange": str(exchange).upper(),
                "transactiontype": str(side).upper(),
                "producttype": str(product_type).upper(),
                "price": format_price(Decimal(price)),
                "qty": str(quantity),
                "triggerprice": format_price(Decimal(trigger_price)),
                "disclosedqty": str(disclosed_quantity),
                "timeperiod": None if time_period is None else str(time_period),
            },
        )
        rule_id = data.get("id") if isinstance(data, dict) else None
        if rule_id in (None, ""):
            raise BrokerError("Angel One created a GTT rule without returning its id")
        return str(rule_id)

    async def gtt_modify(
        self,
        rule_id: str,
        symbol: str,
        exchange: str,
        *,
        price: Decimal,
        quantity: int,
        trigger_price: Decimal,
        disclosed_quantity: int = 0,
        time_period: int | None = None,
    ) -> str:
        resolved = await self.resolve(exchange, symbol)
        data = await self._data(
            "gtt_modify",
            {
                "id": str(rule_id),
                "symboltoken": resolved.token,
                "exchange": str(exchange).upper(),
                "price": format_price(Decimal(price)),
                "qty": str(quantity),
                "triggerprice": format_price(Decimal(trigger_price)),
                "disclosedqty": str(disclosed_quantity),
                "timeperiod": None if time_period is None else str(time_period),
            },
        )
        return str(data.get("id", rule_id)) if isinstance(data, dict) else str(rule_id)

    async def gtt_cancel(self, rule_id: str, symbol: str, exchange: str) -> str:
        resolved = await self.resolve(exchange, symbol)
        data = await self._data(
            "gtt_cancel",
            {"id": str(rule_id), "symboltoken": resolved.token, "exchange": str(exchange).upper()},
        )
        return str(data.get("id", rule_id)) if isinstance(data, dict) else str(rule_id)

    async def gtt_details(self, rule_id: str) -> dict[str, Any]:
        data = await self._data("gtt_details", {"id": str(rule_id)})
        if not isinstance(data, dict):
            raise BrokerRejected(f"GTT rule {rule_id} not found", ErrorCode.ORDER_NOT_FOUND)
        return _gtt_rule(data, self._symbol_for)

    async def gtt_list(
        self, statuses: list[str] | None = None, page: int = 1, count: int = 10
    ) -> list[dict[str, Any]]:
        statuses = [s.upper() for s in (statuses or ["FORALL"])]
        bad = [s for s in statuses if s not in GTT_STATUSES]
        if bad:
            raise _invalid(f"unknown GTT status {bad[0]!r}", field="status")
        if page < 1 or not 1 <= count <= 100:
            raise _invalid("page must be >= 1 and count 1-100", field="page")
        rows = await self._list("gtt_list", {"status": statuses, "page": page, "count": count})
        return [_gtt_rule(r, self._symbol_for) for r in rows if isinstance(r, dict)]


def _gtt_rule(row: dict[str, Any], symbol_for: mapping.SymbolFor) -> dict[str, Any]:
    exchange = str(row.get("exchange") or "").upper()
    token = row.get("symboltoken")
    return {
        "id": str(row.get("id") or ""),
        "status": row.get("status"),
        "symbol": symbol_for(
            exchange, str(row.get("tradingsymbol") or ""), None if token is None else str(token)
        ),
        "exchange": exchange,
        "side": row.get("transactiontype"),
        "product_type": row.get("producttype"),
        "price": to_decimal(row.get("price")),
        "trigger_price": to_decimal(row.get("triggerprice")),
        "quantity": to_int(row.get("qty")),
        "disclosed_quantity": to_int(row.get("disclosedqty")),
        "created_at": row.get("createddate"),
        "updated_at": row.get("updateddate"),
        "expires_at": row.get("expirydate"),
        "tradingsymbol": row.get("tradingsymbol"),
    }
