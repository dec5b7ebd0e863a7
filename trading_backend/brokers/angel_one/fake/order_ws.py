"""The order-status WebSocket (``/smart-order-update``, §1.13).

Handshake: ``Authorization: Bearer <jwt>`` (or the bare JWT, as the SDK may pass it). An
unknown token is refused with HTTP 401, an expired/revoked one with 403, a 4th connection
of the same client code with 429 (all with an ``x-error-message`` header). After accepting,
the server sends the AB00 greeting with an all-empty ``orderData``, then one JSON text
message per order event (pushed by ``FakeSmartAPI``); a text ``ping`` gets a text ``pong``
(control pings are answered by the server library).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from trading_backend.brokers.angel_one.fake.auth import strip_bearer

if TYPE_CHECKING:
    from trading_backend.brokers.angel_one.fake.core import FakeSmartAPI

MAX_CONNECTIONS = 3
SERVER_SEND_KEY = "fake_smartapi.server_send"  # scope key set by app.KeepServerSend


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the upgrade with a real HTTP status (or a policy close if unsupported)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            Response(message, status_code=status, headers={"x-error-message": message})
        )
    else:  # pragma: no cover - uvicorn supports denial responses
        await websocket.close(code=1008, reason=message)


async def order_ws_endpoint(fake: FakeSmartAPI, websocket: WebSocket) -> None:
    from trading_backend.brokers.angel_one.fake.core import empty_order_data, order_ws_message

    auth = websocket.headers.get("authorization") or websocket.query_params.get("token")
    token = strip_bearer(auth)
    session = fake.sessions.by_jwt(token) if token else None
    if session is None:
        await _deny(websocket, 401, "Invalid Header - Invalid Auth token")
        return
    if not session.alive(fake.clock()):
        await _deny(websocket, 403, "Token Expired")
        return
    client = session.client_code
    if not fake.register_order_socket(client, websocket):
        await _deny(websocket, 429, "Too Many Requests - connection limit reached")
        return
    try:
        await websocket.accept()
        await websocket.send_json(order_ws_message(client, "AB00", empty_order_data()))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text", "").strip().lower() == "ping":
                await websocket.send_text("pong")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        fake.unregister_order_socket(client, websocket)


async def abort(websocket: Any) -> None:
    """Drop a socket without a close frame (the client sees 1006), falling back to 1011.

    ASGI has no "abort" message, so this reaches the server protocol's transport through the
    ``send`` callable uvicorn handed to the app (a bound method of that protocol)."""
    send = getattr(websocket, "scope", {}).get(SERVER_SEND_KEY)
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        return
    with contextlib.suppress(Exception):
        await websocket.close(code=1011)
