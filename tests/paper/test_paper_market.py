"""SimulatedMarket: determinism, tick discipline, futures tracking, listeners."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from tests.paper.paper_helpers import NIFTY_FUT, TODAY
from trading_backend.brokers.paper import Quote, SimulatedMarket
from trading_backend.brokers.paper.universe import default_universe
from trading_backend.domain import Exchange


async def run_prices(seed: int, steps: int) -> dict[str, Decimal]:
    market = SimulatedMarket(seed=seed, instruments=default_universe(TODAY))
    for _ in range(steps):
        await market.step()
    return {q.key: q.ltp for q in market.quotes()}


async def test_same_seed_same_prices_and_different_seed_differs() -> None:
    first = await run_prices(7, 50)
    again = await run_prices(7, 50)
    other = await run_prices(8, 50)
    assert first == again
    assert first != other
    assert first != await run_prices(7, 49)


async def test_adding_instruments_does_not_change_existing_paths() -> None:
    specs = default_universe(TODAY)
    small = SimulatedMarket(seed=3, instruments=[s for s in specs if s.key == "NSE:TCS"])
    full = SimulatedMarket(seed=3, instruments=specs)
    for _ in range(20):
        await small.step()
        await full.step()
    assert small.quote("TCS", "NSE").ltp == full.quote("TCS", "NSE").ltp


async def test_prices_stay_on_tick_and_quotes_are_consistent(market: SimulatedMarket) -> None:
    for _ in range(30):
        quotes = await market.step()
    assert market.tick_count == 30
    for quote in quotes:
        tick = market.get_instrument(quote.symbol, quote.exchange).tick_size  # type: ignore[union-attr]
        for price in (quote.ltp, quote.bid, quote.ask, quote.high, quote.low, quote.open):
            assert price % tick == 0, (quote.symbol, price)
        assert quote.bid == quote.ltp - tick
        assert quote.ask == quote.ltp + tick
        assert quote.low <= quote.ltp <= quote.high
        assert quote.change == quote.ltp - quote.close
        assert quote.sequence == 30


async def test_prices_move_plausibly(market: SimulatedMarket) -> None:
    start = market.quote("RELIANCE", "NSE").ltp
    for _ in range(300):
        await market.step()
    quote = market.quote("RELIANCE", "NSE")
    assert quote.ltp != start
    assert abs(quote.ltp / start - 1) < Decimal("0.05")  # five simulated minutes
    assert quote.volume > 0 and quote.tick_volume > 0
    assert market.quote("NIFTY", "NSE").tick_volume == 0  # an index does not trade


async def test_futures_track_index_plus_basis(market: SimulatedMarket) -> None:
    spec = next(s for s in default_universe(TODAY) if s.instrument.symbol == NIFTY_FUT)
    for _ in range(25):
        await market.step()
        index = market.quote("NIFTY", "NSE").ltp
        future = market.quote(NIFTY_FUT, "NFO").ltp
        assert future > index
        assert abs(future - index * (1 + spec.basis)) <= Decimal("0.05")
    await market.set_price("NIFTY", "NSE", "25000")
    assert abs(market.quote(NIFTY_FUT, "NFO").ltp - 25000 * (1 + spec.basis)) <= Decimal("0.05")


async def test_lookup_is_case_insensitive_and_unknown_raises(market: SimulatedMarket) -> None:
    assert market.get_instrument("reliance", "nse") is not None
    assert market.get_instrument("RELIANCE", Exchange.NSE) is not None
    assert market.get_instrument("NOPE", "NSE") is None
    assert market.get_instrument("RELIANCE", "NOWHERE") is None
    assert len(market.instruments()) == len(default_universe(TODAY))
    with pytest.raises(KeyError):
        market.quote("NOPE", "NSE")
    with pytest.raises(KeyError):
        await market.set_price("NOPE", "NSE", 1)


async def test_listeners_receive_ticks_and_forced_prices(market: SimulatedMarket) -> None:
    seen: list[list[Quote]] = []

    async def listener(quotes: list[Quote]) -> None:
        seen.append(quotes)

    market.add_listener(listener)
    await market.step()
    assert len(seen) == 1 and len(seen[0]) == len(market.instruments())
    quote = await market.set_price("INFY", "NSE", "1500.02", volume=123)
    assert quote.ltp == Decimal("1500.00")  # snapped to the 0.05 tick
    assert quote.tick_volume == 123
    assert [q.symbol for q in seen[1]] == ["INFY"]
    await market.set_price("NIFTY", "NSE", "26100")
    assert {q.symbol for q in seen[2]} == {"NIFTY", NIFTY_FUT}
    market.remove_listener(listener)
    await market.step()
    assert len(seen) == 3


async def test_set_price_does_not_disturb_the_random_path() -> None:
    plain = SimulatedMarket(seed=11, instruments=default_universe(TODAY))
    forced = SimulatedMarket(seed=11, instruments=default_universe(TODAY))
    await forced.set_price("TCS", "NSE", "3100")
    for _ in range(10):
        await plain.step()
        await forced.step()
    assert plain.quote("INFY", "NSE").ltp == forced.quote("INFY", "NSE").ltp


async def test_a_failing_listener_does_not_stop_the_market(market: SimulatedMarket) -> None:
    calls: list[int] = []

    async def broken(quotes: list[Quote]) -> None:
        raise RuntimeError("boom")

    async def fine(quotes: list[Quote]) -> None:
        calls.append(len(quotes))

    market.add_listener(broken)
    market.add_listener(fine)
    await market.step()
    assert calls


async def test_run_steps_until_cancelled(market: SimulatedMarket) -> None:
    async def stop_after_three(quotes: list[Quote]) -> None:
        if market.tick_count == 3:
            raise asyncio.CancelledError

    market.add_listener(stop_after_three)
    with pytest.raises(asyncio.CancelledError):
        await market.run(interval=0.001)
    assert market.tick_count == 3


async def test_start_new_day_rolls_the_close(market: SimulatedMarket) -> None:
    await market.set_price("SBIN", "NSE", "970")
    market.start_new_day()
    quote = market.quote("SBIN", "NSE")
    assert quote.close == quote.open == Decimal("970.00")
    assert quote.change == 0 and quote.volume == 0
