"""Deterministic synthetic bars for the backtest tests.

Prices are multiples of 0.25, exact in binary floating point, so backtrader's float
averages order exactly like our Decimal ones (a tie is a tie on both sides)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np

from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.domain.calendar import IST

GRID = 4


def nse_day_starts(count: int, first: date = date(2022, 1, 3)) -> list[datetime]:
    """Session starts (09:15 IST, in UTC) of ``count`` consecutive weekdays."""
    starts: list[datetime] = []
    day = first
    while len(starts) < count:
        if day.weekday() < 5:
            starts.append(datetime(day.year, day.month, day.day, 9, 15, tzinfo=IST).astimezone(UTC))
        day += timedelta(days=1)
    return starts


def daily_bars(
    count: int = 600,
    *,
    symbol: str = "INFY",
    exchange: Exchange = Exchange.NSE,
    seed: int = 11,
    start_price: int = 1000,
    volume: int = 100_000,
) -> list[Bar]:
    """``count`` NSE daily bars (the session window) of a geometric random walk."""
    rng = np.random.default_rng(seed)
    closes = np.maximum(
        np.round(start_price * np.exp(rng.normal(0, 0.015, count).cumsum()) * GRID), GRID
    ).astype(int)
    opens = np.concatenate([[start_price * GRID], closes[:-1]])
    opens = np.maximum(opens + np.round(rng.normal(0, 2, count)).astype(int), 1)
    highs = np.maximum(opens, closes) + np.abs(np.round(rng.normal(0, 6, count))).astype(int)
    lows = np.maximum(
        np.minimum(opens, closes) - np.abs(np.round(rng.normal(0, 6, count))).astype(int), 1
    )
    bars = []
    for start, o, h, lo, c in zip(nse_day_starts(count), opens, highs, lows, closes, strict=True):
        bars.append(
            Bar(
                symbol,
                exchange,
                Timeframe.D1,
                start,
                start + timedelta(hours=6, minutes=15),
                Decimal(int(o)) / GRID,
                Decimal(int(h)) / GRID,
                Decimal(int(lo)) / GRID,
                Decimal(int(c)) / GRID,
                volume,
            )
        )
    return bars


def frame(bars: list[Bar]):
    import pandas as pd

    return pd.DataFrame(
        {
            "open": [float(b.open) for b in bars],
            "high": [float(b.high) for b in bars],
            "low": [float(b.low) for b in bars],
            "close": [float(b.close) for b in bars],
            "volume": [float(b.volume) for b in bars],
        },
        index=pd.DatetimeIndex([b.start.replace(tzinfo=None) for b in bars]),
    )
