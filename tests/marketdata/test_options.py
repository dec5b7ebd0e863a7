"""Black-Scholes-Merton pricing, greeks, implied volatility, the smile, time to expiry."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_backend.domain import InstrumentType
from trading_backend.marketdata.options import (
    IST,
    VolSmile,
    bs_greeks,
    bs_price,
    implied_volatility,
    intrinsic_value,
    price_to_decimal,
    time_to_expiry,
)


def test_textbook_values() -> None:
    # Hull's classic example: S=K=100, r=5%, sigma=20%, T=1.
    assert bs_price("CE", 100, 100, 1.0, 0.2, 0.05) == pytest.approx(10.4506, abs=1e-4)
    assert bs_price("PE", 100, 100, 1.0, 0.2, 0.05) == pytest.approx(5.5735, abs=1e-4)
    # Hull 15.6 (8th ed.): S=42, K=40, r=10%, sigma=20%, T=0.5.
    assert bs_price("CE", 42, 40, 0.5, 0.2, 0.1) == pytest.approx(4.76, abs=5e-3)
    assert bs_price("PE", 42, 40, 0.5, 0.2, 0.1) == pytest.approx(0.81, abs=5e-3)
    # Merton with a dividend yield (Hull 17.x: S=930, K=900, r=8%, q=3%, sigma=20%, T=2/12).
    assert bs_price("CE", 930, 900, 2 / 12, 0.2, 0.08, 0.03) == pytest.approx(51.83, abs=5e-2)
    # The enum works as the option type.
    assert bs_price(InstrumentType.CE, 100, 100, 1.0, 0.2, 0.05) == bs_price(
        "CE", 100, 100, 1.0, 0.2, 0.05
    )


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        bs_price("XX", 100, 100, 1.0, 0.2)
    with pytest.raises(ValueError):
        bs_price("CE", -1, 100, 1.0, 0.2)
    with pytest.raises(ValueError):
        bs_price("CE", 100, 0, 1.0, 0.2)
    with pytest.raises(ValueError):
        bs_price("CE", 100, 100, 1.0, -0.1)
    with pytest.raises(ValueError):
        bs_greeks("CE", 100, 100, 1.0, math.nan)


@given(
    spot=st.floats(50, 200),
    strike=st.floats(50, 200),
    t=st.floats(0.001, 3),
    vol=st.floats(0.01, 1.5),
    rate=st.floats(-0.02, 0.15),
    q=st.floats(0, 0.1),
)
def test_put_call_parity(
    spot: float, strike: float, t: float, vol: float, rate: float, q: float
) -> None:
    call = bs_price("CE", spot, strike, t, vol, rate, q)
    put = bs_price("PE", spot, strike, t, vol, rate, q)
    forward_value = spot * math.exp(-q * t) - strike * math.exp(-rate * t)
    assert call - put == pytest.approx(forward_value, abs=1e-9 * spot)


def _fd_greeks(
    kind: str, s: float, k: float, t: float, v: float, r: float, q: float
) -> dict[str, float]:
    def price(s: float = s, t: float = t, v: float = v, r: float = r) -> float:
        return bs_price(kind, s, k, t, v, r, q)

    hs, ht, hv, hr = s * 1e-4, 1e-6, 1e-6, 1e-6
    return {
        "delta": (price(s=s + hs) - price(s=s - hs)) / (2 * hs),
        "gamma": (price(s=s + hs) - 2 * price() + price(s=s - hs)) / hs**2,
        # theta per calendar day: value change as one day passes (t shrinks)
        "theta": -(price(t=t + ht) - price(t=t - ht)) / (2 * ht) / 365,
        "vega": (price(v=v + hv) - price(v=v - hv)) / (2 * hv) * 0.01,
        "rho": (price(r=r + hr) - price(r=r - hr)) / (2 * hr) * 0.01,
    }


@pytest.mark.parametrize("kind", ["CE", "PE"])
@pytest.mark.parametrize(
    ("spot", "strike", "t", "vol", "rate", "q"),
    [
        (100, 100, 1.0, 0.2, 0.05, 0.0),
        (100, 120, 0.25, 0.3, 0.05, 0.02),
        (26000, 25500, 7 / 365, 0.14, 0.065, 0.001),
        (58000, 59000, 30 / 365, 0.15, 0.065, 0.0),
    ],
)
def test_greeks_match_finite_differences(
    kind: str, spot: float, strike: float, t: float, vol: float, rate: float, q: float
) -> None:
    greeks = bs_greeks(kind, spot, strike, t, vol, rate, q)
    fd = _fd_greeks(kind, spot, strike, t, vol, rate, q)
    assert greeks.delta == pytest.approx(fd["delta"], rel=1e-5, abs=1e-8)
    assert greeks.gamma == pytest.approx(fd["gamma"], rel=1e-3, abs=1e-8)
    assert greeks.theta == pytest.approx(fd["theta"], rel=1e-4, abs=1e-8)
    assert greeks.vega == pytest.approx(fd["vega"], rel=1e-5, abs=1e-8)
    assert greeks.rho == pytest.approx(fd["rho"], rel=1e-5, abs=1e-8)


def test_greek_signs_and_textbook_delta() -> None:
    call = bs_greeks("CE", 100, 100, 1.0, 0.2, 0.05)
    put = bs_greeks("PE", 100, 100, 1.0, 0.2, 0.05)
    assert call.delta == pytest.approx(0.6368, abs=1e-4)
    assert put.delta == pytest.approx(call.delta - 1, abs=1e-12)  # q = 0
    assert call.gamma == pytest.approx(put.gamma) and call.gamma > 0
    assert call.vega == pytest.approx(put.vega) and call.vega > 0
    assert call.theta < 0 and put.theta < 0
    assert call.rho > 0 > put.rho


@settings(max_examples=300)
@given(
    kind=st.sampled_from(["CE", "PE"]),
    moneyness=st.floats(0.7, 1.3),
    vol=st.floats(0.03, 2.0),
    days=st.floats(0.5, 400),
    rate=st.floats(0.0, 0.1),
)
def test_implied_volatility_round_trip(
    kind: str, moneyness: float, vol: float, days: float, rate: float
) -> None:
    spot, t = 26000.0, days / 365
    strike = spot * moneyness
    price = bs_price(kind, spot, strike, t, vol, rate)
    vega = bs_greeks(kind, spot, strike, t, vol, rate).vega * 100  # per unit of volatility
    iv = implied_volatility(kind, price, spot, strike, t, rate)
    # A price carries ~1e-16 x spot of rounding, so the volatility is only known to about
    # that over vega; where vega is negligible (deep OTM, short-dated) None is acceptable.
    if vega < 1e-8 * spot:
        if iv is not None:
            assert bs_price(kind, spot, strike, t, iv, rate) == pytest.approx(
                price, abs=1e-9 * spot
            )
        return
    assert iv is not None
    assert abs(iv - vol) <= 1e-7 * vol + 1e-12 * spot / vega


def test_implied_volatility_outside_bounds_is_none() -> None:
    s, k, t, r = 100.0, 100.0, 0.5, 0.05
    forward_value = s - k * math.exp(-r * t)
    assert implied_volatility("CE", forward_value - 0.01, s, k, t, r) is None  # below intrinsic
    assert implied_volatility("CE", s + 1, s, k, t, r) is None  # above the spot
    assert implied_volatility("PE", k, s, k, t, r) is None  # put worth more than the strike
    assert implied_volatility("PE", -1.0, s, k, t, r) is None
    assert implied_volatility("CE", 5.0, s, k, 0.0, r) is None  # expired
    assert implied_volatility("CE", math.nan, s, k, t, r) is None
    # deep OTM with a tiny price still solves
    tiny = bs_price("CE", s, 200, t, 0.3, r)
    iv = implied_volatility("CE", tiny, s, 200, t, r)
    assert iv is not None and iv == pytest.approx(0.3, rel=1e-6)


def test_monotonicity() -> None:
    s, t, r = 26000.0, 10 / 365, 0.065
    strikes = [25000 + 100 * i for i in range(21)]
    calls = [bs_price("CE", s, k, t, 0.13, r) for k in strikes]
    puts = [bs_price("PE", s, k, t, 0.13, r) for k in strikes]
    assert all(a > b for a, b in itertools.pairwise(calls))  # calls fall with strike
    assert all(a < b for a, b in itertools.pairwise(puts))  # puts rise with strike
    vols = [0.05, 0.1, 0.2, 0.4, 0.8]
    for kind in ("CE", "PE"):
        by_vol = [bs_price(kind, s, 26000, t, v, r) for v in vols]
        assert all(a < b for a, b in itertools.pairwise(by_vol))
        by_time = [bs_price(kind, s, 26000, d / 365, 0.13, r) for d in (1, 7, 30, 90)]
        assert all(a < b for a, b in itertools.pairwise(by_time))
    by_spot = [bs_price("CE", x, 26000, t, 0.13, r) for x in (25000, 25500, 26000, 26500)]
    assert all(a < b for a, b in itertools.pairwise(by_spot))


def test_expiry_gives_intrinsic_value() -> None:
    for kind, spot, strike, value in [
        ("CE", 26100, 26000, 100),
        ("CE", 25900, 26000, 0),
        ("PE", 25900, 26000, 100),
        ("PE", 26100, 26000, 0),
    ]:
        assert intrinsic_value(kind, spot, strike) == value
        assert bs_price(kind, spot, strike, 0.0, 0.13, 0.065) == pytest.approx(value)
        assert bs_price(kind, spot, strike, -1.0, 0.13, 0.065) == pytest.approx(value)
        # and the price converges to it as t -> 0
        assert bs_price(kind, spot, strike, 1e-9, 0.13, 0.065) == pytest.approx(value, abs=1e-2)
    itm = bs_greeks("CE", 26100, 26000, 0.0, 0.13, 0.065)
    otm = bs_greeks("PE", 26100, 26000, 0.0, 0.13, 0.065)
    assert itm.delta == 1.0 and itm.gamma == 0.0 and itm.vega == 0.0
    assert otm.delta == otm.gamma == otm.theta == otm.vega == otm.rho == 0.0
    assert bs_greeks("PE", 25900, 26000, 0.0, 0.13).delta == -1.0


def test_smile_shape() -> None:
    smile = VolSmile()
    forward = 26000.0
    assert smile.atm_vol == 0.13 and smile.skew < 0 < smile.curvature
    assert smile.vol(forward, forward, 0.1) == pytest.approx(0.13)
    for distance in (0.01, 0.03, 0.05):
        put_wing = smile.vol(forward * math.exp(-distance), forward, 0.1)
        call_wing = smile.vol(forward * math.exp(distance), forward, 0.1)
        assert put_wing > smile.atm_vol  # OTM puts are richer
        assert put_wing > call_wing
    # the formula, exactly
    x = math.log(25000 / forward)
    assert smile.vol(25000, forward) == pytest.approx(0.13 - 0.5 * x + 4.0 * x * x)
    # floor and cap
    flat = VolSmile(atm_vol=0.2, skew=-5.0, curvature=0.0, min_vol=0.1, max_vol=0.4)
    assert flat.vol(forward * 2, forward) == 0.1
    assert flat.vol(forward / 2, forward) == 0.4
    with pytest.raises(ValueError):
        VolSmile(min_vol=0.5, max_vol=0.4)
    with pytest.raises(ValueError):
        VolSmile(atm_vol=0)
    with pytest.raises(ValueError):
        smile.vol(0, forward)
    with pytest.raises(ValueError):
        smile.vol(forward, forward, -1)


def test_time_to_expiry_is_act_365_to_1530_ist() -> None:
    expiry = date(2025, 12, 2)
    close = datetime(2025, 12, 2, 15, 30, tzinfo=IST)
    assert time_to_expiry(close, expiry) == 0.0
    assert time_to_expiry(close + timedelta(hours=1), expiry) == 0.0  # never negative
    assert time_to_expiry(close - timedelta(days=1), expiry) == pytest.approx(1 / 365)
    # 15:30 IST is 10:00 UTC; naive datetimes are UTC
    assert time_to_expiry(datetime(2025, 12, 1, 10, 0), expiry) == pytest.approx(1 / 365)
    assert time_to_expiry(datetime(2025, 12, 1, 10, 0, tzinfo=UTC), expiry) == pytest.approx(
        1 / 365
    )
    # a datetime expiry is used as is
    assert time_to_expiry(close - timedelta(days=73), close) == pytest.approx(0.2)


def test_price_to_decimal_rounds_to_the_tick() -> None:
    assert price_to_decimal(123.456) == Decimal("123.45")
    assert price_to_decimal(123.476) == Decimal("123.50")
    assert price_to_decimal(0.01, minimum=Decimal("0.05")) == Decimal("0.05")
    assert price_to_decimal(0.0) == Decimal("0.00")
    assert price_to_decimal(99.994, Decimal("0.01")) == Decimal("99.99")
    with pytest.raises(ValueError):
        price_to_decimal(math.inf)
