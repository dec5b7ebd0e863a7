"""The metrics library against empyrical (returns) and hand-computed fixtures (trades)."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import empyrical
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_backend.analytics import returns as r
from trading_backend.analytics.metrics import (
    EquityPoint,
    anchored_daily_equity,
    compute_report,
    daily_equity,
    daily_returns,
    day_tz_for,
    exposure_from_fills,
    round_trips,
    trade_stats,
    trading_days_for,
)
from trading_backend.domain import Exchange, Fill, OrderSide, ProductType
from trading_backend.domain.calendar import IST

T0 = datetime(2024, 1, 1, 4, 0, tzinfo=UTC)  # 09:30 IST


def _same(ours: float | None, reference: float) -> None:
    """Ours equals empyrical's to 1e-9, and is None exactly where empyrical is NaN/inf."""
    if not math.isfinite(reference):
        assert ours is None, f"empyrical gives {reference}, we give {ours}"
    else:
        assert ours is not None
        assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)


def _check_against_empyrical(rets: np.ndarray, n: int, rf_annual: float) -> None:
    rf = r.daily_risk_free(rf_annual, n)
    _same(r.total_return(rets), empyrical.cum_returns_final(rets))
    _same(r.annual_return(rets, n), empyrical.cagr(rets, annualization=n))
    _same(r.annual_volatility(rets, n), empyrical.annual_volatility(rets, annualization=n))
    _same(r.sharpe_ratio(rets, n, rf), empyrical.sharpe_ratio(rets, risk_free=rf, annualization=n))
    _same(
        r.downside_risk(rets, n, rf),
        empyrical.downside_risk(rets, required_return=rf, annualization=n),
    )
    _same(
        r.sortino_ratio(rets, n, rf),
        empyrical.sortino_ratio(rets, required_return=rf, annualization=n),
    )
    _same(r.max_drawdown(rets), empyrical.max_drawdown(rets))
    _same(r.calmar_ratio(rets, n), empyrical.calmar_ratio(rets, annualization=n))


def _series() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    return {
        "normal_year": rng.normal(0.0005, 0.012, 252),
        "volatile_crypto": rng.normal(0.001, 0.04, 400),
        "losing": rng.normal(-0.002, 0.01, 120),
        "fixed": np.array([0.01, -0.02, 0.015, 0.0, -0.005, 0.03, -0.01]),
        "all_positive": np.array([0.01, 0.002, 0.03, 0.004]),
        "flat": np.zeros(30),
        "constant_gain": np.full(20, 0.001),
        "one_day": np.array([0.012]),
        "two_days": np.array([-0.01, 0.02]),
    }


@pytest.mark.parametrize("name", list(_series()))
@pytest.mark.parametrize(("n", "rf"), [(252, 0.0), (252, 0.065), (365, 0.0), (365, 0.04)])
def test_return_metrics_match_empyrical(name: str, n: int, rf: float) -> None:
    _check_against_empyrical(_series()[name], n, rf)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-0.15, max_value=0.15, allow_nan=False, allow_subnormal=False),
        min_size=2,
        max_size=300,
    ),
    st.sampled_from([252, 365]),
    st.sampled_from([0.0, 0.065]),
)
def test_return_metrics_match_empyrical_on_generated_series(
    values: list[float], n: int, rf: float
) -> None:
    _check_against_empyrical(np.array(values, dtype=np.float64), n, rf)


def test_undefined_ratios_are_none() -> None:
    flat = np.zeros(10)
    assert r.sharpe_ratio(flat, 252) is None  # zero volatility
    assert r.sortino_ratio(flat, 252) is None  # no downside
    assert r.annual_volatility(flat, 252) == 0.0
    assert r.max_drawdown(flat) == 0.0
    assert r.calmar_ratio(flat, 252) is None  # no drawdown
    one = np.array([0.01])
    assert r.sharpe_ratio(one, 252) is None and r.annual_volatility(one, 252) is None
    assert r.annual_return(one, 252) == pytest.approx(1.01**252 - 1, rel=1e-12)
    assert r.sortino_ratio(np.array([0.01, 0.02]), 252) is None  # all positive
    empty = np.empty(0)
    assert r.annual_return(empty, 252) is None and r.max_drawdown(empty) is None


