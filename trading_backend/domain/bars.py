"""Bars (candles) and their timeframes.

A bar covers ``[start, end)`` in UTC. Intraday bars of an exchange with a session (NSE
09:15-15:30 IST) are aligned to the session open, so the 1h bars are 09:15, 10:15, ... and
the last one is cut short at the close (15:15-15:30); a ``1d`` bar is the session. Crypto
trades around the clock and its bars align to UTC midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from trading_backend.domain.enums import Exchange


class Timeframe(StrEnum):
    M1 = "1m"
    M3 = "3m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    D1 = "1d"

    @property
    def duration(self) -> timedelta:
        return _DURATIONS[self]


_DURATIONS = {
    Timeframe.M1: timedelta(minutes=1),
    Timeframe.M3: timedelta(minutes=3),
    Timeframe.M5: timedelta(minutes=5),
    Timeframe.M15: timedelta(minutes=15),
    Timeframe.M30: timedelta(minutes=30),
    Timeframe.H1: timedelta(hours=1),
    Timeframe.D1: timedelta(days=1),
}


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    exchange: Exchange
    timeframe: Timeframe
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    complete: bool = True

    @property
    def key(self) -> str:
        return f"{self.exchange.value}:{self.symbol}"
