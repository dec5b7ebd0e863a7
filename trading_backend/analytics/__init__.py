"""Performance analytics: metrics shared by backtests and live portfolios (issue #8).

``metrics`` is the pure library (returns, drawdowns, round trips, the report); the
portfolio modules read a user's trades and snapshots and feed it. The names below are
loaded on first use, so that the CLI, which imports ``analytics.cli``, does not pay for
numpy at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trading_backend.analytics.metrics import (
        EquityPoint,
        PerformanceReport,
        RoundTrip,
        compute_report,
        daily_equity,
        daily_returns,
        day_tz_for,
        round_trips,
        trading_days_for,
    )

__all__ = [
    "EquityPoint",
    "PerformanceReport",
    "RoundTrip",
    "compute_report",
    "daily_equity",
    "daily_returns",
    "day_tz_for",
    "round_trips",
    "trading_days_for",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from trading_backend.analytics import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