def test_daily_risk_free_rate() -> None:
    daily = r.daily_risk_free(0.065, 252)
    assert (1 + daily) ** 252 == pytest.approx(1.065, rel=1e-12)
    assert r.daily_risk_free(0.0, 365) == 0.0
    with pytest.raises(ValueError):
        r.daily_risk_free(-1.0, 252)
    with pytest.raises(ValueError):
        r.daily_risk_free(math.nan, 252)


# ---------------------------------------------------------------- equity curve and report


def _curve(rets: np.ndarray, start: Decimal = Decimal("100000")) -> list[EquityPoint]:
    """An opening point, then one close a day (15:00 IST) compounding ``rets``."""
    points = [EquityPoint(T0, start)]
    equity = start
    for i, ret in enumerate(rets):
        equity = equity * (1 + Decimal(repr(float(ret))))
        points.append(EquityPoint(T0 + timedelta(days=i + 1, hours=5), equity))
    return points


@pytest.mark.parametrize("name", ["normal_year", "volatile_crypto", "losing", "fixed"])
def test_report_matches_empyrical_on_its_own_daily_returns(name: str) -> None:
    rets = _series()[name]
    points = _curve(rets)
    report = compute_report(points, [], trading_days_per_year=252, day_tz=IST, risk_free_rate=0.065)
    daily = daily_returns(anchored_daily_equity(points, IST))
    np.testing.assert_allclose(daily, rets, rtol=1e-12, atol=1e-15)
    rf = r.daily_risk_free(0.065, 252)
    assert report.periods == len(rets)
    _same(report.total_return, empyrical.cum_returns_final(daily))
    _same(report.cagr, empyrical.cagr(daily, annualization=252))
    _same(report.annual_volatility, empyrical.annual_volatility(daily, annualization=252))
    _same(report.sharpe, empyrical.sharpe_ratio(daily, risk_free=rf, annualization=252))
    _same(report.sortino, empyrical.sortino_ratio(daily, required_return=rf, annualization=252))
    _same(report.max_drawdown, empyrical.max_drawdown(daily))
    _same(report.calmar, empyrical.calmar_ratio(daily, annualization=252))
    assert report.best_day == pytest.approx(float(np.max(rets)), rel=1e-12)
    assert report.worst_day == pytest.approx(float(np.min(rets)), rel=1e-12)
    json.dumps(report.to_dict(), allow_nan=False)


