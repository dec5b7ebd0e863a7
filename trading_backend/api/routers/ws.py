"""The live WebSocket ``/ws``: ticks, bars and the caller's own order updates.

Authenticate with ``?token=<access JWT>`` or ``?api_key=<key>`` (browsers cannot set
headers on a WebSocket), or with a first message ``{"action": "auth", "token": "..."}``.
Then, as JSON messages::

    {"action": "subscribe", "channel": "ticks", "instruments": ["NSE:TCS", "CRYPTO:BTCUSDT"]}
    {"action": "subscribe", "channel": "bars", "instruments": ["NSE:TCS"], "timeframe": "1m"}
    {"action": "subscribe", "channel": "orders"}
    {"action": "subscribe", "channel": "risk"}
    {"action": "unsubscribe", "channel": "ticks", "instruments": ["NSE:TCS"]}
    {"action": "ping"}

The server answers ``{"type": "subscribed" | "unsubscribed" | "pong" | "error", ...}`` and
streams ``{"type": "tick", ...}``, ``{"type": "bar", ...}``, ``{"type": "order", ...}`` and
``{"type": "risk", ...}`` (a trading-state change of the caller, one of the caller's
accounts, or everyone). Order and risk events come through the runtime's event bus, so with
Redis they reach the caller's socket whichever process produced them.
Errors are ``{"type": "error", "error_code": "...", "message": "..."}``; a bad message
never closes the socket, a failed authentication does (code 4401). Each connection has a
bounded queue: when a client reads too slowly the oldest market events are dropped and a
``{"type": "dropped", "count": n}`` notice follows; order and risk updates are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from trading_backend.api.deps import AuthContext, resolve_auth
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Order, Timeframe
from trading_backend.execution.events import RISK, Event  # -- events (issue #7)
from trading_backend.marketdata.hub import HubHandle
from trading_backend.runtime import Runtime
from trading_backend.strategies.base import Subscription, TickView

log = structlog.get_logger(__name__)
router = APIRouter(tags=["live"])

MAX_INSTRUMENTS = 200
MAX_MARKET_EVENTS = 1000
MAX_MESSAGE_BYTES = 16_384


def _num(value: Decimal) -> float:
    return float(value)


def tick_message(tick: TickView) -> dict[str, Any]:
    return {
        "type": "tick",
        "instrument": tick.key,
        "ltp": _num(tick.ltp),
        "bid": _num(tick.bid),
        "ask": _num(tick.ask),
        "volume": tick.volume,
        "timestamp": tick.timestamp.isoformat(),
    }


def bar_message(bar: Bar) -> dict[str, Any]:
    return {
        "type": "bar",
        "instrument": bar.key,
        "timeframe": bar.timeframe.value,
        "start": bar.start.isoformat(),
        "end": bar.end.isoformat(),
        "open": _num(bar.open),
        "high": _num(bar.high),
        "low": _num(bar.low),
        "close": _num(bar.close),
        "volume": bar.volume,
    }


def order_message(order: Order) -> dict[str, Any]:
    return {
        "type": "order",
        "order": {
            "order_id": order.order_id,
            "config_id": order.config_id,
            "symbol": order.symbol,
            "exchange": order.exchange.value,
            "side": order.side.value,
            "order_type": order.order_type.value,
            "quantity": order.quantity,
            "price": _num(order.price) if order.price is not None else None,
            "status": order.status.value,
            "filled_quantity": order.filled_quantity,
            "average_price": _num(order.average_price),
            "updated_at": order.updated_at.isoformat(),
        },
    }


# -- events (issue #7) ----------------------------------------------------------------------
def risk_message(payload: dict[str, Any]) -> dict[str, Any]:
    """A risk-state event (``RiskStateChange.as_payload``) as the socket sends it."""
    return {
        "type": "risk",
        "scope": payload.get("scope"),
        "account": payload.get("account"),
        "old_state": payload.get("old_state"),
        "new_state": payload.get("new_state"),
        "reason": payload.get("reason"),
        "kill_switch": payload.get("kill_switch"),
        "at": payload.get("at"),
    }


def concerns(payload: dict[str, Any], user_id: str) -> bool:
    """Whether a risk event is the user's: their own scope, one of their accounts (the
    event names the owner) or the global scope. Anything else, never."""
    if payload.get("scope") == "global":
        return True
    return payload.get("user_id") == user_id


# -- end events


def _error(code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"type": "error", "error_code": str(code), "message": message}


@dataclass
class _Connection:
    socket: WebSocket
    auth: AuthContext
    market: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_MARKET_EVENTS))
    control: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    handles: dict[tuple[str, str], HubHandle] = field(default_factory=dict)
    unsubscribe_orders: Callable[[], None] | None = None
    unsubscribe_risk: Callable[[], None] | None = None  # -- events (issue #7)

    def push_market(self, message: dict[str, Any]) -> None:
        if len(self.market) == self.market.maxlen:
            self.dropped += 1
        self.market.append(message)
        self.wake.set()

    def push(self, message: dict[str, Any]) -> None:
        self.control.put_nowait(message)
        self.wake.set()


async def _authenticate(socket: WebSocket, runtime: Runtime) -> AuthContext | None:
    token = socket.query_params.get("token")
    api_key = socket.query_params.get("api_key")
    if not token and not api_key:
        try:
            first = json.loads(await asyncio.wait_for(socket.receive_text(), timeout=10))
        except (TimeoutError, ValueError, WebSocketDisconnect):
            return None
        if isinstance(first, dict) and first.get("action") == "auth":
            token, api_key = first.get("token"), first.get("api_key")
    try:
        return await resolve_auth(
            runtime,
            token if isinstance(token, str) else None,
            api_key if isinstance(api_key, str) else None,
            "GET",
            "/ws",
        )
    except DomainError as exc:
        await socket.send_json(_error(exc.code.value, exc.message))
        return None


def _instruments(message: dict[str, Any], runtime: Runtime) -> list[tuple[str, Exchange]]:
    raw = message.get("instruments")
    if not isinstance(raw, list) or not raw or not all(isinstance(i, str) for i in raw):
        raise DomainError(
            'instruments must be a non-empty list like ["NSE:TCS"]', ErrorCode.VALIDATION_ERROR
        )
    parsed = []
    for item in raw:
        exchange, _, symbol = item.upper().partition(":")
        if not symbol:
            exchange, symbol = "NSE", exchange
        try:
            resolved = Exchange(exchange)
        except ValueError:
            raise DomainError(f"unknown exchange in {item!r}", ErrorCode.VALIDATION_ERROR) from None
        if runtime.market_view.get_instrument(symbol, resolved) is None:
            raise DomainError(f"unknown instrument {item!r}", ErrorCode.INSTRUMENT_NOT_FOUND)
        parsed.append((symbol, resolved))
    return parsed


async def _handle(conn: _Connection, runtime: Runtime, message: dict[str, Any]) -> None:
    action, channel = message.get("action"), message.get("channel")
    if action == "ping":
        conn.push({"type": "pong"})
        return
    if action not in ("subscribe", "unsubscribe"):
        raise DomainError(
            "action must be subscribe, unsubscribe or ping", ErrorCode.VALIDATION_ERROR
        )
    if channel == "orders":
        if action == "subscribe" and conn.unsubscribe_orders is None:

            def on_order(order: Order) -> None:
                conn.push(order_message(order))

            conn.unsubscribe_orders = runtime.order_feed.subscribe(conn.auth.user.id, on_order)
        elif action == "unsubscribe" and conn.unsubscribe_orders is not None:
            conn.unsubscribe_orders()
            conn.unsubscribe_orders = None
        conn.push({"type": f"{action}d", "channel": "orders"})
        return
    # -- events (issue #7): the caller's trading-state changes
    if channel == "risk":
        if action == "subscribe" and conn.unsubscribe_risk is None:
            user_id = conn.auth.user.id

            def on_risk(event: Event) -> None:
                if concerns(event.payload, user_id):
                    conn.push(risk_message(event.payload))

            conn.unsubscribe_risk = runtime.events.subscribe(RISK, on_risk)
        elif action == "unsubscribe" and conn.unsubscribe_risk is not None:
            conn.unsubscribe_risk()
            conn.unsubscribe_risk = None
        conn.push({"type": f"{action}d", "channel": "risk"})
        return
    # -- end events
    if channel not in ("ticks", "bars"):
        raise DomainError("channel must be ticks, bars, orders or risk", ErrorCode.VALIDATION_ERROR)
    timeframe = Timeframe.M1
    if channel == "bars":
        try:
            timeframe = Timeframe(message.get("timeframe", "1m"))
        except ValueError:
            raise DomainError(
                f"timeframe must be one of {[t.value for t in Timeframe]}",
                ErrorCode.VALIDATION_ERROR,
            ) from None
    instruments = _instruments(message, runtime)
    stream = channel if channel == "ticks" else f"bars:{timeframe.value}"
    done = []
    for symbol, exchange in instruments:
        key = (stream, f"{exchange.value}:{symbol}")
        if action == "subscribe":
            if key in conn.handles:
                done.append(key[1])
                continue
            if len(conn.handles) >= MAX_INSTRUMENTS:
                raise DomainError(
                    f"at most {MAX_INSTRUMENTS} subscriptions per connection",
                    ErrorCode.VALIDATION_ERROR,
                )
            if channel == "ticks":

                async def on_tick(tick: TickView) -> None:
                    conn.push_market(tick_message(tick))

                conn.handles[key] = await runtime.market_hub.subscribe(
                    Subscription(symbol, exchange, timeframes=(), ticks=True), on_tick=on_tick
                )
            else:

                async def on_bar(bar: Bar) -> None:
                    conn.push_market(bar_message(bar))

                conn.handles[key] = await runtime.market_hub.subscribe(
                    Subscription(symbol, exchange, timeframes=(timeframe,)), on_bar=on_bar
                )
        else:
            handle = conn.handles.pop(key, None)
            if handle is not None:
                await handle.close()
        done.append(key[1])
    reply: dict[str, Any] = {"type": f"{action}d", "channel": channel, "instruments": done}
    if channel == "bars":
        reply["timeframe"] = timeframe.value
    conn.push(reply)


async def _sender(conn: _Connection) -> None:
    while True:
        await conn.wake.wait()
        conn.wake.clear()
        while not conn.control.empty():
            await conn.socket.send_json(conn.control.get_nowait())
        while conn.market:
            await conn.socket.send_json(conn.market.popleft())
            while not conn.control.empty():  # order updates overtake market data
                await conn.socket.send_json(conn.control.get_nowait())
        if conn.dropped:
            count, conn.dropped = conn.dropped, 0
            await conn.socket.send_json({"type": "dropped", "count": count})


@router.websocket("/ws")
async def live(socket: WebSocket) -> None:
    runtime: Runtime = socket.app.state.runtime
    await socket.accept()
    auth = await _authenticate(socket, runtime)
    if auth is None:
        await socket.close(code=4401)
        return
    conn = _Connection(socket=socket, auth=auth)
    conn.push({"type": "welcome", "user_id": auth.user.id})
    sender = asyncio.create_task(_sender(conn))
    try:
        while True:
            text = await socket.receive_text()
            try:
                if len(text) > MAX_MESSAGE_BYTES:
                    raise DomainError("message too large", ErrorCode.VALIDATION_ERROR)
                try:
                    message = json.loads(text)
                except ValueError:
                    raise DomainError(
                        "messages must be JSON objects", ErrorCode.VALIDATION_ERROR
                    ) from None
                if not isinstance(message, dict):
                    raise DomainError("messages must be JSON objects", ErrorCode.VALIDATION_ERROR)
                await _handle(conn, runtime, message)
            except DomainError as exc:
                conn.push(_error(exc.code.value, exc.message))
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        for handle in conn.handles.values():
            await handle.close()
        if conn.unsubscribe_orders is not None:
            conn.unsubscribe_orders()
        if conn.unsubscribe_risk is not None:  # -- events (issue #7)
            conn.unsubscribe_risk()
