"""Every error leaves the API as JSON ``{error_code, message, details?}``: bad input is a 4xx,
and nothing ever shows a stack trace."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from trading_backend.domain import DomainError, ErrorCode
from trading_backend.storage.database import is_database_unavailable

log = structlog.get_logger(__name__)

STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INSUFFICIENT_SCOPE: 403,
    ErrorCode.REGISTRATION_CLOSED: 403,
    ErrorCode.TOTP_REQUIRED: 401,
    ErrorCode.INVALID_TOTP: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.API_KEY_INVALID: 401,
    ErrorCode.ACCOUNT_LOCKED: 429,
    ErrorCode.TOTP_NOT_ENABLED: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFIG_NOT_FOUND: 404,
    ErrorCode.ORDER_NOT_FOUND: 404,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.INSTRUMENT_NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.ORDER_NOT_MODIFIABLE: 409,
    ErrorCode.ORDER_NOT_CANCELLABLE: 409,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.INVALID_ORDER: 422,
    ErrorCode.INSUFFICIENT_FUNDS: 422,
    ErrorCode.RISK_REJECTED: 422,
    ErrorCode.AUTH_ERROR: 422,  # the broker refused the config's credentials
    ErrorCode.BROKER_NOT_SUPPORTED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BROKER_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.MAX_RETRIES_EXHAUSTED: 503,
    ErrorCode.SYSTEM_ERROR: 500,
    ErrorCode.DATABASE_UNAVAILABLE: 503,  # -- dbdown (issue #7)
}

# -- dbdown (issue #7): the database is away
# What a client is told to wait before retrying: about one connect timeout, by which time a
# restarted PostgreSQL usually accepts connections again.
DATABASE_RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE_MESSAGE = (
    "the database is temporarily unavailable; retry shortly. An order sent with a"
    " client_order_id can be sent again with the same one: it is never placed twice"
)


def database_unavailable_response() -> JSONResponse:
    """503 DATABASE_UNAVAILABLE with Retry-After.

    Usually the request failed before its transaction committed, so nothing of it exists.
    But the database can go away between an order's commit and the response (the commit
    landed, reading the order back failed): then the order is accepted and will be carried
    out although the client saw a 503. That is why the message points at
    ``client_order_id``: the order service returns the existing order for a client order id
    it has seen (a unique constraint settles races), so a client that retries with the same
    id never places an order twice; one that sends no id gets a fresh id on each attempt."""
    return JSONResponse(
        error_body(
            ErrorCode.DATABASE_UNAVAILABLE.value,
            DATABASE_UNAVAILABLE_MESSAGE,
            retry_after=DATABASE_RETRY_AFTER_SECONDS,
        ),
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


# -- end dbdown


class ApiError(DomainError):
    """Raised by routers to answer with a given code and optional extra payload."""

    def __init__(self, message: str, code: ErrorCode, **extra: Any) -> None:
        super().__init__(message, code)
        self.extra = extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error_code": code, "message": message, **extra}


def status_for(code: ErrorCode) -> int:
    return STATUS_BY_CODE.get(code, 400)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        extra = getattr(exc, "extra", {}) or {}
        if exc.details and "details" not in extra:
            extra = {**extra, "details": _jsonable(exc.details)}
        headers: dict[str, str] | None = (
            {"WWW-Authenticate": "Bearer"} if exc.code is ErrorCode.NOT_AUTHENTICATED else None
        )
        if "retry_after" in exc.details:
            headers = {**(headers or {}), "Retry-After": str(exc.details["retry_after"])}
        return JSONResponse(
            error_body(exc.code.value, exc.message, **extra),
            status_code=status_for(exc.code),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return JSONResponse(
            error_body(
                ErrorCode.VALIDATION_ERROR.value, f"invalid request: {summary}", details=errors
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: ErrorCode.NOT_AUTHENTICATED,
            403: ErrorCode.FORBIDDEN,
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.VALIDATION_ERROR,
            409: ErrorCode.CONFLICT,
            429: ErrorCode.RATE_LIMITED,
        }.get(
            exc.status_code,
            ErrorCode.VALIDATION_ERROR if exc.status_code < 500 else ErrorCode.SYSTEM_ERROR,
        )
        message = exc.detail if isinstance(exc.detail, str) else code.value.lower()
        return JSONResponse(
            error_body(code.value, message), status_code=exc.status_code, headers=exc.headers
        )

    # -- dbdown (issue #7): an unreachable database is a 503 the client can retry, not a 500
    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if is_database_unavailable(exc):
            # The type names say what failed; the message may carry host names: not logged.
            log.warning(
                "database_unavailable",
                error=type(exc).__name__,
                cause=type(getattr(exc, "orig", None) or exc.__cause__ or exc).__name__,
                path=request.url.path,
            )
            return database_unavailable_response()
        return await _unexpected(request, exc)

    # -- end dbdown

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=type(exc).__name__)
        return JSONResponse(
            error_body(ErrorCode.SYSTEM_ERROR.value, "internal error; see the server log"),
            status_code=500,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
