"""Charges: hand-computed contract-note examples per segment, to the paisa."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading_backend.brokers.paper.charges import (
    ChargeRates,
    Segment,
    calculate_charges,
    charges_for_fill,
    segment_for,
)
from trading_backend.domain import Exchange, Instrument, InstrumentType, OrderSide, ProductType

D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL


def test_equity_delivery_buy_and_sell() -> None:
    # Buy 100 @ 1500: turnover 150000.
    buy = calculate_charges(Segment.EQUITY_DELIVERY, BUY, 100, D("1500"))
    assert buy.brokerage == D("0.00")
    assert buy.stt == D("150.00")  # 0.1%
    assert buy.exchange_charges == D("4.46")  # 4.455
    assert buy.sebi_fee == D("0.15")
    assert buy.gst == D("0.83")  # 18% of 4.605 = 0.8289
    assert buy.stamp_duty == D("22.50")  # 0.015%
    assert buy.total == D("177.94")
    # Sell 100 @ 1550: turnover 155000.
    sell = calculate_charges(Segment.EQUITY_DELIVERY, SELL, 100, D("1550"))
    assert sell.stt == D("155.00")
    assert sell.exchange_charges == D("4.60")  # 4.6035
    assert sell.sebi_fee == D("0.16")  # 0.155 half-up
    assert sell.gst == D("0.86")  # 18% of 4.7585 = 0.85653
    assert sell.stamp_duty == D("0")
    assert sell.total == D("160.62")


def test_equity_intraday() -> None:
    # Buy 500 @ 1000 (turnover 500000): brokerage capped at 20.
    buy = calculate_charges(Segment.EQUITY_INTRADAY, BUY, 500, D("1000"))
    assert (buy.brokerage, buy.stt, buy.exchange_charges) == (D("20.00"), D("0"), D("14.85"))
    assert (buy.sebi_fee, buy.gst, buy.stamp_duty) == (D("0.50"), D("6.36"), D("15.00"))
    assert buy.total == D("56.71")
    # Sell 500 @ 1010 (turnover 505000).
    sell = calculate_charges(Segment.EQUITY_INTRADAY, SELL, 500, D("1010"))
    assert sell.stt == D("126.25")  # 0.025%
    assert sell.exchange_charges == D("15.00")  # 14.9985
    assert sell.sebi_fee == D("0.51")  # 0.505
    assert sell.gst == D("6.39")  # 18% of 35.5035
    assert sell.total == D("168.15")
    # Small ticket: 0.03% beats the cap. Buy 10 @ 500 (turnover 5000).
    small = calculate_charges(Segment.EQUITY_INTRADAY, BUY, 10, D("500"))
    assert small.brokerage == D("1.50")
    assert small.total == D("2.11")  # 1.50 + 0.15 + 0.01 + 0.30 + 0.15


def test_futures() -> None:
    # One NIFTY lot (75) @ 26000: turnover 1,950,000.
    sell = calculate_charges(Segment.FUTURES, SELL, 75, D("26000"))
    assert sell.brokerage == D("20.00")
    assert sell.stt == D("390.00")  # 0.02% on the sell side
    assert sell.exchange_charges == D("33.74")  # 33.735
    assert sell.sebi_fee == D("1.95")
    assert sell.gst == D("10.02")  # 18% of 55.685
    assert sell.stamp_duty == D("0")
    assert sell.total == D("455.71")
    buy = calculate_charges(Segment.FUTURES, BUY, 75, D("26000"))
    assert buy.stt == D("0") and buy.stamp_duty == D("39.00")  # 0.002%
    assert buy.total == D("104.71")


def test_options() -> None:
    # Buy 75 @ premium 120: turnover 9000.
    buy = calculate_charges(Segment.OPTIONS, BUY, 75, D("120"))
    assert buy.brokerage == D("20.00")  # flat
    assert buy.exchange_charges == D("3.15")  # 0.03503% = 3.1527
    assert buy.sebi_fee == D("0.01")
    assert buy.gst == D("4.17")  # 18% of 23.1617
    assert buy.stamp_duty == D("0.27")  # 0.003%
    assert buy.total == D("27.60")
    # Sell 75 @ premium 150: turnover 11250.
    sell = calculate_charges(Segment.OPTIONS, SELL, 75, D("150"))
    assert sell.stt == D("11.25")  # 0.1% of premium
    assert sell.exchange_charges == D("3.94")  # 3.940875
    assert sell.gst == D("4.31")  # 18% of 23.952125
    assert sell.total == D("39.51")
    option = Instrument("NIFTY25DEC26000CE", Exchange.NFO, InstrumentType.CE, lot_size=75)
    assert charges_for_fill(option, ProductType.CARRYFORWARD, BUY, 75, D("120")).total == D("27.60")


def test_crypto_pays_only_the_exchange_fee() -> None:
    taker = calculate_charges(Segment.CRYPTO, BUY, 2, D("90000"))
    assert taker.trading_fee == D("180.00")  # 0.1% of 180000
    assert taker.total == D("180.00")
    assert taker.stt == taker.gst == taker.stamp_duty == D("0")
    rates = ChargeRates.from_overrides({"crypto_maker_fee": "0.0002"})
    maker = calculate_charges(Segment.CRYPTO, SELL, 2, D("90000"), rates, is_maker=True)
    assert maker.total == D("36.00")


def test_segment_from_instrument_and_product() -> None:
    assert segment_for(InstrumentType.EQ, ProductType.DELIVERY) is Segment.EQUITY_DELIVERY
    assert segment_for(InstrumentType.EQ, ProductType.MARGIN) is Segment.EQUITY_DELIVERY
    assert segment_for(InstrumentType.EQ, ProductType.INTRADAY) is Segment.EQUITY_INTRADAY
    assert segment_for(InstrumentType.FUT, ProductType.INTRADAY) is Segment.FUTURES
    assert segment_for(InstrumentType.PE, ProductType.CARRYFORWARD) is Segment.OPTIONS
    assert segment_for(InstrumentType.SPOT, ProductType.DELIVERY, Exchange.CRYPTO) is Segment.CRYPTO


def test_overrides_are_validated() -> None:
    rates = ChargeRates.from_overrides({"brokerage_cap": "10", "gst_rate": 0.18})
    assert rates.brokerage_cap == D("10")
    capped = calculate_charges(Segment.EQUITY_INTRADAY, BUY, 500, D("1000"), rates)
    assert capped.brokerage == D("10.00")
    with pytest.raises(ValueError, match="unknown charge rate"):
        ChargeRates.from_overrides({"brokerage_cpa": 1})
    with pytest.raises(ValueError, match="must not be negative"):
        ChargeRates.from_overrides({"stt_delivery": -1})
    with pytest.raises(ValueError):
        ChargeRates.from_overrides({"stt_delivery": "abc"})
