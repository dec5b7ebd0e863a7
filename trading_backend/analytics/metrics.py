"""Performance metrics shared by backtests and live portfolio analytics.

Pure functions, no I/O. Money stays ``Decimal``; ratios are floats and ``None`` when
undefined. The return-based statistics follow empyrical (see ``returns.py`` and
docs/analytics.md, where every formula is written out): returns are simple daily
returns of the equity curve's daily closes, annualised with ``trading_days_per_year``
(252 for Indian exchanges, 365 for crypto, see :func:`trading_days_for`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any

import numpy as np

from trading_backend.analytics import returns as r
from trading_backend.analytics.returns import Returns
from trading_backend.analytics.trades import (
    LONG,
    SHORT,
    RoundTrip,
    TradeStats,
    round_trips,
    trade_stats,
)
from trading_backend.domain import Exchange, Fill
from trading_backend.domain.calendar import IST
from trading_backend.domain.money import ZERO

__all__ = [
    "LONG",
    "SHORT",
    "EquityPoint",
    "PerformanceReport",
    "RoundTrip",
    "TradeStats",
    "anchored_daily_equity",
    "compute_report",
    "daily_equity",
    "daily_returns",
    "day_tz_for",
    "exposure_from_fills",
    "round_trips",
    "trade_stats",
    "trading_days_for",
]


@dataclass(frozen=True, slots=True)
class EquityPoint:
    timestamp: datetime  # tz-aware UTC
    equity: Decimal  # cash + marked-to-market positions, after charges


def trading_days_for(exchange: Exchange) -> int:
    """Periods per year: crypto trades every day, Indian exchanges about 252 days."""
    return 365 if exchange is Exchange.CRYPTO else 252


def day_tz_for(exchange: Exchange) -> tzinfo:
    """The zone whose calendar day is a trading day: IST for Indian exchanges, UTC for crypto
    (the same split as the DAY-order expiry calendar in ``domain/calendar.py``)."""
    return UTC if exchange is Exchange.CRYPTO else IST


def _sorted(points: Sequence[EquityPoint]) -> list[EquityPoint]:
    for point in points:
        if point.timestamp.tzinfo is None:
            raise ValueError("equity timestamps must be timezone-aware")
    return sorted(points, key=lambda p: p.timestamp)


def daily_equity(points: Sequence[EquityPoint], tz: tzinfo) -> list[tuple[date, Decimal]]:
    """The last equity of each local calendar day in ``tz``, oldest day first."""
    days: dict[date, Decimal] = {}
    for point in _sorted(points):
        days[point.timestamp.astimezone(tz).date()] = point.equity
    return list(days.items())


def anchored_daily_equity(points: Sequence[EquityPoint], tz: tzinfo) -> list[tuple[date, Decimal]]:
    """The curve's opening equity followed by each day's close: the series returns come from.

    Without the opening value the first day's gain or loss would be lost (a one-day
    backtest would have no return at all). When the opening point is the only point of
    its day it *is* that day's close and is not repeated, so no spurious 0% day appears.
    """
    ordered = _sorted(points)
    closes = daily_equity(ordered, tz)
    if not ordered:
        return closes
    first_day = ordered[0].timestamp.astimezone(tz).date()
    alone = len(ordered) == 1 or ordered[1].timestamp.astimezone(tz).date() != first_day
    return closes if alone else [(first_day, ordered[0].equity), *closes]


def daily_returns(daily: Sequence[tuple[date, Decimal]]) -> Returns:
    """Simple returns e[i] / e[i-1] - 1 between consecutive daily equities, as float64.

    Computed in Decimal and converted once. A non-positive base has no return.
    """
    values = [equity for _, equity in daily]
    out = np.empty(max(len(values) - 1, 0), dtype=np.float64)
    for i in range(1, len(values)):
        if values[i - 1] <= 0:
            raise ValueError("equity must stay above zero for returns to be defined")
        out[i - 1] = float(values[i] / values[i - 1] - 1)
    return out


def exposure_from_fills(fills: Sequence[Fill], start: datetime, end: datetime) -> float | None:
    """Share of the time from ``start`` to ``end`` with any position open, from the fills.

    Positions are netted per (exchange, symbol, product); fills before ``start`` set the
    position held at ``start``.
    """
    span = (end - start).total_seconds()
    if span <= 0:
        return None
    net: dict[tuple[str, str, str], int] = {}
    open_since: datetime | None = None
    exposed = 0.0
    for fill in sorted(fills, key=lambda f: f.timestamp):
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        net[key] = net.get(key, 0) + fill.quantity * fill.side.sign
        was_open = open_since is not None
        is_open = any(net.values())
        at = min(max(fill.timestamp, start), end)
        if is_open and not was_open:
            open_since = at
        elif was_open and not is_open:
            assert open_since is not None
            exposed += (at - open_since).total_seconds()
            open_since = None
    if open_since is not None:
        exposed += (end - open_since).total_seconds()
    return exposed / span


@dataclass(frozen=True)
class PerformanceReport:
    """Every metric of one equity curve and its fills. ``to_dict`` is JSON-ready."""

    # The curve
    start: datetime | None
    end: datetime | None
    start_equity: Decimal | None
    end_equity: Decimal | None
    net_profit: Decimal | None  # end - start equity
    periods: int  # number of daily returns
    trading_days_per_year: int
    risk_free_rate: float  # annual
    # Return-based (empyrical conventions)
    total_return: float | None
    cagr: float | None
    annual_volatility: float | None
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    max_drawdown: float | None  # <= 0, a fraction of the running peak
    max_drawdown_duration_days: int | None  # peak to recovery, or to the end if not recovered
    max_drawdown_duration_periods: int | None
    max_drawdown_recovered: bool | None
    best_day: float | None
    best_day_date: date | None
    worst_day: float | None
    worst_day_date: date | None
    # Trades (closed round trips, net of charges)
    trades: int
    winning_trades: int
    losing_trades: int
    win_rate: float | None
    profit_factor: float | None
    expectancy: Decimal | None
    expectancy_ratio: float | None
    average_trade: Decimal | None
    average_win: Decimal | None
    average_loss: Decimal | None
    largest_win: Decimal | None
    largest_loss: Decimal | None
    trades_gross_pnl: Decimal
    trades_net_pnl: Decimal
    # Activity
    exposure: float | None  # share of time (or bars) with an open position
    turnover: float | None  # traded value / average daily equity
    traded_value: Decimal
    total_charges: Decimal  # of every fill, closed or still open

    def to_dict(self) -> dict[str, Any]:
        """Decimals as strings, dates as ISO text, and never NaN or an infinity."""
        return {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"unexpected report value {value!r}")


@dataclass(frozen=True, slots=True)
class _Drawdown:
    depth: float | None
    days: int | None
    periods: int | None
    recovered: bool | None


def _drawdown(daily: Sequence[tuple[date, Decimal]], returns: Returns) -> _Drawdown:
    """Depth from the returns (empyrical's number); its episode found exactly in Decimal."""
    depth = r.max_drawdown(returns)
    if depth is None:
        return _Drawdown(None, None, None, None)
    values = [equity for _, equity in daily]
    peak_index, trough_index, deepest = 0, 0, ZERO
    running = 0
    for i, value in enumerate(values):
        if value >= values[running]:
            running = i
        drop = value / values[running] - 1
        if drop < deepest:
            deepest, peak_index, trough_index = drop, running, i
    if deepest == 0:
        return _Drawdown(depth, 0, 0, True)
    peak = values[peak_index]
    recovery = next((i for i in range(trough_index, len(values)) if values[i] >= peak), None)
    end_index = recovery if recovery is not None else len(values) - 1
    return _Drawdown(
        depth,
        (daily[end_index][0] - daily[peak_index][0]).days,
        end_index - peak_index,
        recovery is not None,
    )


def compute_report(
    equity: Sequence[EquityPoint],
    fills: Sequence[Fill],
    *,
    trading_days_per_year: int,
    day_tz: tzinfo,
    risk_free_rate: float = 0.0,
    exposure_fraction: float | None = None,
) -> PerformanceReport:
    """All metrics of an equity curve and the fills behind it.

    ``trading_days_per_year`` annualises (252 Indian markets, 365 crypto);
    ``day_tz`` decides which calendar day a point belongs to; ``risk_free_rate`` is
    annual and enters as (1+rf)^(1/N)-1 per day (Sharpe's risk-free rate and Sortino's
    required return); ``exposure_fraction`` is used as given when the caller knows it
    (e.g. bars with a position / all bars), else it is measured from the fills.
    """
    if trading_days_per_year <= 0:
        raise ValueError("trading_days_per_year must be positive")
    daily_rf = r.daily_risk_free(risk_free_rate, trading_days_per_year)
    if exposure_fraction is not None and not 0.0 <= exposure_fraction <= 1.0:
        raise ValueError("exposure_fraction must be between 0 and 1")
    points = _sorted(equity)
    daily = anchored_daily_equity(points, day_tz)
    # A curve that touches zero or below has no returns; money figures still stand.
    defined = all(value > 0 for _, value in daily[:-1])
    rets = daily_returns(daily) if defined else np.empty(0, dtype=np.float64)
    n = trading_days_per_year
    stats = trade_stats(round_trips(fills))
    drawdown = _drawdown(daily, rets) if defined else _Drawdown(None, None, None, None)
    start_equity = points[0].equity if points else None
    end_equity = points[-1].equity if points else None
    traded_value = sum((f.price * f.quantity for f in fills), ZERO)
    average_equity = sum((v for _, v in daily), ZERO) / len(daily) if daily else ZERO
    best = int(np.argmax(rets)) if len(rets) else None
    worst = int(np.argmin(rets)) if len(rets) else None
    if exposure_fraction is None and len(points) > 1:
        exposure_fraction = exposure_from_fills(fills, points[0].timestamp, points[-1].timestamp)
    return PerformanceReport(
        start=points[0].timestamp if points else None,
        end=points[-1].timestamp if points else None,
        start_equity=start_equity,
        end_equity=end_equity,
        net_profit=end_equity - start_equity
        if start_equity is not None and end_equity is not None
        else None,
        periods=len(rets),
        trading_days_per_year=n,
        risk_free_rate=risk_free_rate,
        total_return=(
            float(end_equity / start_equity - 1)
            if start_equity is not None and end_equity is not None and start_equity > 0
            else None
        ),
        cagr=r.annual_return(rets, n),
        annual_volatility=r.annual_volatility(rets, n),
        sharpe=r.sharpe_ratio(rets, n, daily_rf),
        sortino=r.sortino_ratio(rets, n, daily_rf),
        calmar=r.calmar_ratio(rets, n),
        max_drawdown=drawdown.depth,
        max_drawdown_duration_days=drawdown.days,
        max_drawdown_duration_periods=drawdown.periods,
        max_drawdown_recovered=drawdown.recovered,
        best_day=float(rets[best]) if best is not None else None,
        best_day_date=daily[best + 1][0] if best is not None else None,
        worst_day=float(rets[worst]) if worst is not None else None,
        worst_day_date=daily[worst + 1][0] if worst is not None else None,
        trades=stats.trades,
        winning_trades=stats.winning_trades,
        losing_trades=stats.losing_trades,
        win_rate=stats.win_rate,
        profit_factor=stats.profit_factor,
        expectancy=stats.expectancy,
        expectancy_ratio=stats.expectancy_ratio,
        average_trade=stats.average_trade,
        average_win=stats.average_win,
        average_loss=stats.average_loss,
        largest_win=stats.largest_win,
        largest_loss=stats.largest_loss,
        trades_gross_pnl=stats.gross_pnl,
        trades_net_pnl=stats.net_pnl,
        exposure=exposure_fraction,
        turnover=float(traded_value / average_equity) if average_equity > 0 else None,
        traded_value=traded_value,
        total_charges=sum((f.charges for f in fills), ZERO),
    )
