"""Return-based statistics, written to match empyrical's conventions exactly.

Each function takes simple periodic (daily) returns as a float64 array and the number of
periods per year ``periods_per_year`` (empyrical's ``annualization``). Where empyrical
answers NaN or an infinity (too few returns, zero dispersion, no drawdown, an overflow)
these answer ``None``: a ratio that is undefined must never reach JSON as NaN or inf.

Kept separate from ``metrics.py`` so the tests can hold each formula against
empyrical's function of the same name on the very same array.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Returns = NDArray[np.float64]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def daily_risk_free(annual_rate: float, periods_per_year: int) -> float:
    """The per-period rate that compounds to ``annual_rate`` over a year: (1+rf)^(1/N) - 1.

    empyrical's ``sharpe_ratio`` takes ``risk_free`` already per period and subtracts it
    from every return; this is how an annual rate becomes that per-period figure.
    """
    if not math.isfinite(annual_rate) or annual_rate <= -1:
        raise ValueError("risk_free_rate must be a finite annual rate above -1")
    if annual_rate == 0:
        return 0.0
    return float((1.0 + annual_rate) ** (1.0 / periods_per_year) - 1.0)


def total_return(returns: Returns) -> float | None:
    """Compounded return over the whole series (empyrical ``cum_returns_final``)."""
    if len(returns) < 1:
        return None
    return _finite(float(np.nanprod(returns + 1.0)) - 1.0)


def annual_return(returns: Returns, periods_per_year: int) -> float | None:
    """CAGR: final wealth ** (1 / years) - 1, years = len(returns) / N (empyrical ``cagr``)."""
    if len(returns) < 1:
        return None
    num_years = len(returns) / periods_per_year
    ending_value = np.float64(np.nanprod(returns + 1.0))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        value = float(ending_value ** (1.0 / num_years) - 1.0)
    return _finite(value)


def annual_volatility(returns: Returns, periods_per_year: int) -> float | None:
    """Sample standard deviation (ddof=1) times sqrt(N) (empyrical ``annual_volatility``)."""
    if len(returns) < 2:
        return None
    return _finite(float(np.nanstd(returns, ddof=1)) * periods_per_year ** (1.0 / 2.0))


def sharpe_ratio(returns: Returns, periods_per_year: int, risk_free: float = 0.0) -> float | None:
    """mean(r - rf) / std(r - rf, ddof=1) * sqrt(N), ``risk_free`` per period.

    As empyrical does, a series whose excess returns are all equal has zero dispersion
    (not the 1e-18 residue floating point leaves) and so no Sharpe ratio.
    """
    if len(returns) < 2:
        return None
    excess = returns - risk_free if risk_free != 0 else returns
    if float(np.nanmax(excess)) == float(np.nanmin(excess)):
        return None
    std = float(np.nanstd(excess, ddof=1))
    if std == 0 or not math.isfinite(std):
        return None
    return _finite(float(np.nanmean(excess)) / std * float(np.sqrt(periods_per_year)))


def downside_risk(
    returns: Returns, periods_per_year: int, required_return: float = 0.0
) -> float | None:
    """sqrt(mean(min(r - MAR, 0)^2)) * sqrt(N), the mean over *all* periods.

    empyrical's ``downside_risk``: periods above the threshold count as zero deviation
    rather than being dropped, so this is not the standard deviation of the losses.
    """
    if len(returns) < 1:
        return None
    adjusted = returns - required_return if required_return != 0 else returns
    downside = np.clip(adjusted, -np.inf, 0)
    value = float(np.sqrt(np.nanmean(np.square(downside)))) * float(np.sqrt(periods_per_year))
    return _finite(value)


def sortino_ratio(
    returns: Returns, periods_per_year: int, required_return: float = 0.0
) -> float | None:
    """mean(r - MAR) * N / downside_risk (empyrical ``sortino_ratio``); None without losses."""
    if len(returns) < 2:
        return None
    adjusted = returns - required_return if required_return != 0 else returns
    risk = downside_risk(returns, periods_per_year, required_return)
    if risk is None or risk == 0:
        return None
    return _finite(float(np.nanmean(adjusted)) * periods_per_year / risk)


def drawdowns(returns: Returns) -> Returns:
    """Drawdown after each return, relative to the running peak *including* the start.

    empyrical anchors the cumulative curve at a starting value (100) so that a first-day
    loss is a drawdown from the initial capital; the anchor's own (zero) drawdown is
    dropped. Computed in the same order of operations as empyrical's
    ``drawdown_series``, so that even drawdowns of a few ulps (returns of 1e-16) agree.
    """
    index = np.empty(len(returns) + 1, dtype=np.float64)
    index[0] = 100.0
    grown = index[1:]
    np.add(np.nan_to_num(returns), 1.0, out=grown)
    np.cumprod(grown, out=grown)
    np.multiply(grown, 100.0, out=grown)
    peaks = np.fmax.accumulate(index)
    return ((index - peaks) / peaks)[1:]


def max_drawdown(returns: Returns) -> float | None:
    """The deepest drawdown, a number <= 0 (empyrical ``max_drawdown``)."""
    if len(returns) < 1:
        return None
    return _finite(float(np.nanmin(drawdowns(returns))))


def calmar_ratio(returns: Returns, periods_per_year: int) -> float | None:
    """CAGR / |max drawdown|; None when there was no drawdown (empyrical ``calmar_ratio``)."""
    mdd = max_drawdown(returns)
    if mdd is None or mdd >= 0:
        return None
    cagr = annual_return(returns, periods_per_year)
    if cagr is None:
        return None
    return _finite(cagr / abs(mdd))
