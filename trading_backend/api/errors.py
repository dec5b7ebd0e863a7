"""Every error leaves the API as JSON ``{error_code, message, details?}``: bad input is a 4xx,
and nothing ever shows a stack trace."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from trading_backend.domain import DomainError, ErrorCode

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
}


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
