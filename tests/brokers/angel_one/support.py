"""Constants and small helpers shared by the Angel One tests (fake server, adapter, feed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from trading_backend.brokers.angel_one.fake.auth import totp_code

CLIENT_CODE = "A123456"
PIN = "1234"
TOTP_SECRET = "JBSWY3DPEHPK3PXP"
API_KEY = "test-api-key"

# A second user, for multi-user isolation tests.
OTHER_CLIENT_CODE = "B765432"
OTHER_PIN = "9876"
OTHER_TOTP_SECRET = "KRSXG5CTMVRXEZLU"
OTHER_API_KEY = "other-api-key"

SBIN = ("NSE", "3045")
RELIANCE = ("NSE", "2885")


class Clock:
    """A settable, aware-UTC clock for the fake (and for TOTP codes computed against it)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 11, 25, 5, 0, 0, tzinfo=UTC)  # 10:30 IST, a Wednesday

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def totp(secret: str = TOTP_SECRET, at: datetime | None = None) -> str:
    """The TOTP code a user's authenticator shows at ``at`` (default: wall clock).

    Computed with pyotp, minus its >= 112-bit secret check (the shared test secret is 80 bits)."""
    return totp_code(secret, at or datetime.now(UTC))


def headers(jwt: str | None = None, api_key: str = API_KEY) -> dict[str, str]:
    """The headers the official SDK sends (§1.3)."""
    result = {
        "Content-type": "application/json",
        "Accept": "application/json",
        "X-UserType": "USER",
        "X-SourceID": "WEB",
        "X-ClientLocalIP": "127.0.0.1",
        "X-ClientPublicIP": "106.193.147.98",
        "X-MACAddress": "aa:bb:cc:dd:ee:ff",
        "X-PrivateKey": api_key,
    }
    if jwt:
        result["Authorization"] = f"Bearer {jwt}"
    return result


def order_body(**overrides: Any) -> dict[str, Any]:
    """A valid placeOrder body for SBIN-EQ (MARKET, INTRADAY, 1 share)."""
    body: dict[str, Any] = {
        "variety": "NORMAL",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "transactiontype": "BUY",
        "exchange": "NSE",
        "ordertype": "MARKET",
        "producttype": "INTRADAY",
        "duration": "DAY",
        "price": "0",
        "squareoff": "0",
        "stoploss": "0",
        "quantity": "1",
    }
    body.update(overrides)
    return body
