"""European option pricing: Black-Scholes-Merton prices, greeks, implied volatility, a smile.

Pure functions, no I/O, no clock: everything a caller needs is an argument, so the same
code serves the paper market, a backtester and an option-chain view.

Why ``float`` here when money is ``Decimal`` everywhere else: pricing needs ``exp``,
``log``, ``sqrt`` and the normal CDF, which ``Decimal`` does not provide (or provides only
slowly and partially). The inputs are already approximations (a volatility, a rate), so
binary floating point loses nothing that matters. Prices leave this module as ``Decimal``
through ``price_to_decimal``, which rounds to the instrument's tick: that is the boundary
where the domain's "money is Decimal" rule takes over.

Conventions:

* ``option_type`` is ``"CE"`` (call) or ``"PE"`` (put); ``InstrumentType.CE`` / ``.PE``
  work too (they are ``str`` enums).
* ``t`` is the time to expiry in years, ACT/365 (see ``time_to_expiry``); ``vol``, ``rate``
  and ``dividend_yield`` are annual, continuously compounded, as fractions (0.13 = 13%).
  ``dividend_yield`` (q) is the Merton continuous yield / carry adjustment: the forward
  is ``spot * exp((rate - q) * t)``.
* Greeks are per unit of the underlying (multiply by the lot size for a contract):
  ``delta`` = dV/dS, ``gamma`` = d²V/dS², ``theta`` = value change per calendar day
  (dV/dt / 365, negative for a long option as time passes), ``vega`` = value change per
  volatility point (dV/dσ x 0.01), ``rho`` = value change per percentage point of the
  rate (dV/dr x 0.01).
* At or after expiry (``t <= 0``) or with zero volatility the value is the discounted
  intrinsic value of the forward, and the greeks are those of that payoff (delta 1/0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

from trading_backend.domain.money import round_to_tick, to_decimal

__all__ = [
    "DAYS_PER_YEAR",
    "IST",
    "NSE_EXPIRY_TIME",
    "Greeks",
    "VolSmile",
    "bs_greeks",
    "bs_price",
    "expiry_datetime",
    "implied_volatility",
    "intrinsic_value",
    "norm_cdf",
    "norm_pdf",
    "price_to_decimal",
    "time_to_expiry",
]

IST = timezone(timedelta(hours=5, minutes=30), "IST")
NSE_EXPIRY_TIME = time(15, 30)  # index options expire at the close of the expiry day
DAYS_PER_YEAR = 365.0  # ACT/365
SECONDS_PER_YEAR = DAYS_PER_YEAR * 24 * 3600

IV_LOW = 1e-6  # implied-volatility search bracket (annual, as a fraction)
IV_HIGH = 10.0  # 1000%: beyond anything an index option trades at
_IV_PRICE_TOL = 1e-9  # relative: stop once the price is this close and Newton has settled
_IV_VOL_TOL = 1e-12  # relative change of the volatility that counts as settled
_IV_MAX_ITER = 200

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def norm_cdf(x: float) -> float:
    """Standard normal cumulative distribution (via ``erfc``, accurate in both tails)."""
    return 0.5 * math.erfc(-x / _SQRT_2)


def norm_pdf(x: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def _is_call(option_type: str) -> bool:
    kind = str(option_type).upper()
    if kind == "CE":
        return True
    if kind == "PE":
        return False
    raise ValueError(f"option_type must be 'CE' or 'PE', got {option_type!r}")


def _check(spot: float, strike: float, vol: float) -> None:
    if not (spot > 0 and math.isfinite(spot)):
        raise ValueError(f"spot must be positive and finite, got {spot}")
    if not (strike > 0 and math.isfinite(strike)):
        raise ValueError(f"strike must be positive and finite, got {strike}")
    if not (vol >= 0 and math.isfinite(vol)):
        raise ValueError(f"vol must be non-negative and finite, got {vol}")


def intrinsic_value(option_type: str, spot: float, strike: float) -> float:
    """Exercise value now: ``max(S - K, 0)`` for a call, ``max(K - S, 0)`` for a put."""
    return max(spot - strike, 0.0) if _is_call(option_type) else max(strike - spot, 0.0)


def bs_price(
    option_type: str,
    spot: float,
    strike: float,
    t: float,
    vol: float,
    rate: float = 0.0,
    dividend_yield: float = 0.0,
) -> float:
    """Black-Scholes-Merton value of a European option.

    ``C = S e^{-qT} N(d1) - K e^{-rT} N(d2)``, ``P = K e^{-rT} N(-d2) - S e^{-qT} N(-d1)``
    with ``d1 = (ln(S/K) + (r - q + σ²/2) T) / (σ √T)`` and ``d2 = d1 - σ √T``.
    """
    call = _is_call(option_type)
    _check(spot, strike, vol)
    t = max(t, 0.0)
    df_q = math.exp(-dividend_yield * t)
    df_r = math.exp(-rate * t)
    sd = vol * math.sqrt(t)
    if sd <= 0.0:
        # Expired, or a certain forward: discounted intrinsic value of the forward.
        forward_value = spot * df_q - strike * df_r
        return max(forward_value, 0.0) if call else max(-forward_value, 0.0)
    d1 = (math.log(spot / strike) + (rate - dividend_yield) * t) / sd + 0.5 * sd
    d2 = d1 - sd
    if call:
        value = spot * df_q * norm_cdf(d1) - strike * df_r * norm_cdf(d2)
    else:
        value = strike * df_r * norm_cdf(-d2) - spot * df_q * norm_cdf(-d1)
    return max(value, 0.0)


@dataclass(frozen=True, slots=True)
class Greeks:
    """Sensitivities per unit of the underlying; units in the module docstring."""

    delta: float
    gamma: float
    theta: float  # per calendar day
    vega: float  # per volatility point (0.01)
    rho: float  # per percentage point of the rate (0.01)


def bs_greeks(
    option_type: str,
    spot: float,
    strike: float,
    t: float,
    vol: float,
    rate: float = 0.0,
    dividend_yield: float = 0.0,
) -> Greeks:
    """Analytic Black-Scholes-Merton greeks (see the module docstring for units)."""
    call = _is_call(option_type)
    _check(spot, strike, vol)
    t = max(t, 0.0)
    df_q = math.exp(-dividend_yield * t)
    df_r = math.exp(-rate * t)
    sd = vol * math.sqrt(t)
    if sd <= 0.0:
        in_the_money = spot * df_q > strike * df_r if call else spot * df_q < strike * df_r
        if not in_the_money:
            return Greeks(0.0, 0.0, 0.0, 0.0, 0.0)
        sign = 1.0 if call else -1.0
        # Value = sign (S e^{-qT} - K e^{-rT}); its derivatives at T (theta: as T shrinks).
        theta_year = sign * (dividend_yield * spot * df_q - rate * strike * df_r)
        return Greeks(
            delta=sign * df_q,
            gamma=0.0,
            theta=theta_year / DAYS_PER_YEAR,
            vega=0.0,
            rho=sign * strike * t * df_r * 0.01,
        )
    sqrt_t = math.sqrt(t)
    d1 = (math.log(spot / strike) + (rate - dividend_yield) * t) / sd + 0.5 * sd
    d2 = d1 - sd
    pdf_d1 = norm_pdf(d1)
    gamma = df_q * pdf_d1 / (spot * sd)
    vega = spot * df_q * pdf_d1 * sqrt_t
    decay = -spot * df_q * pdf_d1 * vol / (2.0 * sqrt_t)
    if call:
        delta = df_q * norm_cdf(d1)
        theta_year = (
            decay
            + dividend_yield * spot * df_q * norm_cdf(d1)
            - rate * strike * df_r * norm_cdf(d2)
        )
        rho = strike * t * df_r * norm_cdf(d2)
    else:
        delta = -df_q * norm_cdf(-d1)
        theta_year = (
            decay
            - dividend_yield * spot * df_q * norm_cdf(-d1)
            + rate * strike * df_r * norm_cdf(-d2)
        )
        rho = -strike * t * df_r * norm_cdf(-d2)
    return Greeks(
        delta=delta,
        gamma=gamma,
        theta=theta_year / DAYS_PER_YEAR,
        vega=vega * 0.01,
        rho=rho * 0.01,
    )


def _vega_raw(spot: float, strike: float, t: float, vol: float, rate: float, q: float) -> float:
    sd = vol * math.sqrt(t)
    d1 = (math.log(spot / strike) + (rate - q) * t) / sd + 0.5 * sd
    return spot * math.exp(-q * t) * norm_pdf(d1) * math.sqrt(t)


def implied_volatility(
    option_type: str,
    price: float,
    spot: float,
    strike: float,
    t: float,
    rate: float = 0.0,
    dividend_yield: float = 0.0,
) -> float | None:
    """The volatility at which ``bs_price`` equals ``price``, or ``None`` if there is none.

    ``None`` when ``t <= 0`` or when the price is not strictly inside the no-arbitrage
    bounds (a call lies in ``(max(S e^{-qT} - K e^{-rT}, 0), S e^{-qT})``, a put in
    ``(max(K e^{-rT} - S e^{-qT}, 0), K e^{-rT})``), and when the implied volatility would
    lie outside ``[IV_LOW, IV_HIGH]``.

    Method: the price is increasing in volatility, so the root is bracketed in
    ``[IV_LOW, IV_HIGH]`` and every step is a Newton step when it stays inside the current
    bracket, else a bisection; the bracket shrinks every iteration, so it always converges
    (Newton alone diverges for deep out-of-the-money options, where vega is tiny).
    """
    call = _is_call(option_type)
    _check(spot, strike, 0.0)
    if not math.isfinite(price) or t <= 0.0:
        return None
    df_q = math.exp(-dividend_yield * t)
    df_r = math.exp(-rate * t)
    forward_value = spot * df_q - strike * df_r
    if call:
        lower, upper = max(forward_value, 0.0), spot * df_q
    else:
        lower, upper = max(-forward_value, 0.0), strike * df_r
    if not lower < price < upper:
        return None

    def error(vol: float) -> float:
        return bs_price(option_type, spot, strike, t, vol, rate, dividend_yield) - price

    lo, hi = IV_LOW, IV_HIGH
    if error(lo) > 0.0 or error(hi) < 0.0:
        return None
    tolerance = _IV_PRICE_TOL * price
    # Brenner-Subrahmanyam start, clamped into the bracket.
    vol = min(max(math.sqrt(2.0 * math.pi / t) * price / (spot * df_q), 0.05), 3.0)
    for _ in range(_IV_MAX_ITER):
        diff = error(vol)
        if diff == 0.0:
            return vol
        if diff > 0.0:
            hi = vol
        else:
            lo = vol
        vega = _vega_raw(spot, strike, t, vol, rate, dividend_yield)
        candidate = vol - diff / vega if vega > 0.0 else math.nan
        if lo < candidate < hi:
            if abs(candidate - vol) <= _IV_VOL_TOL * candidate and abs(diff) <= tolerance:
                return candidate
            vol = candidate
        else:
            vol = 0.5 * (lo + hi)
        if hi - lo <= _IV_VOL_TOL * hi:
            return vol
    return vol


@dataclass(frozen=True, slots=True)
class VolSmile:
    """A quadratic-in-log-moneyness volatility smile.

    ``vol(K, F, T) = clamp(atm_vol + skew * x + curvature * x², min_vol, max_vol)`` with
    ``x = ln(K / F)``. The default negative ``skew`` makes out-of-the-money puts (K < F)
    richer than equally distant calls, as in Indian index options (demand for downside
    protection); the positive ``curvature`` lifts both wings. With the defaults a NIFTY
    strike 3% below the forward trades near 15% and one 3% above near 12%, around an ATM
    of 13%. There is no term structure: every expiry uses the same smile (``t_years`` is
    validated but does not change the result).
    """

    atm_vol: float = 0.13
    skew: float = -0.5
    curvature: float = 4.0
    min_vol: float = 0.05
    max_vol: float = 2.0

    def __post_init__(self) -> None:
        for name in ("atm_vol", "skew", "curvature", "min_vol", "max_vol"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if not 0 < self.min_vol <= self.max_vol:
            raise ValueError("need 0 < min_vol <= max_vol")
        if self.atm_vol <= 0:
            raise ValueError("atm_vol must be positive")

    def vol(self, strike: float, forward: float, t_years: float = 0.0) -> float:
        if strike <= 0 or forward <= 0:
            raise ValueError("strike and forward must be positive")
        if t_years < 0:
            raise ValueError("t_years must not be negative")
        x = math.log(strike / forward)
        raw = self.atm_vol + self.skew * x + self.curvature * x * x
        return min(self.max_vol, max(self.min_vol, raw))


def expiry_datetime(expiry: date) -> datetime:
    """The moment an NSE index option expires: 15:30 IST on its expiry date."""
    return datetime.combine(expiry, NSE_EXPIRY_TIME, tzinfo=IST)


def time_to_expiry(now: datetime, expiry: date | datetime) -> float:
    """Years (ACT/365) from ``now`` to expiry, never negative.

    A ``date`` expires at 15:30 IST that day; a ``datetime`` is taken as is. Naive
    datetimes are read as UTC (the backend's clocks are UTC).
    """
    if isinstance(expiry, datetime):
        end = expiry if expiry.tzinfo is not None else expiry.replace(tzinfo=UTC)
    else:
        end = expiry_datetime(expiry)
    start = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return max((end - start).total_seconds(), 0.0) / SECONDS_PER_YEAR


def price_to_decimal(
    value: float, tick: Decimal = Decimal("0.05"), minimum: Decimal | None = None
) -> Decimal:
    """A model price as ``Decimal``, snapped to ``tick`` (and raised to ``minimum`` if given)."""
    if not math.isfinite(value):
        raise ValueError(f"price must be finite, got {value}")
    result = round_to_tick(to_decimal(value, "price"), tick)
    if minimum is not None and result < minimum:
        return minimum
    return result
