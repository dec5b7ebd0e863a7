"""Broker configs, sessions, orders, trades, positions, balance and market data.

Every route works on the caller's own rows only: another user's config or order id is a
404, exactly like an id that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from trading_backend.api.deps import AdminDep, RuntimeDep, UserDep, client_ip
from trading_backend.api.errors import ApiError, error_body
from trading_backend.api.schemas import (
    AddSessionIn,
    BalanceOut,
    ConfigIn,
    ConfigOut,
    ErrorOut,
    MarketDataOut,
    MessageOut,
    ModifyOrderIn,
    OrderDetailOut,
    OrderOut,
    PlaceOrderIn,
    PositionsOut,
    SessionOut,
    TradeOut,
    numbers,
)
from trading_backend.domain import BrokerOrder, DomainError, ErrorCode, Order, OrderStatus
from trading_backend.execution.order_service import OrderResult
from trading_backend.execution.queue import Priority
from trading_backend.execution.views import order_to_dict, trade_to_dict
from trading_backend.storage.repositories import UserScopedReader, order_from_row

router = APIRouter(prefix="/api/v1/brokers", tags=["brokers"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}
ConfigQuery = Annotated[str, Query(min_length=1, max_length=64, description="broker config id")]
WaitQuery = Annotated[
    float | None,
    Query(
        ge=0, le=30, description="seconds to wait for the broker's answer (default from settings)"
    ),
]


# -- configs -----------------------------------------------------------------------------
@router.post("/configs", status_code=201, response_model=ConfigOut, responses=ERRORS)
async def create_config(
    body: ConfigIn, user: UserDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    """Create a broker account config. Credentials are encrypted at rest and never returned."""
    return await runtime.accounts.create_config(
        user.id,
        body.broker,
        body.name,
        credentials=body.credentials,
        settings=body.settings,
        config_id=body.config_id,
        ip=client_ip(request),
    )


@router.get("/configs", response_model=list[ConfigOut])
async def list_configs(user: UserDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    return await runtime.accounts.list_configs(user.id)


@router.delete("/configs/{config_id}", response_model=MessageOut, responses=ERRORS)
async def delete_config(
    config_id: str, user: UserDep, runtime: RuntimeDep, request: Request
) -> MessageOut:
    await runtime.accounts.delete_config(user.id, config_id, ip=client_ip(request))
    if runtime.sessions.find(user.id, config_id) is not None:
        await runtime.sessions.close(user.id, config_id)
    return MessageOut(message=f"broker config {config_id} deleted")


# -- sessions (the seed's add/remove) ---------------------------------------------------------
@router.post("/add", response_model=SessionOut, responses=ERRORS)
async def add_broker(body: AddSessionIn, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Open (or return) the broker session for one of your configs."""
    session = await runtime.sessions.open(user.id, body.config_id)
    return session.to_dict()


