"""Angel One SmartAPI wire protocol: routes, enums, error codes, limits and envelope parsing.

One module shared by our adapter and by the fake server in ``angel_one.fake``, so both
speak exactly the same spellings (taken from ``BROKER_PROTOCOLS.md`` Part 1). Nothing
here performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from trading_backend.domain import ErrorCode, OrderStatus

IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")

REST_ROOT: Final = "https://apiconnect.angelone.in"
FEED_WS_URL: Final = "wss://smartapisocket.angelone.in/smart-stream"
ORDER_WS_URL: Final = "wss://tns.angelone.in/smart-order-update"
SCRIP_MASTER_URL: Final = (
    "https://margincalculator.angelbroking.com/OpenAPI_File/files/OpenAPIScripMaster.json"
)
SCRIP_MASTER_PATH: Final = "/OpenAPI_File/files/OpenAPIScripMaster.json"
FEED_WS_PATH: Final = "/smart-stream"
ORDER_WS_PATH: Final = "/smart-order-update"


@dataclass(frozen=True, slots=True)
class Route:
    """One REST endpoint. ``limit_group`` names the rate-limit bucket it spends from."""

    name: str
    method: str
    path: str
    limit_group: str
    secure: bool = True


_SECURE = "/rest/secure/angelbroking"
ROUTES: Final[dict[str, Route]] = {
    r.name: r
    for r in (
        Route("login", "POST", "/rest/auth/angelbroking/user/v1/loginByPassword", "login", False),
        Route(
            "generate_tokens",
            "POST",
            "/rest/auth/angelbroking/jwt/v1/generateTokens",
            "generate_tokens",
            False,
        ),
        Route("profile", "GET", f"{_SECURE}/user/v1/getProfile", "profile"),
        Route("logout", "POST", f"{_SECURE}/user/v1/logout", "logout"),
        Route("rms", "GET", f"{_SECURE}/user/v1/getRMS", "rms"),
        Route("place_order", "POST", f"{_SECURE}/order/v1/placeOrder", "orders"),
        Route("modify_order", "POST", f"{_SECURE}/order/v1/modifyOrder", "orders"),
        Route("cancel_order", "POST", f"{_SECURE}/order/v1/cancelOrder", "orders"),
        Route("order_book", "GET", f"{_SECURE}/order/v1/getOrderBook", "order_book"),
        Route("trade_book", "GET", f"{_SECURE}/order/v1/getTradeBook", "trade_book"),
        Route(
            "order_details", "GET", f"{_SECURE}/order/v1/details/{{uniqueorderid}}", "order_details"
        ),
        Route("ltp", "POST", f"{_SECURE}/order/v1/getLtpData", "ltp"),
        Route("positions", "GET", f"{_SECURE}/order/v1/getPosition", "positions"),
        Route(
            "convert_position", "POST", f"{_SECURE}/order/v1/convertPosition", "convert_position"
        ),
        Route("holdings", "GET", f"{_SECURE}/portfolio/v1/getHolding", "holdings"),
        Route("all_holdings", "GET", f"{_SECURE}/portfolio/v1/getAllHolding", "holdings"),
        Route("quote", "POST", f"{_SECURE}/market/v1/quote", "quote"),
        Route("candles", "POST", f"{_SECURE}/historical/v1/getCandleData", "candles"),
        Route("oi_data", "POST", f"{_SECURE}/historical/v1/getOIData", "candles"),
        Route("search_scrip", "POST", f"{_SECURE}/order/v1/searchScrip", "search_scrip"),
        Route("gtt_create", "POST", f"/gtt-service{_SECURE}/gtt/v1/createRule", "gtt_write"),
        Route("gtt_modify", "POST", f"/gtt-service{_SECURE}/gtt/v1/modifyRule", "gtt_write"),
        Route("gtt_cancel", "POST", f"/gtt-service{_SECURE}/gtt/v1/cancelRule", "gtt_write"),
        Route("gtt_details", "POST", f"{_SECURE}/gtt/v1/ruleDetails", "gtt_read"),
        Route("gtt_list", "POST", f"{_SECURE}/gtt/v1/ruleList", "gtt_read"),
        Route("margin", "POST", f"{_SECURE}/margin/v1/batch", "margin"),
    )
}

# Paths the real service (or its docs / other SDKs) also answer on: the fake accepts them too.
ALTERNATE_PATHS: Final[dict[str, tuple[str, ...]]] = {
    "gtt_create": (f"{_SECURE}/gtt/v1/createRule",),
    "gtt_modify": (f"{_SECURE}/gtt/v1/modifyRule",),
    "gtt_cancel": (f"{_SECURE}/gtt/v1/cancelRule",),
    "ltp": (f"/order-service{_SECURE}/order/v1/getLtpData",),
    "quote": (f"{_SECURE}/market/v1/quote/",),
}

# (per second, per minute, per hour) per client code; None = no documented window.
RateLimit = tuple[int | None, int | None, int | None]
RATE_LIMITS: Final[dict[str, RateLimit]] = {
    "login": (1, None, None),
    "generate_tokens": (1, None, 1000),
    "profile": (3, None, 1000),
    "logout": (1, None, None),
    "rms": (2, None, None),
    "orders": (9, 500, 1000),  # place + modify + cancel share one budget
    "order_book": (1, None, None),
    "trade_book": (1, None, None),
    "order_details": (10, 500, 5000),
    "ltp": (10, 500, 5000),
    "positions": (1, None, None),
    "convert_position": (10, 500, 5000),
    "holdings": (1, None, None),
    "quote": (10, 500, 5000),
    "candles": (3, 180, 5000),
    "search_scrip": (1, None, None),
    "gtt_write": (9, 500, 5000),
    "gtt_read": (10, 500, 5000),
    "margin": (10, 500, 5000),
}
RATE_LIMIT_TEXT: Final = "Access denied because of exceeding access rate"

# Candle intervals and the widest span (days) one getCandleData request may cover.
CANDLE_INTERVAL_MAX_DAYS: Final[dict[str, int]] = {
    "ONE_MINUTE": 30,
    "THREE_MINUTE": 60,
    "FIVE_MINUTE": 100,
    "TEN_MINUTE": 100,
    "FIFTEEN_MINUTE": 200,
    "THIRTY_MINUTE": 200,
    "ONE_HOUR": 400,
    "ONE_DAY": 2000,
}
CANDLE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M"  # fromdate / todate, IST
ORDER_TIME_FORMAT: Final = "%d-%b-%Y %H:%M:%S"  # updatetime / exchtime, IST

VARIETIES: Final = ("NORMAL", "STOPLOSS", "ROBO", "AMO")
MODIFIABLE_VARIETIES: Final = ("NORMAL", "STOPLOSS", "ROBO")
TRANSACTION_TYPES: Final = ("BUY", "SELL")
EXCHANGES: Final = ("NSE", "BSE", "NFO", "MCX", "BFO", "CDS", "NCDEX")
ORDER_TYPES: Final = ("MARKET", "LIMIT", "STOPLOSS_LIMIT", "STOPLOSS_MARKET")
PRODUCT_TYPES: Final = ("DELIVERY", "CARRYFORWARD", "MARGIN", "INTRADAY", "BO")
DURATIONS: Final = ("DAY", "IOC")
ORDER_TAG_MAX = 19  # "ordertag length should be less than 20 characters" (AB4008)

# Our OrderType <-> Angel ordertype.
ORDER_TYPE_TO_ANGEL: Final = {
    "MARKET": "MARKET",
    "LIMIT": "LIMIT",
    "SL": "STOPLOSS_LIMIT",
    "SL_M": "STOPLOSS_MARKET",
}
ORDER_TYPE_FROM_ANGEL: Final = {v: k for k, v in ORDER_TYPE_TO_ANGEL.items()}

# WebSocket 2.0 exchangeType per exchange segment.
EXCHANGE_TYPES: Final[dict[str, int]] = {
    "NSE": 1,
    "NFO": 2,
    "BSE": 3,
    "BFO": 4,
    "MCX": 5,
    "NCDEX": 7,
    "CDS": 13,
}
EXCHANGE_BY_TYPE: Final[dict[int, str]] = {v: k for k, v in EXCHANGE_TYPES.items()}

# Order statuses (lower case on the wire) -> ours. Partly filled open orders are told apart
# by ``filledshares`` by the mapper, not by the status string.
ORDER_STATUS_MAP: Final[dict[str, OrderStatus]] = {
    "put order req received": OrderStatus.SUBMITTED,
    "validation pending": OrderStatus.SUBMITTED,
    "open pending": OrderStatus.SUBMITTED,
    "open": OrderStatus.OPEN,
    "trigger pending": OrderStatus.OPEN,
    "modify validation pending": OrderStatus.OPEN,
    "modify pending": OrderStatus.OPEN,
    "modified": OrderStatus.OPEN,
    "not modified": OrderStatus.OPEN,
    "cancel pending": OrderStatus.OPEN,
    "after market order req received": OrderStatus.OPEN,
    "modify after market order req received": OrderStatus.OPEN,
    "complete": OrderStatus.FILLED,
    "rejected": OrderStatus.REJECTED,
    "cancelled": OrderStatus.CANCELLED,
    "cancelled after market order": OrderStatus.CANCELLED,
}
TERMINAL_STATUSES: Final = frozenset(
    {"complete", "rejected", "cancelled", "cancelled after market order"}
)

# Order-status WebSocket ``order-status`` codes.
ORDER_WS_CODES: Final[dict[str, str]] = {
    "AB00": "connected",
    "AB01": "open",
    "AB02": "cancelled",
    "AB03": "rejected",
    "AB04": "modified",
    "AB05": "complete",
    "AB06": "after market order req received",
    "AB07": "cancelled after market order",
    "AB08": "modify after market order req received",
    "AB09": "open pending",
    "AB10": "trigger pending",
    "AB11": "modify pending",
}
ORDER_WS_CODE_BY_STATUS: Final[dict[str, str]] = {
    v: k for k, v in ORDER_WS_CODES.items() if k != "AB00"
}

# Error codes that mean "the session is gone": re-login exactly once, then fail.
SESSION_ERRORS: Final = frozenset({"AG8001", "AG8002", "AG8003", "AB1010", "AB1011"})
REFRESH_ERRORS: Final = frozenset({"AB8050", "AB8051"})
# Transient server-side failures: safe to retry for reads, "unknown outcome" for writes.
TRANSIENT_ERRORS: Final = frozenset({"AB1004", "AB2000", "AB2001", "AB9000"})
# Codes that mean "nothing there" on list endpoints: an empty list, not a failure.
EMPTY_RESULT_ERRORS: Final = frozenset({"AB1013", "AB1014", "AB1015", "AB1016"})

ERROR_MESSAGES: Final[dict[str, str]] = {
    "AG8001": "Invalid Token",
    "AG8002": "Token Expired",
    "AG8003": "Token missing",
    "AG8004": "Invalid API Key",
    "AB8050": "Invalid Refresh Token",
    "AB8051": "Refresh Token Expired",
    "AB1000": "Invalid Email Or Password",
    "AB1004": "Something Went Wrong, Please Try After Sometime",
    "AB1005": "User Type Must Be USER",
    "AB1006": "Client Is Block For Trading",
    "AB1007": "AMX Error",
    "AB1008": "Invalid Order Variety",
    "AB1009": "Symbol Not Found",
    "AB1010": "AMX Session Expired",
    "AB1011": "Client not login",
    "AB1012": "Invalid Product Type",
    "AB1013": "Order not found",
    "AB1014": "Trade not found",
    "AB1015": "Holding not found",
    "AB1016": "Position not found",
    "AB1017": "Position conversion failed",
    "AB1050": "Invalid totp",
    "AB2000": "Error not specified",
    "AB2001": "Internal Error, Please try after sometime",
    "AB4008": "ordertag length should be less than 20 characters",
    "AB4018": "Symbol token cannot be empty",
}

# Angel error code -> our error code. Anything not listed maps to INVALID_ORDER for order
# routes and SYSTEM_ERROR elsewhere (decided by the adapter).
ERROR_CODE_MAP: Final[dict[str, ErrorCode]] = {
    "AG8001": ErrorCode.AUTH_ERROR,
    "AG8002": ErrorCode.AUTH_ERROR,
    "AG8003": ErrorCode.AUTH_ERROR,
    "AG8004": ErrorCode.AUTH_ERROR,
    "AB8050": ErrorCode.AUTH_ERROR,
    "AB8051": ErrorCode.AUTH_ERROR,
    "AB1000": ErrorCode.AUTH_ERROR,
    "AB1001": ErrorCode.AUTH_ERROR,
    "AB1002": ErrorCode.AUTH_ERROR,
    "AB1005": ErrorCode.AUTH_ERROR,
    "AB1006": ErrorCode.FORBIDDEN,
    "AB1007": ErrorCode.AUTH_ERROR,
    "AB1010": ErrorCode.AUTH_ERROR,
    "AB1011": ErrorCode.AUTH_ERROR,
    "AB1031": ErrorCode.AUTH_ERROR,
    "AB1032": ErrorCode.AUTH_ERROR,
    "AB1050": ErrorCode.INVALID_TOTP,
    "AB1004": ErrorCode.BROKER_UNAVAILABLE,
    "AB2000": ErrorCode.BROKER_UNAVAILABLE,
    "AB2001": ErrorCode.BROKER_UNAVAILABLE,
    "AB9000": ErrorCode.BROKER_UNAVAILABLE,
    "AB1008": ErrorCode.INVALID_ORDER,
    "AB1009": ErrorCode.INSTRUMENT_NOT_FOUND,
    "AB1012": ErrorCode.INVALID_ORDER,
    "AB1013": ErrorCode.ORDER_NOT_FOUND,
    "AB1017": ErrorCode.INVALID_ORDER,
    "AB1018": ErrorCode.INSTRUMENT_NOT_FOUND,
    "AB2002": ErrorCode.INVALID_ORDER,
    "AB4008": ErrorCode.VALIDATION_ERROR,
    "AB4018": ErrorCode.VALIDATION_ERROR,
}
INSUFFICIENT_FUNDS_HINT: Final = "insufficient funds"  # appears in rejection ``text``

MARKET_OPEN_IST: Final = time(9, 15)
MARKET_CLOSE_IST: Final = time(15, 30)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded SmartAPI reply, whichever of the two JSON dialects it came in.

    ``gateway`` is True for the ``{"success", "errorCode"}`` dialect used for token errors.
    """

    ok: bool
    message: str
    error_code: str
    data: Any
    gateway: bool = False


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def parse_envelope(payload: Any) -> Envelope:
    """Decode a JSON body into an ``Envelope``; raise ``ValueError`` when it is neither
    dialect (the caller then treats the outcome as unknown)."""
    if not isinstance(payload, dict):
        raise ValueError("SmartAPI reply is not a JSON object")
    data = payload.get("data")
    if data == "null":
        data = None
    if "status" in payload:
        return Envelope(
            ok=_truthy(payload["status"]),
            message=str(payload.get("message") or ""),
            error_code=str(payload.get("errorcode") or payload.get("errorCode") or ""),
            data=data,
        )
    if "success" in payload or "errorCode" in payload:
        return Envelope(
            ok=_truthy(payload.get("success", False)),
            message=str(payload.get("message") or ""),
            error_code=str(payload.get("errorCode") or ""),
            data=data,
            gateway=True,
        )
    if "message" in payload:  # bare {"message": "Token missing"}-style bodies
        message = str(payload["message"])
        code = "AG8003" if "missing" in message.lower() else "AG8001"
        return Envelope(ok=False, message=message, error_code=code, data=None, gateway=True)
    raise ValueError("SmartAPI reply has neither 'status' nor 'success'")


def to_decimal(value: Any, default: Decimal = Decimal(0)) -> Decimal:
    """Parse SmartAPI numbers: strings or JSON numbers, ``null``, ``"- 2235.80"``."""
    if value is None or value == "":
        return default
    text = str(value).replace(" ", "").replace(",", "")
    try:
        return Decimal(text)
    except InvalidOperation:
        return default


def to_int(value: Any, default: int = 0) -> int:
    return int(to_decimal(value, Decimal(default)))


def as_list(value: Any) -> list[Any]:
    """Empty collections arrive as ``null`` (or a lone object on some routes)."""
    if value is None or value == "" or value == "null":
        return []
    if isinstance(value, list):
        return value
    return [value]


def next_midnight_ist(now: datetime) -> datetime:
    """The hard expiry of a session created at ``now``: 00:00 IST of the next day."""
    local = now.astimezone(IST)
    return datetime.combine(local.date() + timedelta(days=1), time(0, 0), IST)


def format_price(value: Decimal | None) -> str:
    return "0" if value is None else format(value, "f")