def test_daily_equity_uses_the_local_calendar_day() -> None:
    points = [
        EquityPoint(datetime(2024, 3, 4, 10, 0, tzinfo=UTC), Decimal("100")),
        EquityPoint(datetime(2024, 3, 4, 18, 0, tzinfo=UTC), Decimal("101")),  # 23:30 IST
        EquityPoint(datetime(2024, 3, 4, 18, 45, tzinfo=UTC), Decimal("102")),  # 00:15 IST 5th
        EquityPoint(datetime(2024, 3, 5, 9, 0, tzinfo=UTC), Decimal("103")),
    ]
    assert daily_equity(points, IST) == [
        (date(2024, 3, 4), Decimal("101")),
        (date(2024, 3, 5), Decimal("103")),
    ]
    assert daily_equity(list(reversed(points)), UTC) == [
        (date(2024, 3, 4), Decimal("102")),
        (date(2024, 3, 5), Decimal("103")),
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        daily_equity([EquityPoint(datetime(2024, 1, 1), Decimal(1))], UTC)


def test_opening_equity_anchors_the_first_day() -> None:
    day1 = datetime(2024, 3, 4, 4, 0, tzinfo=UTC)
    intraday = [
        EquityPoint(day1, Decimal("1000")),
        EquityPoint(day1 + timedelta(hours=5), Decimal("1100")),
    ]
    anchored = anchored_daily_equity(intraday, IST)
    assert anchored == [(date(2024, 3, 4), Decimal("1000")), (date(2024, 3, 4), Decimal("1100"))]
    assert daily_returns(anchored).tolist() == [0.1]  # a one-day run still has its return
    alone = [
        EquityPoint(day1, Decimal("1000")),
        EquityPoint(day1 + timedelta(days=1), Decimal("990")),
    ]
    assert daily_returns(anchored_daily_equity(alone, IST)).tolist() == pytest.approx([-0.01])


def test_flat_curve_report_has_no_undefined_numbers_in_json() -> None:
    points = _curve(np.zeros(10))
    report = compute_report(points, [], trading_days_per_year=365, day_tz=UTC)
    data = report.to_dict()
    assert data["sharpe"] is None and data["sortino"] is None and data["calmar"] is None
    assert data["max_drawdown"] == 0.0 and data["max_drawdown_duration_days"] == 0
    assert data["total_return"] == 0.0 and data["start_equity"] == "100000"
    json.dumps(data, allow_nan=False)


def test_empty_and_single_point_reports() -> None:
    empty = compute_report([], [], trading_days_per_year=252, day_tz=IST)
    assert empty.periods == 0 and empty.start_equity is None and empty.cagr is None
    one = compute_report([EquityPoint(T0, Decimal("5"))], [], trading_days_per_year=252, day_tz=IST)
    assert one.periods == 0 and one.total_return == 0.0 and one.sharpe is None
    json.dumps(empty.to_dict(), allow_nan=False)


def test_max_drawdown_duration_peak_to_recovery_and_unrecovered() -> None:
    day = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    values = ["100", "120", "90", "110", "125", "100", "110"]
    points = [EquityPoint(day + timedelta(days=i), Decimal(v)) for i, v in enumerate(values)]
    report = compute_report(points, [], trading_days_per_year=365, day_tz=UTC)
    # Deepest: 120 -> 90 (-25%), peak on day 1, recovered on day 4 (125 >= 120).
    assert report.max_drawdown == pytest.approx(-0.25)
    assert report.max_drawdown_duration_periods == 3
    assert report.max_drawdown_duration_days == 3
    assert report.max_drawdown_recovered is True
    values = ["100", "120", "115", "80", "100"]
    points = [EquityPoint(day + timedelta(days=2 * i), Decimal(v)) for i, v in enumerate(values)]
    report = compute_report(points, [], trading_days_per_year=365, day_tz=UTC)
    assert report.max_drawdown == pytest.approx(-1 / 3)
    assert report.max_drawdown_recovered is False
    assert report.max_drawdown_duration_periods == 3  # peak (index 1) to the end (index 4)
    assert report.max_drawdown_duration_days == 6


def test_non_positive_equity_leaves_returns_undefined() -> None:
    day = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    values = ["100", "-5", "20"]
    points = [EquityPoint(day + timedelta(days=i), Decimal(v)) for i, v in enumerate(values)]
    report = compute_report(points, [], trading_days_per_year=365, day_tz=UTC)
    assert report.periods == 0 and report.sharpe is None and report.max_drawdown is None
    assert report.net_profit == Decimal("-80")


def test_bad_parameters_are_rejected() -> None:
    points = _curve(np.array([0.01, 0.02]))
    with pytest.raises(ValueError):
        compute_report(points, [], trading_days_per_year=0, day_tz=UTC)
    with pytest.raises(ValueError):
        compute_report(points, [], trading_days_per_year=252, day_tz=UTC, risk_free_rate=-2)
    with pytest.raises(ValueError):
        compute_report(points, [], trading_days_per_year=252, day_tz=UTC, exposure_fraction=1.5)


def test_exchange_conventions() -> None:
    assert trading_days_for(Exchange.NSE) == 252 and trading_days_for(Exchange.NFO) == 252
    assert trading_days_for(Exchange.CRYPTO) == 365
    assert day_tz_for(Exchange.NSE) is IST and day_tz_for(Exchange.CRYPTO) is UTC


# ------------------------------------------------------------------------ round trips


def _fill(
    n: int,
    side: OrderSide,
    qty: int,
    price: str,
    charges: str = "0",
    symbol: str = "INFY",
    product: ProductType = ProductType.INTRADAY,
) -> Fill:
    return Fill(
        trade_id=f"T{n}",
        broker_order_id=f"O{n}",
        symbol=symbol,
        exchange=Exchange.NSE,
        side=side,
        product_type=product,
        quantity=qty,
        price=Decimal(price),
        charges=Decimal(charges),
        timestamp=T0 + timedelta(minutes=n),
    )


BUY, SELL = OrderSide.BUY, OrderSide.SELL


def test_partial_exits_are_matched_fifo_lot_by_lot() -> None:
    fills = [
        _fill(1, BUY, 10, "100", "1.00"),
        _fill(2, BUY, 10, "110", "1.00"),
        _fill(3, SELL, 5, "120", "0.50"),  # closes 5 of lot 1
        _fill(4, SELL, 10, "105", "1.00"),  # closes the other 5 of lot 1, then 5 of lot 2
    ]
    trips = round_trips(fills)
    assert [(t.quantity, t.entry_price, t.exit_price) for t in trips] == [
        (5, Decimal("100"), Decimal("120")),
        (5, Decimal("100"), Decimal("105")),
        (5, Decimal("110"), Decimal("105")),
    ]
    assert [t.gross_pnl for t in trips] == [Decimal("100"), Decimal("25"), Decimal("-25")]
    # lot 1's 1.00 split 0.50 / 0.50; fill 4's 1.00 split 0.50 / 0.50; lot 2 gives 0.50.
    assert [t.charges for t in trips] == [Decimal("1.00"), Decimal("1.00"), Decimal("1.00")]
    assert [t.net_pnl for t in trips] == [Decimal("99.00"), Decimal("24.00"), Decimal("-26.00")]
    assert all(t.direction == "LONG" for t in trips)
    assert trips[2].entry_time == fills[1].timestamp and trips[2].exit_time == fills[3].timestamp


def test_reversal_long_to_short_splits_the_crossing_fill() -> None:
    fills = [
        _fill(1, BUY, 10, "100", "2.00"),
        _fill(2, SELL, 15, "90", "3.00"),  # closes the long 10, opens a short 5 at 90
        _fill(3, BUY, 5, "80", "1.00"),  # covers the short
    ]
    long_trip, short_trip = round_trips(fills)
    assert (long_trip.direction, long_trip.quantity) == ("LONG", 10)
    assert long_trip.gross_pnl == Decimal("-100")
    assert long_trip.charges == Decimal("4.00")  # 2.00 + 10/15 of 3.00
    assert long_trip.net_pnl == Decimal("-104.00")
    assert (short_trip.direction, short_trip.quantity) == ("SHORT", 5)
    assert (short_trip.entry_price, short_trip.exit_price) == (Decimal("90"), Decimal("80"))
    assert short_trip.gross_pnl == Decimal("50")
    assert short_trip.charges == Decimal("2.00")  # the remaining 1.00 of fill 2 + 1.00
    assert short_trip.net_pnl == Decimal("48.00")


def test_charges_shares_add_up_exactly_and_open_lots_are_not_trips() -> None:
    fills = [
        _fill(1, BUY, 3, "10", "1.00"),
        _fill(2, SELL, 1, "11", "0.10"),
        _fill(3, SELL, 1, "12", "0.10"),
        _fill(4, SELL, 1, "13", "0.10"),
        _fill(5, BUY, 7, "10", "5.00", symbol="TCS"),  # still open
        _fill(6, SELL, 2, "10", "0.20", product=ProductType.DELIVERY),  # another book
    ]
    trips = round_trips(fills)
    assert len(trips) == 3
    # 1.00 over 3: 1.00/3 -> 0.33, then 0.67/2 -> 0.34 (half-even), then the rest 0.33.
    assert [t.charges for t in trips] == [Decimal("0.43"), Decimal("0.44"), Decimal("0.43")]
    assert sum(t.charges for t in trips) == Decimal("1.30")


def test_trade_stats_hand_computed() -> None:
    fills = [
        _fill(1, BUY, 10, "100", "1"),
        _fill(2, SELL, 10, "110", "1"),  # +100 gross, +98 net
        _fill(3, SELL, 10, "110", "1"),
        _fill(4, BUY, 10, "115", "1"),  # short: -50 gross, -52 net
        _fill(5, BUY, 10, "100", "0"),
        _fill(6, SELL, 10, "103", "0"),  # +30
        _fill(7, BUY, 10, "100", "0"),
        _fill(8, SELL, 10, "100", "0"),  # 0: neither win nor loss
    ]
    stats = trade_stats(round_trips(fills))
    assert (stats.trades, stats.winning_trades, stats.losing_trades) == (4, 2, 1)
    assert stats.win_rate == 0.5
    assert stats.profit_factor == pytest.approx(128 / 52)
    assert stats.average_win == Decimal("64") and stats.average_loss == Decimal("-52")
    assert stats.average_trade == Decimal("19") and stats.expectancy == Decimal("19")
    assert stats.expectancy_ratio == pytest.approx(19 / 52)
    assert stats.largest_win == Decimal("98") and stats.largest_loss == Decimal("-52")
    assert stats.net_pnl == Decimal("76") and stats.gross_pnl == Decimal("80")
    assert stats.charges == Decimal("4")
    report = compute_report(
        [EquityPoint(T0, Decimal("10000")), EquityPoint(T0 + timedelta(hours=1), Decimal("10076"))],
        fills,
        trading_days_per_year=252,
        day_tz=IST,
    )
    assert report.trades == 4 and report.win_rate == 0.5 and report.average_trade == Decimal("19")
    assert report.total_charges == Decimal("4")
    assert report.traded_value == Decimal("8380")
    # average of the anchored daily equities (10000 opening, 10076 close)
    assert report.turnover == pytest.approx(8380 / 10038)
    data = report.to_dict()
    assert data["expectancy"] == "19" and data["total_charges"] == "4"


def test_no_losses_means_no_profit_factor() -> None:
    stats = trade_stats(round_trips([_fill(1, BUY, 1, "10"), _fill(2, SELL, 1, "12")]))
    assert stats.profit_factor is None and stats.expectancy_ratio is None
    empty = trade_stats([])
    assert empty.trades == 0 and empty.win_rate is None and empty.average_trade is None


def test_exposure_measured_from_fills_or_given() -> None:
    fills = [_fill(0, BUY, 1, "10"), _fill(30, SELL, 1, "11")]  # open for 30 of 120 minutes
    start, end = T0, T0 + timedelta(minutes=120)
    assert exposure_from_fills(fills, start, end) == pytest.approx(0.25)
    points = [EquityPoint(start, Decimal("100")), EquityPoint(end, Decimal("101"))]
    measured = compute_report(points, fills, trading_days_per_year=252, day_tz=IST)
    assert measured.exposure == pytest.approx(0.25)
    given_ = compute_report(
        points, fills, trading_days_per_year=252, day_tz=IST, exposure_fraction=0.4
    )
    assert given_.exposure == 0.4
    still_open = [_fill(60, BUY, 1, "10")]
    assert exposure_from_fills(still_open, start, end) == pytest.approx(0.5)
