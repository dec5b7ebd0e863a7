"""RiskLimits: defaults, tightening, validation and the ceiling check."""

from __future__ import annotations

from datetime import time
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_backend.domain import DomainError, ErrorCode
from trading_backend.risk import RiskLimits, TradingState, ensure_within_ceiling


def test_defaults_suit_an_indian_retail_account() -> None:
    limits = RiskLimits()
    assert limits.max_order_value == Decimal("1000000")
    assert limits.max_order_quantity is None
    assert limits.max_open_orders == 50
    assert limits.max_open_positions == 25
    assert limits.max_symbol_exposure == Decimal("2500000")
    assert limits.max_gross_exposure == Decimal("10000000")
    assert limits.price_band_pct == Decimal("5")
    assert limits.order_rate_per_second == 10
    assert limits.duplicate_window_seconds == 2.0
    assert limits.daily_loss_limit is None and limits.weekly_loss_limit is None
    assert limits.on_loss_breach is TradingState.HALTED
    assert limits.square_off_on_breach is False
    assert limits.intraday_square_off == time(15, 15)


def test_tightened_takes_the_stricter_of_each_field() -> None:
    ceiling = RiskLimits(
        max_order_value=Decimal("500000"),
        max_order_quantity=None,
        price_band_pct=Decimal("3"),
        duplicate_window_seconds=2.0,
        daily_loss_limit=Decimal("20000"),
        on_loss_breach=TradingState.REDUCING,
        intraday_square_off=time(15, 15),
    )
    mine = RiskLimits(
        max_order_value=Decimal("800000"),  # looser: the ceiling wins
        max_order_quantity=100,  # the ceiling has none: mine applies
        price_band_pct=Decimal("2"),  # tighter: mine
        duplicate_window_seconds=5.0,  # a longer window is stricter
        daily_loss_limit=None,  # off is looser: the ceiling wins
        on_loss_breach=TradingState.HALTED,  # stricter
        square_off_on_breach=True,
        intraday_square_off=time(15, 0),  # earlier is stricter
        max_open_orders=None,
    )
    combined = ceiling.tightened(mine)
    assert combined.max_order_value == Decimal("500000")
    assert combined.max_order_quantity == 100
    assert combined.price_band_pct == Decimal("2")
    assert combined.duplicate_window_seconds == 5.0
    assert combined.daily_loss_limit == Decimal("20000")
    assert combined.on_loss_breach is TradingState.HALTED
    assert combined.square_off_on_breach is True
    assert combined.intraday_square_off == time(15, 0)
    assert combined.max_open_orders == 50
    assert mine.tightened(ceiling) == combined  # symmetric


def test_none_in_the_ceiling_means_no_ceiling() -> None:
    ceiling = RiskLimits(max_order_value=None, max_gross_exposure=None)
    assert ceiling.tightened(RiskLimits(max_order_value=None)).max_order_value is None
    assert ceiling.tightened(RiskLimits()).max_order_value == Decimal("1000000")


def test_ensure_within_ceiling_names_every_loosened_field() -> None:
    ceiling = RiskLimits(daily_loss_limit=Decimal("10000"))
    ensure_within_ceiling(RiskLimits(daily_loss_limit=Decimal("5000")), ceiling)
    proposed = RiskLimits(
        max_order_value=Decimal("2000000"),
        daily_loss_limit=None,
        max_open_orders=10,  # tighter: fine
        on_loss_breach=TradingState.REDUCING,  # looser than HALTED
    )
    with pytest.raises(DomainError) as caught:
        ensure_within_ceiling(proposed, ceiling)
    error = caught.value
    assert error.code is ErrorCode.VALIDATION_ERROR
    assert error.details["fields"] == ["max_order_value", "daily_loss_limit", "on_loss_breach"]
    assert "max_order_value (2000000 is looser than the allowed 1000000)" in error.message
    assert "daily_loss_limit (off is looser than the allowed 10000)" in error.message
    assert proposed.loosened_fields(ceiling) == error.details["fields"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_order_value", -1),
        ("max_order_quantity", -5),
        ("max_open_orders", "many"),
        ("max_open_positions", 2.5),
        ("max_symbol_exposure", "-100"),
        ("price_band_pct", 0),
        ("order_rate_per_second", 0),
        ("duplicate_window_seconds", -1),
        ("daily_loss_limit", "NaN"),
        ("weekly_loss_limit", True),
        ("on_loss_breach", "ACTIVE"),
        ("square_off_on_breach", "yes"),
        ("intraday_square_off", "25:00"),
    ],
)
def test_from_dict_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(DomainError) as caught:
        RiskLimits.from_dict({field: value})
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert caught.value.details["field"] == field
    assert field in caught.value.message


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(DomainError) as caught:
        RiskLimits.from_dict({"max_order_valu": 5})
    assert caught.value.details["field"] == "max_order_valu"


def test_constructor_validates_too() -> None:
    with pytest.raises(DomainError) as caught:
        RiskLimits(max_gross_exposure=Decimal("-1"))
    assert caught.value.details["field"] == "max_gross_exposure"
    with pytest.raises(DomainError):
        RiskLimits(max_order_value=1.5)  # type: ignore[arg-type]  # no floats for money


def test_from_dict_parses_json_values_and_keeps_missing_fields() -> None:
    limits = RiskLimits.from_dict(
        {
            "max_order_value": "250000.50",
            "max_order_quantity": 500,
            "price_band_pct": 2.5,
            "duplicate_window_seconds": 3,
            "daily_loss_limit": None,
            "weekly_loss_limit": 50000,
            "on_loss_breach": "reducing",
            "square_off_on_breach": True,
            "intraday_square_off": "15:05",
        }
    )
    assert limits.max_order_value == Decimal("250000.50")
    assert limits.max_order_quantity == 500
    assert limits.price_band_pct == Decimal("2.5")
    assert limits.duplicate_window_seconds == 3.0
    assert limits.weekly_loss_limit == Decimal("50000")
    assert limits.on_loss_breach is TradingState.REDUCING
    assert limits.intraday_square_off == time(15, 5)
    assert limits.max_open_orders == 50  # default kept


money = st.one_of(st.none(), st.decimals(min_value=0, max_value=10**9, places=2))
counts = st.one_of(st.none(), st.integers(min_value=1, max_value=10_000))
limits_strategy = st.builds(
    RiskLimits,
    max_order_value=money,
    max_order_quantity=counts,
    max_open_orders=counts,
    max_symbol_exposure=money,
    max_gross_exposure=money,
    price_band_pct=st.one_of(st.none(), st.decimals(min_value="0.1", max_value=20, places=1)),
    order_rate_per_second=counts,
    duplicate_window_seconds=st.one_of(st.none(), st.floats(min_value=0.1, max_value=60)),
    daily_loss_limit=money,
    on_loss_breach=st.sampled_from([TradingState.REDUCING, TradingState.HALTED]),
    square_off_on_breach=st.booleans(),
    intraday_square_off=st.one_of(st.none(), st.times().map(lambda t: t.replace(microsecond=0))),
)


@given(limits_strategy, limits_strategy)
def test_tightened_is_within_both_and_round_trips(a: RiskLimits, b: RiskLimits) -> None:
    combined = a.tightened(b)
    assert combined.loosened_fields(a) == []
    assert combined.loosened_fields(b) == []
    assert combined == b.tightened(a)
    assert a.tightened(a) == a
    assert RiskLimits.from_dict(combined.to_dict()) == combined
