"""Synthetic historical candles for the paper broker.

Why synthetic: the paper broker has no data feed, yet charts, backtests and the candle
cache need history that looks plausible, works offline and never changes between calls
(a cached bar and a freshly generated one must agree). So history is a pure function of
``(market seed, instrument key, session day)`` and the instrument's spec; it does not
depend on the requested range, on the order of requests or on the live simulated market.

Model:

* A daily level: the log price's deviation from the spec's price follows a mean-reverting
  (Ornstein-Uhlenbeck) walk, one step per calendar day from ``HISTORY_EPOCH``, with the
  spec's annual volatility and a ``LEVEL_HALF_LIFE_DAYS`` half-life. Mean reversion keeps
  decades of history near today's price level (a pure random walk would drift to
  absurd prices), so the latest history also sits near the live market's starting price.
* Inside a session, 1-minute bars follow a Brownian bridge from the day's level to the
  next calendar day's, seeded from the session's local date: a session opens where the
  previous day's closed, except after a weekend, whose move shows as a gap on Monday.
* Each minute's high and low extend beyond its open and close by a random excursion;
  every price is snapped to the instrument's tick (never below one tick), so
  ``low <= open, close <= high`` holds exactly. Volume is the spec's daily volume spread
  evenly over the session's minutes with lognormal noise (0 for reference instruments).
* Larger timeframes are the 1-minute bars aggregated over the session-aligned windows of
  ``trading_backend.marketdata.bars`` (first open, max high, min low, last close, summed
  volume): ``resample`` of the 1-minute history gives exactly the 5-minute history.
* Bars exist only inside sessions (holidays are not modelled: they are trading days),
  from the first session of ``HISTORY_EPOCH`` on, and only once complete: a bar whose end
  is after ``now`` is never returned.

Each instrument's history is independent: a future's history does not track its index's.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from itertools import islice

import numpy as np
import numpy.typing as npt

from trading_backend.domain.bars import Bar, Timeframe
from trading_backend.domain.instruments import Instrument
from trading_backend.marketdata.bars import SESSION_HOURS, Session, sessions, windows

__all__ = [
    "HISTORY_EPOCH",
    "LEVEL_HALF_LIFE_DAYS",
    "MAX_HISTORY_BARS",
    "HistorySpec",
    "synthetic_bars",
]

MAX_HISTORY_BARS = 20_000  # per request, like a real broker's historical-data API
HISTORY_EPOCH = date(2000, 1, 1)  # no history before this (local) session day
LEVEL_HALF_LIFE_DAYS = 120.0  # mean reversion of the daily level, calendar days
_EXCURSION = 0.5  # high/low excursion beyond open/close, in 1-minute standard deviations
_VOLUME_SIGMA = 0.5
_LEVEL_STREAM = 1  # seed-sequence tags: the daily levels and the intraday paths never
_DAY_STREAM = 2  # share random numbers
_LEVEL_BLOCK = 4096  # daily levels are computed in blocks so the cache is reused
_FAR = datetime(9999, 12, 30, tzinfo=UTC)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class HistorySpec:
    """What generating one instrument's history needs (from the market's ``InstrumentSpec``)."""

    seed: int
    instrument: Instrument
    price: Decimal  # the level the history reverts to (the spec's initial price)
    annual_volatility: float
    daily_volume: int


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _session_day(spec: HistorySpec, session: Session) -> date:
    hours = SESSION_HOURS[spec.instrument.exchange]
    zone = UTC if hours is None else hours[2]
    return session.open.astimezone(zone).date()


@lru_cache(maxsize=64)
def _levels(seed: int, key: str, volatility: float, count: int) -> FloatArray:
    """Log deviations from the spec price for days ``0 .. count`` after the epoch.

    Depends on ``count`` only through its length: a longer array starts with the shorter
    one, because the day-``n`` step is the ``n``-th draw of one stream.
    """
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), _LEVEL_STREAM])
    shocks = rng.standard_normal(count) * (volatility / math.sqrt(365.0))
    phi = 0.5 ** (1.0 / LEVEL_HALF_LIFE_DAYS)
    levels = np.empty(count + 1)
    level = 0.0
    levels[0] = 0.0
    for n, shock in enumerate(shocks.tolist(), start=1):
        level = phi * level + shock
        levels[n] = level
    return levels


def _day_levels(spec: HistorySpec, day: int) -> tuple[float, float]:
    """The log deviations at the start of ``day`` and of the day after."""
    count = (day // _LEVEL_BLOCK + 1) * _LEVEL_BLOCK
    levels = _levels(spec.seed, spec.instrument.key, spec.annual_volatility, count)
    return float(levels[day]), float(levels[day + 1])


def _minutes(
    spec: HistorySpec, session: Session
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """One session's 1-minute bars as arrays: open, high, low, close (in ticks), volume."""
    day = (_session_day(spec, session) - HISTORY_EPOCH).days
    count = int(session.duration.total_seconds()) // 60
    start_level, end_level = _day_levels(spec, day)
    rng = np.random.default_rng(
        [spec.seed, zlib.crc32(spec.instrument.key.encode()), _DAY_STREAM, day]
    )
    z_path, z_high, z_low, z_volume = rng.standard_normal((4, count))
    days_per_year = 365.0 if SESSION_HOURS[spec.instrument.exchange] is None else 252.0
    sigma = spec.annual_volatility / math.sqrt(days_per_year * count)
    walk = np.concatenate(([0.0], np.cumsum(z_path * sigma)))
    share = np.arange(count + 1) / count
    bridge = walk - share * walk[-1]
    path = float(spec.price) * np.exp(start_level + share * (end_level - start_level) + bridge)
    opens, closes = path[:-1], path[1:]
    highs = np.maximum(opens, closes) * np.exp(np.abs(z_high) * sigma * _EXCURSION)
    lows = np.minimum(opens, closes) * np.exp(-np.abs(z_low) * sigma * _EXCURSION)
    tick = float(spec.instrument.tick_size)
    # Rounding is monotonic, so the snapped prices keep the raw prices' ordering; the
    # max/min below only guard it against float surprises.
    o, h, lo, c = (
        np.maximum(np.rint(p / tick), 1).astype(np.int64) for p in (opens, highs, lows, closes)
    )
    h = np.maximum(h, np.maximum(o, c))
    lo = np.minimum(lo, np.minimum(o, c))
    mean = spec.daily_volume / count
    noise = np.exp(_VOLUME_SIGMA * z_volume - 0.5 * _VOLUME_SIGMA**2)
    volume = np.maximum(np.rint(mean * noise), 0).astype(np.int64)
    return o, h, lo, c, volume


