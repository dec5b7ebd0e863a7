"""Freeze quantities and the trading calendar (sessions, weekends, holidays)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from tests.risk.helpers import BANKNIFTY_FUT, BTC, NIFTY_FUT, TCS
from trading_backend.domain import Exchange, Instrument, InstrumentType
from trading_backend.domain.calendar import IST
from trading_backend.risk import (
    FREEZE_QUANTITIES,
    NSE_HOLIDAYS_2026,
    TradingCalendar,
    freeze_quantity,
)


def test_index_derivatives_have_the_nse_freeze_quantities() -> None:
    assert freeze_quantity(NIFTY_FUT) == 1800  # underlying given
    assert freeze_quantity(BANKNIFTY_FUT) == 600  # underlying from the symbol
    option = Instrument("NIFTY01DEC2626000CE", Exchange.NFO, InstrumentType.CE, lot_size=65)
    assert freeze_quantity(option) == 1800
    nxt = Instrument("NIFTYNXT5026DECFUT", Exchange.NFO, InstrumentType.FUT, lot_size=25)
    assert freeze_quantity(nxt) == 600  # the longest matching underlying, not NIFTY


def test_others_have_no_freeze_quantity_here() -> None:
    assert freeze_quantity(TCS) is None
    assert freeze_quantity(BTC) is None
    stock_future = Instrument("RELIANCE26DECFUT", Exchange.NFO, InstrumentType.FUT, lot_size=500)
    assert freeze_quantity(stock_future) is None


def test_the_table_is_configurable() -> None:
    table = {**FREEZE_QUANTITIES, (Exchange.BFO, "SENSEX"): 1000}
    sensex = Instrument("SENSEX26DECFUT", Exchange.BFO, InstrumentType.FUT, lot_size=20)
    assert freeze_quantity(sensex) is None
    assert freeze_quantity(sensex, table) == 1000


def ist(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=IST)


@pytest.mark.parametrize(
    ("exchange", "when", "open_"),
    [
        (Exchange.NSE, ist(2026, 11, 25, 9, 14), False),
        (Exchange.NSE, ist(2026, 11, 25, 9, 15), True),
        (Exchange.NSE, ist(2026, 11, 25, 15, 29), True),
        (Exchange.NSE, ist(2026, 11, 25, 15, 30), False),  # the close is exclusive
        (Exchange.NFO, ist(2026, 11, 24, 10, 0), False),  # Guru Nanak Jayanti
        (Exchange.BSE, ist(2026, 11, 28, 10, 0), False),  # Saturday
        (Exchange.CDS, ist(2026, 11, 25, 16, 30), True),
        (Exchange.CDS, ist(2026, 11, 25, 17, 0), False),
        (Exchange.MCX, ist(2026, 11, 25, 23, 0), True),
        (Exchange.MCX, ist(2026, 11, 25, 23, 30), False),
        (Exchange.MCX, ist(2026, 11, 24, 23, 0), True),  # MCX holidays are not modelled
        (Exchange.CRYPTO, ist(2026, 11, 28, 3, 0), True),  # Saturday night
    ],
)
def test_sessions(exchange: Exchange, when: datetime, open_: bool) -> None:
    calendar = TradingCalendar()
    assert calendar.is_open(exchange, when) is open_
    # Asking again (cached window) and in UTC gives the same answer.
    assert calendar.is_open(exchange, when.astimezone(UTC)) is open_


def test_the_cache_follows_time_across_windows() -> None:
    calendar = TradingCalendar()
    answers = [
        calendar.is_open(Exchange.NSE, ist(2026, 11, 25, hour, minute))
        for hour, minute in [(9, 0), (9, 30), (15, 45), (10, 0), (23, 59)]
    ]
    assert answers == [False, True, False, True, False]


def test_holidays_2026_are_the_sixteen_nse_days() -> None:
    assert len(NSE_HOLIDAYS_2026) == 16
    assert all(day.weekday() < 5 for day in NSE_HOLIDAYS_2026)
    assert date(2026, 1, 15) in NSE_HOLIDAYS_2026
    assert date(2026, 12, 25) in NSE_HOLIDAYS_2026


def test_holidays_and_special_sessions_are_configurable() -> None:
    budget_sunday = date(2026, 2, 1)
    calendar = TradingCalendar(
        holidays={Exchange.NSE: frozenset({date(2026, 11, 25)})},
        special_sessions={Exchange.NSE: {budget_sunday: (time(9, 15), time(15, 30))}},
    )
    assert not calendar.is_open(Exchange.NSE, ist(2026, 11, 25, 10))
    assert calendar.is_open(Exchange.NSE, ist(2026, 2, 1, 10))
    assert calendar.is_trading_day(Exchange.NSE, budget_sunday)
    assert TradingCalendar.always_open().is_open(Exchange.NSE, ist(2026, 11, 28, 2))


def test_describe() -> None:
    calendar = TradingCalendar()
    assert calendar.describe(Exchange.NSE) == "09:15-15:30 IST on trading days"
    assert calendar.describe(Exchange.CRYPTO) == "always open"
