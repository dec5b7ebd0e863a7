"""The fake's HTTP surface: every SmartAPI REST route at the host root, the scrip master,
and the two WebSockets.

One catch-all endpoint runs the same pipeline the real gateway appears to run, so faults
and checks compose predictably: record -> latency -> X-PrivateKey -> session/JWT ->
injected 403 / real rate limiter -> injected 5xx -> held request (timeout) -> injected
business error -> the route itself -> held reply / empty body. GET query strings are
ignored (the official SDK sends a JSON string there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from trading_backend.brokers.angel_one.fake import market
from trading_backend.brokers.angel_one.fake.auth import Session, strip_bearer, verify_totp
from trading_backend.brokers.angel_one.fake.core import FakeSmartAPI, RecordedRequest
from trading_backend.brokers.angel_one.fake.errors import INVALID_PARAMETERS, FakeAPIError
from trading_backend.brokers.angel_one.fake.order_ws import SERVER_SEND_KEY, order_ws_endpoint
from trading_backend.brokers.angel_one.fake.state import Account, OrderEvent
from trading_backend.brokers.angel_one.protocol import (
    ALTERNATE_PATHS,
    FEED_WS_PATH,
    ORDER_WS_PATH,
    RATE_LIMIT_TEXT,
    ROUTES,
    SCRIP_MASTER_PATH,
)

DETAILS_PREFIX = ROUTES["order_details"].path.split("{", 1)[0]
SECRET_HEADERS = frozenset({"authorization", "x-privatekey", "x-api-key", "x-feed-token"})

Handler = Callable[["Call"], Any]


class Call:
    """One authenticated request as the route handlers see it."""

    def __init__(
        self, fake: FakeSmartAPI, body: Any, account: Account | None, session: Session | None
    ) -> None:
        self.fake = fake
        self.body: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
        self.account_or_none = account
        self.session = session
        self.path_param = ""
        self.events: list[OrderEvent] = []

    @property
    def account(self) -> Account:
        assert self.account_or_none is not None
        return self.account_or_none


def ok(data: Any) -> dict[str, Any]:
    return {"status": True, "message": "SUCCESS", "errorcode": "", "data": data}


# ---------------------------------------------------------------------- auth routes
def login(call: Call) -> Any:
    fake, body = call.fake, call.body
    account = fake.engine.accounts.get(str(body.get("clientcode") or "").strip())
    if account is None or str(body.get("password") or "") != account.pin:
        raise FakeAPIError("AB1007", "Invalid client code or MPIN")
    if call.account_or_none is not account:  # X-PrivateKey of another client
        raise FakeAPIError("AB1007", "Invalid API Key")
    if not verify_totp(account.totp_secret, str(body.get("totp") or ""), fake.clock()):
        raise FakeAPIError("AB1050")
    session = fake.sessions.create(account.client_code, account.api_key, fake.clock())
    data = {
        "jwtToken": session.jwt,
        "refreshToken": session.refresh,
        "feedToken": session.feed,
    }
    if "state" in body:
        data["state"] = body["state"]
    return data


def generate_tokens(call: Call) -> Any:
    fake = call.fake
    session = fake.sessions.by_refresh(str(call.body.get("refreshToken") or ""))
    if session is None or session.revoked:
        raise FakeAPIError("AB8050")
    if not session.alive(fake.clock()):
        raise FakeAPIError("AB8051")
    fake.sessions.refresh(session)
    return {"jwtToken": session.jwt, "refreshToken": session.refresh, "feedToken": session.feed}


def profile(call: Call) -> Any:
    a = call.account
    return {
        "clientcode": a.client_code,
        "name": a.name,
        "email": "",
        "mobileno": "",
        "exchanges": ["nse_fo", "nse_cm", "cde_fo", "ncx_fo", "bse_fo", "bse_cm", "mcx_fo"],
        "products": ["MARGIN", "MIS", "NRML", "CNC", "CO", "BO"],
        "lastlogintime": "",
        "broker": "ONLINE",
    }


def logout(call: Call) -> Any:
    assert call.session is not None
    call.session.revoked = True
    return None


# ---------------------------------------------------------------------- trading routes
def rms(call: Call) -> Any:
    return call.fake.engine.rms_row(call.account)


def place_order(call: Call) -> Any:
    order, call.events = call.fake.engine.place(call.account, call.body)
    return {
        "script": order.inst.symbol,
        "orderid": order.orderid,
        "uniqueorderid": order.uniqueorderid,
    }


def modify_order(call: Call) -> Any:
    order, call.events = call.fake.engine.modify(call.account, call.body)
    return {"orderid": order.orderid, "uniqueorderid": order.uniqueorderid}


def cancel_order(call: Call) -> Any:
    order, call.events = call.fake.engine.cancel(call.account, call.body)
    return {"orderid": order.orderid, "uniqueorderid": order.uniqueorderid}


def order_book(call: Call) -> Any:
    return [o.row() for o in call.account.orders.values()] or None


def trade_book(call: Call) -> Any:
    return [t.row() for t in call.account.trades] or None


def order_details(call: Call) -> Any:
    order = call.account.by_unique(call.path_param)
    if order is None:
        raise FakeAPIError("AB1013")
    return order.row()


def positions(call: Call) -> Any:
    engine = call.fake.engine
    rows = [p.row(engine.quote(p.inst)) for p in call.account.positions.values()]
    return rows or None


def convert_position(call: Call) -> Any:
    body, account, engine = call.body, call.account, call.fake.engine
    exchange = str(body.get("exchange") or "").upper()
    old = str(body.get("oldproducttype") or "").upper()
    new = str(body.get("newproducttype") or "").upper()
    symbol = str(body.get("tradingsymbol") or "")
    token = str(body.get("symboltoken") or "")
    side = str(body.get("transactiontype") or "").upper()
    try:
        qty = int(str(body.get("quantity") or "0"))
    except ValueError:
        raise FakeAPIError(INVALID_PARAMETERS, "Invalid quantity") from None
    pos = next(
        (
            p
            for (e, t, prod), p in account.positions.items()
            if e == exchange and prod == old and (t == token or p.inst.symbol == symbol)
        ),
        None,
    )
    if pos is None:
        raise FakeAPIError("AB1016")
    net = pos.netqty
    if qty <= 0 or (side == "BUY" and net < qty) or (side == "SELL" and -net < qty) or old == new:
        raise FakeAPIError("AB1017")
    target = engine._position(account, pos.inst, new)
    if side == "BUY":
        avg = pos.buyavg
        pos.buyqty, pos.buyamount = pos.buyqty - qty, pos.buyamount - avg * qty
        target.buyqty, target.buyamount = target.buyqty + qty, target.buyamount + avg * qty
    else:
        avg = pos.sellavg
        pos.sellqty, pos.sellamount = pos.sellqty - qty, pos.sellamount - avg * qty
        target.sellqty, target.sellamount = target.sellqty + qty, target.sellamount + avg * qty
    return None


def holdings(call: Call) -> Any:
    engine = call.fake.engine
    rows = [h.row(engine.quote(h.inst)) for h in call.account.holdings.values()]
    return rows or None


def all_holdings(call: Call) -> Any:
    engine = call.fake.engine
    rows = [h.row(engine.quote(h.inst)) for h in call.account.holdings.values()]
    value = sum((r["ltp"] * r["quantity"] for r in rows), 0.0)
    invested = sum((r["averageprice"] * r["quantity"] for r in rows), 0.0)
    pnl = value - invested
    return {
        "holdings": rows or None,
        "totalholding": {
            "totalholdingvalue": round(value, 2),
            "totalinvvalue": round(invested, 2),
            "totalprofitandloss": round(pnl, 2),
            "totalpnlpercentage": round(pnl / invested * 100, 2) if invested else 0,
        },
    }


def ltp(call: Call) -> Any:
    return market.ltp_data(call.fake.engine, call.body)


def quote(call: Call) -> Any:
    return market.quote(call.fake.engine, call.body, call.fake.seed)


def candles(call: Call) -> Any:
    return market.candles(call.fake.engine, call.body, call.fake.seed)


def oi_data(call: Call) -> Any:
    engine, body = call.fake.engine, call.body
    inst = engine.instrument(str(body.get("exchange") or ""), str(body.get("symboltoken") or ""))
    if not inst.is_derivative:
        return None
    bars = market.candles(engine, body, call.fake.seed) or []
    return [{"time": b[0], "oi": 100_000 + (b[5] % 50_000) * inst.lotsize} for b in bars] or None


def search_scrip(call: Call) -> Any:
    return market.search_scrip(call.fake.engine, call.body)


def margin(call: Call) -> Any:
    return market.margin_batch(call.fake.engine, call.body)


def gtt_create(call: Call) -> Any:
    return {"id": str(call.fake.engine.gtt_create(call.account, call.body).id)}


def gtt_modify(call: Call) -> Any:
    return {"id": str(call.fake.engine.gtt_modify(call.account, call.body).id)}


def gtt_cancel(call: Call) -> Any:
    return {"id": str(call.fake.engine.gtt_cancel(call.account, call.body).id)}


def gtt_details(call: Call) -> Any:
    return call.fake.engine.gtt_rule(call.account, call.body.get("id")).row()


def gtt_list(call: Call) -> Any:
    body = call.body
    statuses = body.get("status")
    if not isinstance(statuses, list) or not statuses:
        raise FakeAPIError("AB9004", "Invalid Status Array Size")
    wanted = {str(s).upper() for s in statuses}
    try:
        page, count = int(body.get("page") or 1), int(body.get("count") or 10)
    except (TypeError, ValueError):
        raise FakeAPIError("AB9017", "Invalid Page Value") from None
    if page < 1:
        raise FakeAPIError("AB9017", "Invalid Page Value")
    if count < 1:
        raise FakeAPIError("AB9018", "Invalid Count Value")
    rules = [
        r.row()
        for r in sorted(call.account.gtt.values(), key=lambda r: r.id, reverse=True)
        if "FORALL" in wanted or r.status in wanted
    ]
    return rules[(page - 1) * count : page * count] or None


HANDLERS: dict[str, Handler] = {
    "login": login,
    "generate_tokens": generate_tokens,
    "profile": profile,
    "logout": logout,
    "rms": rms,
    "place_order": place_order,
    "modify_order": modify_order,
    "cancel_order": cancel_order,
    "order_book": order_book,
    "trade_book": trade_book,
    "order_details": order_details,
    "ltp": ltp,
    "positions": positions,
    "convert_position": convert_position,
    "holdings": holdings,
    "all_holdings": all_holdings,
    "quote": quote,
    "candles": candles,
    "oi_data": oi_data,
    "search_scrip": search_scrip,
    "gtt_create": gtt_create,
    "gtt_modify": gtt_modify,
    "gtt_cancel": gtt_cancel,
    "gtt_details": gtt_details,
    "gtt_list": gtt_list,
    "margin": margin,
}
assert set(HANDLERS) == set(ROUTES), "every protocol route needs a fake handler"


def _route_table() -> dict[str, str]:
    table = {r.path: name for name, r in ROUTES.items() if name != "order_details"}
    for name, paths in ALTERNATE_PATHS.items():
        for path in paths:
            table[path] = name
    return table


PATHS = _route_table()


def _resolve(path: str) -> tuple[str | None, str]:
    if path.startswith(DETAILS_PREFIX) and len(path) > len(DETAILS_PREFIX):
        return "order_details", path[len(DETAILS_PREFIX) :].strip("/")
    return PATHS.get(path), ""


def _gateway(code: str) -> JSONResponse:
    return JSONResponse(FakeAPIError(code, gateway=True).body())


class RestEndpoint:
    """The catch-all ASGI endpoint (see the module docstring for the pipeline)."""

    def __init__(self, fake: FakeSmartAPI) -> None:
        self.fake = fake
        self._scrip_bytes: bytes | None = None

    async def __call__(self, request: Request) -> Response:
        fake, path = self.fake, request.url.path
        if path == SCRIP_MASTER_PATH and request.method == "GET":
            if self._scrip_bytes is None:
                self._scrip_bytes = json.dumps(fake.scrip_master).encode()
            return Response(self._scrip_bytes, media_type="application/json")
        name, param = _resolve(path)
        raw = await request.body()
        body = _parse_body(raw) if request.method in ("POST", "PUT") else {}
        headers = {k: ("***" if k in SECRET_HEADERS else v) for k, v in request.headers.items()}
        record = RecordedRequest(
            route=name or "unknown",
            method=request.method,
            path=path,
            client_code=None,
            body=body,
            at=fake.clock(),
            headers=headers,
        )
        fake.requests.append(record)
        if name is None:
            record.outcome = "not_found"
            return JSONResponse(
                {"status": False, "message": "Not Found", "errorcode": "", "data": None},
                status_code=404,
            )
        route = ROUTES[name]
        if request.method != route.method:
            record.outcome = "method_not_allowed"
            return JSONResponse(
                {"status": False, "message": "Method Not Allowed", "errorcode": "", "data": None},
                status_code=405,
            )
        response = await self._handle(request, record, name, param, body)
        return response

    async def _handle(
        self, request: Request, record: RecordedRequest, name: str, param: str, body: Any
    ) -> Response:
        fake = self.fake
        delay = fake.faults.delay_for(name)
        if delay:
            await fake.hold(delay)
        # 1. API key
        api_key = request.headers.get("x-privatekey", "").strip()
        key_owner = fake.account_by_api_key(api_key) if api_key else None
        if key_owner is None:
            record.outcome = "AG8004"
            return _gateway("AG8004")
        # 2. who is calling
        session: Session | None = None
        account: Account | None = key_owner
        if ROUTES[name].secure:
            auth = request.headers.get("authorization")
            if not auth or not strip_bearer(auth):
                record.outcome = "AG8003"
                return _gateway("AG8003")
            session = fake.session_for_jwt(auth)
            if session is None or session.api_key != api_key:
                record.outcome = "AG8001"
                return _gateway("AG8001")
            account = fake.account(session.client_code)
        elif name == "login":
            record.client_code = str(body.get("clientcode") or "") if isinstance(body, dict) else ""
        elif name == "generate_tokens" and isinstance(body, dict):
            owner = fake.sessions.by_refresh(str(body.get("refreshToken") or ""))
            record.client_code = owner.client_code if owner else None
        if account is not None and record.client_code is None:
            record.client_code = account.client_code
        limit_key = record.client_code or api_key
        # 3. rate limiting
        if fake.faults.take("rate", name) or (
            fake.faults.rate_limiting
            and not fake.limiter.allow(limit_key, ROUTES[name].limit_group)
        ):
            record.outcome = "rate_limited"
            return PlainTextResponse(RATE_LIMIT_TEXT, status_code=403)
        # 4. injected gateway failures
        fault = fake.faults.take("http", name)
        if fault is not None:
            record.outcome = f"http_{fault.status}"
            return Response(
                f"<html><body><h1>{fault.status} Server Error</h1></body></html>",
                status_code=fault.status,
                media_type="text/html",
            )
        timeout = fake.faults.take("timeout", name)
        if timeout is not None and not timeout.after_effect:
            record.outcome = "timeout"
            await fake.hold(timeout.hold)
            return PlainTextResponse("Gateway Timeout", status_code=504)
        error = fake.faults.take("error", name)
        if error is not None:
            record.outcome = error.code
            return JSONResponse(FakeAPIError(error.code, error.message or None).body())
        if body is _BAD_JSON:
            record.outcome = INVALID_PARAMETERS
            return JSONResponse(
                FakeAPIError(INVALID_PARAMETERS, "Request body is not valid JSON").body(),
                status_code=400,
            )
        # 5. the route itself
        call = Call(fake, body, account, session)
        call.path_param = param
        try:
            with fake.lock:
                data = HANDLERS[name](call)
        except FakeAPIError as exc:
            record.outcome = exc.code
            return JSONResponse(exc.body(), status_code=exc.http_status)
        fake.emit_order_events(call.events)
        record.outcome = "ok"
        # 6. reply faults that happen after the side effect
        if timeout is not None:
            record.outcome = "timeout_after_effect"
            await fake.hold(timeout.hold)
            return PlainTextResponse("Gateway Timeout", status_code=504)
        if fake.faults.take("empty", name):
            record.outcome = "empty"
            return Response(b"", media_type="application/json")
        return JSONResponse(ok(data))


class _BadJson:
    pass


_BAD_JSON: Any = _BadJson()


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return _BAD_JSON
    return value if isinstance(value, dict) else _BAD_JSON


def create_app(fake: FakeSmartAPI) -> Starlette:
    """The ASGI app serving ``fake`` at the host root (as the SDK requires)."""
    endpoint = RestEndpoint(fake)

    async def order_ws(websocket: Any) -> None:
        await order_ws_endpoint(fake, websocket)

    routes: list[Any] = [WebSocketRoute(ORDER_WS_PATH, order_ws)]
    if fake.feed is not None:
        routes.append(WebSocketRoute(FEED_WS_PATH, fake.feed.endpoint))

    # else: FEED_WS_PATH is the mount point for fake/feed_ws.py (Helper FEED) once delivered.
    async def rest(request: Request) -> Response:
        return await endpoint(request)

    routes.append(Route("/{path:path}", rest, methods=["GET", "POST", "PUT", "DELETE"]))
    return Starlette(routes=routes, middleware=[Middleware(KeepServerSend)])


class KeepServerSend:
    """Remember the server's own ``send`` for WebSocket scopes (Starlette wraps it further
    in), so ``faults.drop_websockets()`` can reach the connection's transport and drop it
    without a close frame, as a network failure would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND_KEY] = send
        await self.app(scope, receive, send)
