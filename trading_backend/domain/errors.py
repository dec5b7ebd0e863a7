"""Error codes are part of the public contract (API, Python API, CLI): never rename one."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    AUTH_ERROR = "AUTH_ERROR"
    INVALID_ORDER = "INVALID_ORDER"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    CONFIG_NOT_FOUND = "CONFIG_NOT_FOUND"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    INSTRUMENT_NOT_FOUND = "INSTRUMENT_NOT_FOUND"
    ORDER_NOT_MODIFIABLE = "ORDER_NOT_MODIFIABLE"
    ORDER_NOT_CANCELLABLE = "ORDER_NOT_CANCELLABLE"
    RISK_REJECTED = "RISK_REJECTED"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    BROKER_NOT_SUPPORTED = "BROKER_NOT_SUPPORTED"
    RATE_LIMITED = "RATE_LIMITED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    CONFLICT = "CONFLICT"
    NOT_FOUND = "NOT_FOUND"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    MAX_RETRIES_EXHAUSTED = "MAX_RETRIES_EXHAUSTED"
    TIMEOUT = "TIMEOUT"
    TOTP_REQUIRED = "TOTP_REQUIRED"
    INVALID_TOTP = "INVALID_TOTP"
    TOTP_NOT_ENABLED = "TOTP_NOT_ENABLED"
    ACCOUNT_LOCKED = "ACCOUNT_LOCKED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    API_KEY_INVALID = "API_KEY_INVALID"
    REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
    # -- dbdown (issue #7) --
    # PostgreSQL cannot be reached right now: nothing was done, the request may be retried.
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    # -- end dbdown


class DomainError(Exception):
    """An expected, explainable failure carrying a machine-readable code."""

    code: ErrorCode = ErrorCode.SYSTEM_ERROR

    def __init__(self, message: str, code: ErrorCode | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, object] = dict(details)


class InvalidOrder(DomainError):
    code = ErrorCode.INVALID_ORDER


class IllegalTransition(DomainError):
    """An order was asked to move to a state its current state cannot reach."""

    code = ErrorCode.INVALID_ORDER
