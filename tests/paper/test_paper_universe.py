"""The instrument universe: Nifty 50, indices, monthly futures, crypto."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from trading_backend.brokers.paper.universe import (
    crypto_spot,
    current_expiry,
    default_universe,
    futures_symbol,
    index_futures,
    last_tuesday,
    nifty50_equities,
)
from trading_backend.domain import Exchange, InstrumentType


def test_nifty50_has_fifty_distinct_nse_equities() -> None:
    specs = nifty50_equities()
    symbols = {s.instrument.symbol for s in specs}
    assert len(specs) == 50 == len(symbols)
    for spec in specs:
        instrument = spec.instrument
        assert instrument.exchange is Exchange.NSE
        assert instrument.instrument_type is InstrumentType.EQ
        assert instrument.lot_size == 1
        assert spec.daily_volume > 0
        expected_tick = Decimal("0.01") if spec.initial_price < 250 else Decimal("0.05")
        assert instrument.tick_size == expected_tick
        assert spec.initial_price % instrument.tick_size == 0
    prices = {s.instrument.symbol: s.initial_price for s in specs}
    assert 1400 <= prices["RELIANCE"] <= 1550
    assert 3000 <= prices["TCS"] <= 3200
    assert 950 <= prices["HDFCBANK"] <= 1000
    assert 1350 <= prices["ICICIBANK"] <= 1400
    assert 900 <= prices["SBIN"] <= 1000


def test_last_tuesday_and_rolling() -> None:
    assert last_tuesday(2025, 12) == date(2025, 12, 30)
    assert last_tuesday(2026, 1) == date(2026, 1, 27)
    assert last_tuesday(2025, 9) == date(2025, 9, 30)
    assert current_expiry(date(2025, 12, 30)) == date(2025, 12, 30)  # expiry day: still current
    assert current_expiry(date(2025, 12, 31)) == date(2026, 1, 27)  # past it: next month
    assert futures_symbol("NIFTY", date(2025, 12, 30)) == "NIFTY25DECFUT"
    assert futures_symbol("BANKNIFTY", date(2026, 1, 27)) == "BANKNIFTY26JANFUT"


def test_index_futures_contracts() -> None:
    futures = {s.instrument.symbol: s for s in index_futures(date(2025, 12, 1))}
    assert set(futures) == {"NIFTY25DECFUT", "BANKNIFTY25DECFUT"}
    nifty = futures["NIFTY25DECFUT"]
    assert nifty.instrument.exchange is Exchange.NFO
    assert nifty.instrument.instrument_type is InstrumentType.FUT
    assert nifty.instrument.lot_size == 75
    assert futures["BANKNIFTY25DECFUT"].instrument.lot_size == 35
    assert nifty.instrument.expiry == date(2025, 12, 30)
    assert nifty.underlying_key == "NSE:NIFTY"
    assert 0 < nifty.basis < Decimal("0.01")
    rolled = {s.instrument.symbol for s in index_futures(date(2025, 12, 31))}
    assert rolled == {"NIFTY26JANFUT", "BANKNIFTY26JANFUT"}


def test_default_universe_contents() -> None:
    specs = default_universe(date(2025, 12, 1))
    keys = [s.key for s in specs]
    assert len(keys) == len(set(keys))
    by_key = {s.key: s for s in specs}
    for index in ("NSE:NIFTY", "NSE:BANKNIFTY"):
        assert by_key[index].instrument.instrument_type is InstrumentType.INDEX
        assert not by_key[index].instrument.tradable
    assert 25000 <= by_key["NSE:NIFTY"].initial_price <= 27000
    assert 55000 <= by_key["NSE:BANKNIFTY"].initial_price <= 60000
    for spec in crypto_spot():
        assert spec.instrument.exchange is Exchange.CRYPTO
        assert spec.instrument.instrument_type is InstrumentType.SPOT
        assert spec.instrument.tick_size == Decimal("0.01")
        assert spec.key in by_key
