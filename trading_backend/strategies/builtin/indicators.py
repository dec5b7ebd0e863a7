"""Small numpy indicators shared by the built-in strategies.

Inputs are sequences of numbers (Decimals are converted through ``float``); every function
returns numpy arrays (or floats) aligned to the input, with ``nan`` where the window is not
yet full. Standard deviations are population ones (``ddof=0``), as Bollinger defined them.
Indicators only decide *whether* to trade; order prices stay ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def as_array(values: Sequence[float | Decimal | int]) -> Array:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _windows(values: Array, period: int) -> Array:
    return np.lib.stride_tricks.sliding_window_view(values, period)


def sma(values: Sequence[float | Decimal | int], period: int) -> Array:
    """Simple moving average."""
    _check(period)
    data = as_array(values)
    out = np.full(data.shape, np.nan)
    if len(data) >= period:
        out[period - 1 :] = _windows(data, period).mean(axis=1)
    return out


def ema(values: Sequence[float | Decimal | int], period: int) -> Array:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the first SMA."""
    _check(period)
    data = as_array(values)
    out = np.full(data.shape, np.nan)
    if len(data) < period:
        return out
    alpha = 2.0 / (period + 1)
    out[period - 1] = data[:period].mean()
    for i in range(period, len(data)):
        out[i] = alpha * data[i] + (1 - alpha) * out[i - 1]
    return out


def stddev(values: Sequence[float | Decimal | int], period: int) -> Array:
    """Rolling population standard deviation."""
    _check(period)
    data = as_array(values)
    out = np.full(data.shape, np.nan)
    if len(data) >= period:
        out[period - 1 :] = _windows(data, period).std(axis=1)
    return out


def zscore(values: Sequence[float | Decimal | int], period: int) -> Array:
    """(value - rolling mean) / rolling std; 0 where the std is 0."""
    data = as_array(values)
    mean = sma(data, period)
    std = stddev(data, period)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(std > 0, (data - mean) / std, np.where(np.isnan(std), np.nan, 0.0))
    return out


def bollinger(
    values: Sequence[float | Decimal | int], period: int, width: float
) -> tuple[Array, Array, Array]:
    """(lower, middle, upper) bands: the SMA ± ``width`` population standard deviations."""
    middle = sma(values, period)
    std = stddev(values, period)
    return middle - width * std, middle, middle + width * std


def true_range(
    highs: Sequence[float | Decimal | int],
    lows: Sequence[float | Decimal | int],
    closes: Sequence[float | Decimal | int],
) -> Array:
    """True range; the first bar (no previous close) is its high - low."""
    high, low, close = as_array(highs), as_array(lows), as_array(closes)
    out = high - low
    if len(close) > 1:
        prev = close[:-1]
        out[1:] = np.maximum.reduce(
            [high[1:] - low[1:], np.abs(high[1:] - prev), np.abs(low[1:] - prev)]
        )
    return out


def atr(
    highs: Sequence[float | Decimal | int],
    lows: Sequence[float | Decimal | int],
    closes: Sequence[float | Decimal | int],
    period: int,
) -> Array:
    """Average true range: the simple average of the last ``period`` true ranges."""
    return sma(true_range(highs, lows, closes), period)


def _check(period: int) -> None:
    if period < 1:
        raise ValueError(f"period must be at least 1, got {period}")