@router.delete("/remove/{config_id}", response_model=MessageOut, responses=ERRORS)
async def remove_broker(config_id: str, user: UserDep, runtime: RuntimeDep) -> MessageOut:
    # Sessions are keyed by (user, config): another user's config is "no session" too.
    await runtime.sessions.close(user.id, config_id)
    return MessageOut(message=f"broker session for {config_id} removed")


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(user: UserDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    return [s.to_dict() for s in runtime.sessions.sessions(user.id)]


async def _check_config(reader: UserScopedReader, config_id: str | None) -> None:
    """A filter on a config that is not the caller's is a 404, like any other use of it."""
    if config_id is not None and await reader.config(config_id) is None:
        raise DomainError(f"broker config {config_id!r} not found", ErrorCode.CONFIG_NOT_FOUND)


# -- orders ------------------------------------------------------------------------------
def _order_response(result: OrderResult, created_status: int) -> JSONResponse:
    order: Order = result.order
    body = numbers(order_to_dict(order))
    payload = OrderOut.model_validate(body).model_dump(mode="json")
    if order.status is OrderStatus.REJECTED:
        return JSONResponse(
            error_body(
                order.error_code or ErrorCode.INVALID_ORDER.value,
                order.message or "order rejected",
                order=payload,
            ),
            status_code=422 if order.error_code != ErrorCode.BROKER_UNAVAILABLE.value else 503,
        )
    if result.outcome is not None and not result.outcome.ok and result.outcome.error_code:
        return JSONResponse(
            error_body(
                result.outcome.error_code,
                result.outcome.message or "request refused",
                order=payload,
            ),
            status_code=409,
        )
    if not result.created:
        return JSONResponse(payload, status_code=200)
    status = 202 if result.outcome is None else created_status
    return JSONResponse(payload, status_code=status)


@router.post(
    "/orders/place",
    status_code=201,
    response_model=OrderOut,
    responses={
        200: {"model": OrderOut, "description": "client_order_id seen before: the first order"},
        202: {"model": OrderOut, "description": "accepted, broker answer still pending"},
        **ERRORS,
    },
)
async def place_order(
    body: PlaceOrderIn,
    user: UserDep,
    runtime: RuntimeDep,
    request: Request,
    wait: WaitQuery = None,
) -> Response:
    """Place an order: validated, risk-checked, persisted, queued and sent by a worker.
    Waits up to ``wait`` seconds for the broker's answer."""
    request_order = BrokerOrder(**body.order.model_dump())
    result = await runtime.orders.place(
        user.id,
        body.config_id,
        request_order,
        priority=Priority[body.priority],
        wait=runtime.settings.order_wait_seconds if wait is None else wait,
        ip=client_ip(request),
        intentional=body.intentional,
    )
    return _order_response(result, 201)


@router.get("/orders", response_model=list[OrderOut])
async def list_orders(
    user: UserDep,
    runtime: RuntimeDep,
    config_id: Annotated[str | None, Query(max_length=64)] = None,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Order book, newest first."""
    async with runtime.db() as session:
        reader = UserScopedReader(session, user.id)
        await _check_config(reader, config_id)
        rows = await reader.orders(config_id, status.value if status else None, limit, offset)
        return [numbers(order_to_dict(order_from_row(r))) for r in rows]


@router.get("/orders/{order_id}", response_model=OrderDetailOut, responses=ERRORS)
async def get_order(order_id: str, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    order = await runtime.orders.get(user.id, order_id)
    async with runtime.db() as session:
        events = await UserScopedReader(session, user.id).events(order_id)
    body = numbers(order_to_dict(order))
    body["events"] = [
        {
            "event_type": e.event_type,
            "from_status": e.from_status,
            "to_status": e.to_status,
            "data": e.data or {},
            "correlation_id": e.correlation_id,
            "created_at": e.created_at,
        }
        for e in events
    ]
    return body


@router.put(
    "/orders/{order_id}", response_model=OrderOut, responses={409: {"model": ErrorOut}, **ERRORS}
)
async def modify_order(
    order_id: str,
    body: ModifyOrderIn,
    user: UserDep,
    runtime: RuntimeDep,
    request: Request,
    wait: WaitQuery = None,
) -> Response:
    result = await runtime.orders.modify(
        user.id,
        order_id,
        quantity=body.quantity,
        price=body.price,
        trigger_price=body.trigger_price,
        order_type=body.order_type,
        wait=runtime.settings.order_wait_seconds if wait is None else wait,
        ip=client_ip(request),
    )
    return _order_response(result, 200)


@router.delete(
    "/orders/{order_id}", response_model=OrderOut, responses={409: {"model": ErrorOut}, **ERRORS}
)
async def cancel_order(
    order_id: str,
    user: UserDep,
    runtime: RuntimeDep,
    request: Request,
    wait: WaitQuery = None,
) -> Response:
    result = await runtime.orders.cancel(
        user.id,
        order_id,
        wait=runtime.settings.order_wait_seconds if wait is None else wait,
        ip=client_ip(request),
    )
    return _order_response(result, 200)


@router.get("/trades", response_model=list[TradeOut])
async def list_trades(
    user: UserDep,
    runtime: RuntimeDep,
    config_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Trade book (executions), newest first."""
    async with runtime.db() as session:
        reader = UserScopedReader(session, user.id)
        await _check_config(reader, config_id)
        rows = await reader.trades(config_id, limit, offset)
        return [numbers(trade_to_dict(r)) for r in rows]


# -- portfolio and market data ---------------------------------------------------------------
@router.get("/positions", response_model=PositionsOut, responses=ERRORS)
async def positions(config_id: ConfigQuery, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Net positions from the broker (the source of truth) with live P&L."""
    session = await runtime.sessions.open(user.id, config_id)
    return {"config_id": config_id, "positions": numbers(await session.broker.get_positions())}


@router.get("/balance", response_model=BalanceOut, responses=ERRORS)
async def balance(config_id: ConfigQuery, user: UserDep, runtime: RuntimeDep) -> dict[str, Any]:
    session = await runtime.sessions.open(user.id, config_id)
    return {"config_id": config_id, **numbers(await session.broker.get_balance())}


@router.get("/market-data/{symbol}", response_model=MarketDataOut, responses=ERRORS)
async def market_data(
    symbol: str,
    config_id: ConfigQuery,
    user: UserDep,
    runtime: RuntimeDep,
    exchange: Annotated[str, Query(max_length=8)] = "NSE",
) -> dict[str, Any]:
    session = await runtime.sessions.open(user.id, config_id)
    try:
        data = await session.broker.get_market_data(symbol, exchange)
    except KeyError:
        raise DomainError(
            f"no instrument {symbol!r} on {exchange}", ErrorCode.INSTRUMENT_NOT_FOUND
        ) from None
    return numbers(data)


# -- admin --------------------------------------------------------------------------------
@router.get("/admin/status", responses={403: {"model": ErrorOut}})
async def admin_status(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    """System-wide session status (admins only; no user's secrets)."""
    status = runtime.sessions.system_status(runtime.background_tasks)
    status["queue"] = await runtime.queue.depth()
    status["registered_users"] = len(await runtime.accounts.list_users())
    return status


__all__ = ["ApiError", "router"]