def _session_bars(
    spec: HistorySpec, session: Session, timeframe: Timeframe, wanted: set[datetime]
) -> Iterator[Bar]:
    """The ``timeframe`` bars of one session whose start is in ``wanted``."""
    o, h, lo, c, volume = _minutes(spec, session)
    count = len(o)
    step = count if timeframe is Timeframe.D1 else int(timeframe.duration.total_seconds()) // 60
    starts = np.arange(0, count, step)
    highs = np.maximum.reduceat(h, starts)
    lows = np.minimum.reduceat(lo, starts)
    volumes = np.add.reduceat(volume, starts)
    tick = spec.instrument.tick_size
    instrument = spec.instrument
    for i, first in enumerate(starts.tolist()):
        begin = session.open + timedelta(minutes=first)
        if begin not in wanted:
            continue
        last = min(first + step, count)
        yield Bar(
            symbol=instrument.symbol,
            exchange=instrument.exchange,
            timeframe=timeframe,
            start=begin,
            end=session.open + timedelta(minutes=last),
            open=Decimal(int(o[first])) * tick,
            high=Decimal(int(highs[i])) * tick,
            low=Decimal(int(lows[i])) * tick,
            close=Decimal(int(c[last - 1])) * tick,
            volume=int(volumes[i]),
        )


def synthetic_bars(
    spec: HistorySpec,
    timeframe: Timeframe | str,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    max_bars: int = MAX_HISTORY_BARS,
) -> list[Bar]:
    """The complete ``timeframe`` bars starting in ``[start, end)``, oldest first.

    Raises ``ValueError`` when ``start`` is not before ``end`` or when more than
    ``max_bars`` bars would be returned (ask for a shorter range). Naive times are UTC.
    """
    timeframe = Timeframe(timeframe)
    start, end, now = _utc(start), _utc(end), _utc(now)
    if start >= end:
        raise ValueError(f"start {start.isoformat()} must be before end {end.isoformat()}")
    exchange = spec.instrument.exchange
    first_session = next(
        sessions(exchange, datetime.combine(HISTORY_EPOCH, datetime.min.time(), UTC), _FAR),
    )
    start = max(start, first_session.open)
    horizon = min(end, now)
    if start >= horizon:
        return []
    complete = (w for w in windows(exchange, timeframe, start, horizon) if w[1] <= now)
    chosen = list(islice(complete, max_bars + 1))
    if len(chosen) > max_bars:
        raise ValueError(
            f"at most {max_bars} {timeframe.value} bars per request; ask for a shorter range"
        )
    if not chosen:
        return []
    wanted = {w[0] for w in chosen}
    bars: list[Bar] = []
    for session in sessions(exchange, chosen[0][0], chosen[-1][1]):
        bars.extend(_session_bars(spec, session, timeframe, wanted))
    return bars
