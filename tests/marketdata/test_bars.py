"""Sessions, bar windows and tick aggregation (``trading_backend.marketdata.bars``)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_backend.domain import Bar, Exchange, Timeframe
from trading_backend.domain.calendar import IST
from trading_backend.marketdata.bars import (
    BarAggregator,
    bar_window,
    resample,
    session_for,
    sessions,
    trading_seconds,
    windows,
)

NSE = Exchange.NSE
CRYPTO = Exchange.CRYPTO


def ist(hour: int, minute: int, second: int = 0, day: int = 0) -> datetime:
    return datetime(2026, 11, 23 + day, hour, minute, second, tzinfo=IST)


def utc(hour: int, minute: int, second: int = 0, day: int = 0) -> datetime:
    return datetime(2026, 11, 23 + day, hour, minute, second, tzinfo=UTC)


# -- sessions and windows ----------------------------------------------------------------------
def test_nse_session_is_0915_to_1530_ist_on_weekdays() -> None:
    session = session_for(NSE, ist(12, 0))
    assert session is not None
    assert session.open == ist(9, 15) and session.close == ist(15, 30)
    assert session.open.tzinfo is UTC
    assert session_for(NSE, ist(9, 14, 59)) is None
    assert session_for(NSE, ist(15, 30)) is None  # the close is exclusive
    assert session_for(NSE, ist(9, 15)) == session
    assert session_for(NSE, ist(12, 0, day=5)) is None  # Saturday
    assert session_for(NSE, ist(12, 0, day=6)) is None  # Sunday
    for exchange in (Exchange.BSE, Exchange.NFO, Exchange.BFO):
        assert session_for(exchange, ist(12, 0)) == session


def test_crypto_session_is_the_utc_day_every_day() -> None:
    for day in range(7):
        session = session_for(CRYPTO, utc(23, 59, 59, day))
        assert session is not None
        assert session.open == utc(0, 0, day=day)
        assert session.close == utc(0, 0, day=day + 1)


def test_naive_times_are_utc() -> None:
    assert bar_window(NSE, Timeframe.M5, datetime(2026, 11, 23, 4, 0)) == (
        ist(9, 30),
        ist(9, 35),
    )


EXPECTED_NSE = {
    # timeframe: (window of 10:20 IST, number of windows per session, last window)
    Timeframe.M1: ((ist(10, 20), ist(10, 21)), 375, (ist(15, 29), ist(15, 30))),
    Timeframe.M3: ((ist(10, 18), ist(10, 21)), 125, (ist(15, 27), ist(15, 30))),
    Timeframe.M5: ((ist(10, 20), ist(10, 25)), 75, (ist(15, 25), ist(15, 30))),
    Timeframe.M15: ((ist(10, 15), ist(10, 30)), 25, (ist(15, 15), ist(15, 30))),
    Timeframe.M30: ((ist(10, 15), ist(10, 45)), 13, (ist(15, 15), ist(15, 30))),
    Timeframe.H1: ((ist(10, 15), ist(11, 15)), 7, (ist(15, 15), ist(15, 30))),
    Timeframe.D1: ((ist(9, 15), ist(15, 30)), 1, (ist(9, 15), ist(15, 30))),
}


@pytest.mark.parametrize("timeframe", list(Timeframe))
def test_nse_windows_align_to_the_open_and_are_cut_at_the_close(timeframe: Timeframe) -> None:
    at_1020, count, last = EXPECTED_NSE[timeframe]
    assert bar_window(NSE, timeframe, ist(10, 20, 30)) == at_1020
    assert bar_window(NSE, timeframe, ist(9, 15)) == (
        ist(9, 15),
        min(ist(9, 15) + timeframe.duration, ist(15, 30)),
    )
    assert bar_window(NSE, timeframe, ist(15, 29, 59)) == last
    assert bar_window(NSE, timeframe, ist(15, 30)) is None
    assert bar_window(NSE, timeframe, ist(8, 0)) is None
    day = list(windows(NSE, timeframe, ist(0, 0), ist(0, 0, day=1)))
    assert len(day) == count
    assert day[0][0] == ist(9, 15) and day[-1] == last
    assert all(a[1] == b[0] for a, b in itertools.pairwise(day))  # contiguous


def test_the_hourly_bars_of_an_nse_session() -> None:
    hours = list(windows(NSE, Timeframe.H1, ist(0, 0), ist(23, 0)))
    assert [
        (s.astimezone(IST).time().isoformat("minutes"), (e - s).seconds // 60) for s, e in hours
    ] == [
        ("09:15", 60),
        ("10:15", 60),
        ("11:15", 60),
        ("12:15", 60),
        ("13:15", 60),
        ("14:15", 60),
        ("15:15", 15),
    ]


@pytest.mark.parametrize("timeframe", list(Timeframe))
def test_crypto_windows_align_to_utc_midnight(timeframe: Timeframe) -> None:
    when = utc(13, 47, 12)
    start, end = bar_window(CRYPTO, timeframe, when) or (None, None)
    assert start is not None and end is not None
    assert end - start == timeframe.duration
    assert start <= when < end
    assert (start - utc(0, 0)) % timeframe.duration == timedelta(0)
    assert bar_window(CRYPTO, timeframe, utc(0, 0, day=5)) == (
        utc(0, 0, day=5),
        utc(0, 0, day=5) + timeframe.duration,
    )
    day = list(windows(CRYPTO, timeframe, utc(0, 0), utc(0, 0, day=1)))
    assert len(day) == timedelta(days=1) // timeframe.duration


def test_windows_and_sessions_across_a_weekend() -> None:
    friday, monday = ist(0, 0, day=4), ist(23, 0, day=7)
    assert [s.open for s in sessions(NSE, friday, monday)] == [ist(9, 15, day=4), ist(9, 15, day=7)]
    daily = list(windows(NSE, Timeframe.D1, friday, monday))
    assert [w[0] for w in daily] == [ist(9, 15, day=4), ist(9, 15, day=7)]
    # a range starting mid-session yields only windows starting inside it
    assert next(windows(NSE, Timeframe.H1, ist(10, 0), ist(12, 0)))[0] == ist(10, 15)
    assert trading_seconds(NSE, ist(15, 0, day=4), ist(9, 45, day=7)) == 60 * 60
    assert trading_seconds(CRYPTO, utc(0, 0), utc(0, 0, day=2)) == 2 * 86400


def test_other_indian_exchanges_follow_the_calendar_closes() -> None:
    cds = session_for(Exchange.CDS, ist(16, 59))
    mcx = session_for(Exchange.MCX, ist(23, 0))
    assert cds is not None and cds.close == ist(17, 0)
    assert mcx is not None and mcx.open == ist(9, 0) and mcx.close == ist(23, 30)


# -- aggregation -------------------------------------------------------------------------------
def D(value: str) -> Decimal:
    return Decimal(value)


def ohlcv(bar: Bar) -> tuple[Decimal, Decimal, Decimal, Decimal, int]:
    return bar.open, bar.high, bar.low, bar.close, bar.volume


def test_ohlcv_is_exact_and_a_later_tick_completes_the_bar() -> None:
    agg = BarAggregator([Timeframe.M1, Timeframe.M5])
    ticks = [
        (ist(9, 15, 0), "100.05", 10),
        (ist(9, 15, 10), "101.10", 5),
        (ist(9, 15, 20), "99.95", 7),
        (ist(9, 15, 59), "100.50", 1),
        (ist(9, 16, 0), "100.55", 3),  # completes 09:15 1m
        (ist(9, 16, 30), "98.00", 2),
        (ist(9, 18, 5), "102.00", 4),  # completes 09:16 1m; 09:17 had no ticks
    ]
    done: list[Bar] = []
    for when, price, volume in ticks:
        done += agg.on_tick("TCS", NSE, D(price), volume, when)
    assert [(b.timeframe, b.start, b.end) for b in done] == [
        (Timeframe.M1, ist(9, 15), ist(9, 16)),
        (Timeframe.M1, ist(9, 16), ist(9, 17)),
    ]
    assert ohlcv(done[0]) == (D("100.05"), D("101.10"), D("99.95"), D("100.50"), 23)
    assert ohlcv(done[1]) == (D("100.55"), D("100.55"), D("98.00"), D("98.00"), 5)
    assert all(b.complete and b.symbol == "TCS" and b.exchange is NSE for b in done)
    five = agg.current("NSE:TCS", Timeframe.M5)
    assert five is not None and not five.complete
    assert (five.start, five.end) == (ist(9, 15), ist(9, 20))
    assert ohlcv(five) == (D("100.05"), D("102.00"), D("98.00"), D("102.00"), 32)
    forming = agg.current("NSE:TCS", Timeframe.M1)
    assert forming is not None and forming.start == ist(9, 18)
    assert agg.current("NSE:TCS", Timeframe.H1) is None  # not aggregated
    assert agg.current("NSE:INFY", Timeframe.M1) is None


def test_gaps_fabricate_no_empty_bars() -> None:
    agg = BarAggregator([Timeframe.M1])
    done = agg.on_tick("TCS", NSE, D("1"), 1, ist(10, 0))
    done += agg.on_tick("TCS", NSE, D("2"), 1, ist(10, 7, 30))
    done += agg.on_tick("TCS", NSE, D("3"), 1, ist(11, 0))
    done += agg.flush(ist(12, 0))
    assert [b.start for b in done] == [ist(10, 0), ist(10, 7), ist(11, 0)]


def test_flush_completes_bars_whose_window_ended() -> None:
    agg = BarAggregator([Timeframe.M1, Timeframe.M15, Timeframe.D1])
    agg.on_tick("BTCUSDT", CRYPTO, D("50000"), 2, utc(10, 0, 5))
    agg.on_tick("ETHUSDT", CRYPTO, D("3000"), 3, utc(10, 0, 40))
    assert agg.flush(utc(10, 0, 59)) == []
    one = agg.flush(utc(10, 1))
    assert [(b.key, b.timeframe, b.start) for b in one] == [
        ("CRYPTO:BTCUSDT", Timeframe.M1, utc(10, 0)),
        ("CRYPTO:ETHUSDT", Timeframe.M1, utc(10, 0)),
    ]
    assert agg.flush(utc(10, 5)) == []  # nothing twice
    assert agg.current("CRYPTO:BTCUSDT", Timeframe.M1) is None
    rest = agg.flush(utc(0, 0, day=1))
    assert [(b.key, b.timeframe) for b in rest] == [
        ("CRYPTO:BTCUSDT", Timeframe.M15),
        ("CRYPTO:ETHUSDT", Timeframe.M15),
        ("CRYPTO:BTCUSDT", Timeframe.D1),
        ("CRYPTO:ETHUSDT", Timeframe.D1),
    ]
    assert rest[-1].end == utc(0, 0, day=1) and rest[-1].volume == 3
    # a late tick for a flushed window is ignored, the next one opens a new bar
    assert agg.on_tick("BTCUSDT", CRYPTO, D("1"), 1, utc(10, 0, 30)) == []
    assert agg.current("CRYPTO:BTCUSDT", Timeframe.M1) is None
    agg.on_tick("BTCUSDT", CRYPTO, D("51000"), 1, utc(0, 0, 1, day=1))
    forming = agg.current("CRYPTO:BTCUSDT", Timeframe.D1)
    assert forming is not None and forming.open == D("51000") and forming.volume == 1


def test_nse_cut_bar_and_daily_bar_close_at_the_session_end() -> None:
    agg = BarAggregator([Timeframe.H1, Timeframe.D1])
    agg.on_tick("TCS", NSE, D("10"), 1, ist(9, 15))
    agg.on_tick("TCS", NSE, D("12"), 1, ist(15, 20))
    agg.on_tick("TCS", NSE, D("11"), 1, ist(15, 29, 59))
    done = agg.on_tick("TCS", NSE, D("99"), 100, ist(15, 45))  # after the close: ignored
    assert [(b.timeframe, b.start, b.end) for b in done] == [
        (Timeframe.H1, ist(15, 15), ist(15, 30)),
        (Timeframe.D1, ist(9, 15), ist(15, 30)),
    ]
    assert ohlcv(done[0]) == (D("12"), D("12"), D("11"), D("11"), 2)
    assert ohlcv(done[1]) == (D("10"), D("12"), D("10"), D("11"), 3)
    assert agg.current("NSE:TCS", Timeframe.H1) is None


def test_out_of_session_ticks_are_ignored() -> None:
    agg = BarAggregator(list(Timeframe))
    for when in (ist(8, 0), ist(9, 14, 59), ist(15, 30), ist(20, 0), ist(11, 0, day=5)):
        assert agg.on_tick("TCS", NSE, D("5"), 9, when) == []
    assert all(agg.current("NSE:TCS", tf) is None for tf in Timeframe)
    assert agg.flush(ist(23, 0, day=6)) == []
    agg.on_tick("TCS", NSE, D("6"), 1, ist(9, 15))
    day = agg.current("NSE:TCS", Timeframe.D1)
    assert day is not None and ohlcv(day) == (D("6"), D("6"), D("6"), D("6"), 1)


def test_string_exchanges_and_ist_timestamps_share_the_instrument() -> None:
    agg = BarAggregator([Timeframe.M1])
    agg.on_tick("TCS", "NSE", D("1"), 1, ist(10, 0, 1))
    agg.on_tick("TCS", NSE, D("2"), 1, ist(10, 0, 2).astimezone(UTC))
    bar = agg.current("NSE:TCS", Timeframe.M1)
    assert bar is not None and bar.volume == 2 and bar.exchange is NSE


def test_resample_refuses_bars_that_straddle_windows() -> None:
    agg = BarAggregator([Timeframe.M3])
    agg.on_tick("TCS", NSE, D("1"), 1, ist(9, 18))
    bars = agg.flush(ist(10, 0))
    with pytest.raises(ValueError, match="does not fit"):
        resample(bars, Timeframe.M5)
    assert resample(bars, Timeframe.M15)[0].start == ist(9, 15)


# -- property: 1m then 5m (or 1d) equals direct ----------------------------------------------
tick_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2 * 86400),  # seconds after Monday 00:00 IST
        st.integers(min_value=1, max_value=100_000),  # price in paise
        st.integers(min_value=0, max_value=1000),
    ),
    max_size=80,
)


def _aggregate(
    exchange: Exchange, timeframe: Timeframe, ticks: list[tuple[int, int, int]]
) -> list[Bar]:
    agg = BarAggregator([timeframe])
    out: list[Bar] = []
    base = ist(0, 0)
    for seconds, paise, volume in sorted(ticks, key=lambda t: t[0]):
        out += agg.on_tick(
            "X", exchange, Decimal(paise) / 100, volume, base + timedelta(seconds=seconds)
        )
    out += agg.flush(base + timedelta(days=3))
    return out


@settings(max_examples=150, deadline=None)
@given(ticks=tick_lists, exchange=st.sampled_from([NSE, CRYPTO]))
def test_resampling_1m_bars_equals_direct_aggregation(
    ticks: list[tuple[int, int, int]], exchange: Exchange
) -> None:
    one_minute = _aggregate(exchange, Timeframe.M1, ticks)
    for target in (Timeframe.M5, Timeframe.M15, Timeframe.H1, Timeframe.D1):
        assert resample(one_minute, target) == _aggregate(exchange, target, ticks)
