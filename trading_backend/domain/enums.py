"""Enumerations shared by every layer. String-valued so they serialise as themselves."""

from __future__ import annotations

from enum import StrEnum


class Exchange(StrEnum):
    NSE = "NSE"
    BSE = "BSE"
    NFO = "NFO"
    MCX = "MCX"
    CDS = "CDS"
    BFO = "BFO"
    NCDEX = "NCDEX"  # agricultural commodity derivatives (Angel One lists them)
    CRYPTO = "CRYPTO"


class InstrumentType(StrEnum):
    EQ = "EQ"
    FUT = "FUT"
    CE = "CE"
    PE = "PE"
    SPOT = "SPOT"
    INDEX = "INDEX"  # reference only: an index has a price but cannot be traded


class OrderSide(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is OrderSide.BUY else -1

    @property
    def opposite(self) -> OrderSide:
        return OrderSide.SELL if self is OrderSide.BUY else OrderSide.BUY


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    SL = "SL"  # stop-loss limit: becomes a LIMIT at ``price`` once ``trigger_price`` trades
    SL_M = "SL_M"  # stop-loss market: becomes a MARKET once ``trigger_price`` trades

    @classmethod
    def _missing_(cls, value: object) -> OrderType | None:
        # Accept the exchange spellings "SL-M" and "SLM" as well as our "SL_M".
        if isinstance(value, str) and value.upper().replace("-", "_") in ("SL_M", "SLM"):
            return cls.SL_M
        return None


class ProductType(StrEnum):
    DELIVERY = "DELIVERY"  # cash and carry: full value, held overnight
    INTRADAY = "INTRADAY"  # leveraged, squared off the same day
    MARGIN = "MARGIN"  # leveraged equity carried with margin funding
    CARRYFORWARD = "CARRYFORWARD"  # F&O normal (NRML): held to expiry


class Validity(StrEnum):
    DAY = "DAY"
    IOC = "IOC"


class OrderStatus(StrEnum):
    PENDING = "PENDING"  # accepted and persisted, waiting in the queue
    SUBMITTED = "SUBMITTED"  # handed to the broker, acknowledgement not yet seen
    OPEN = "OPEN"  # acknowledged by the broker, working
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = (
        "UNKNOWN"  # the broker call's fate is unknown (timeout, crash): reconcile, never resend
    )

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_working(self) -> bool:
        """True while the order can still trade at the broker."""
        return self in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


_FINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
