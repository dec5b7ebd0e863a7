"""Index option chains in the paper universe and market, and trading them."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from tests.paper.paper_helpers import TODAY, BrokerFactory
from trading_backend.brokers.base import BrokerOrder
from trading_backend.brokers.paper import Quote, SimulatedMarket
from trading_backend.brokers.paper.market import OptionChainRow
from trading_backend.brokers.paper.universe import (
    default_universe,
    index_options,
    option_expiries,
    option_symbol,
)
from trading_backend.domain import Exchange, InstrumentType, OrderStatus
from trading_backend.marketdata.options import VolSmile

TICK = Decimal("0.05")
OPENING = datetime(2025, 12, 1, 4, 0, tzinfo=UTC)  # Monday 09:30 IST
NIFTY_EXPIRIES = [date(2025, 12, 2), date(2025, 12, 9), date(2025, 12, 30)]


class Clock:
    def __init__(self, now: datetime = OPENING) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_market(clock: Clock | None = None, **kw: object) -> SimulatedMarket:
    return SimulatedMarket(
        seed=42,
        instruments=default_universe(TODAY, options=True),
        clock=clock or Clock(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def market() -> SimulatedMarket:
    """Overrides the package fixture: the universe with options and a clock on ``TODAY``."""
    return make_market()


def by_strike(rows: list[OptionChainRow]) -> dict[Decimal, OptionChainRow]:
    return {row.strike: row for row in rows}


def atm_row(market: SimulatedMarket, underlying: str = "NIFTY") -> OptionChainRow:
    spot = market.quote(underlying, "NSE").ltp
    return min(market.option_chain(underlying), key=lambda r: abs(r.strike - spot))


# -- universe ---------------------------------------------------------------------------------
def test_expiry_calendar() -> None:
    assert option_expiries("NIFTY", TODAY) == NIFTY_EXPIRIES  # two weeklies + the monthly
    assert option_expiries("BANKNIFTY", TODAY) == [date(2025, 12, 30)]  # monthly only
    # expiry day itself still lists that day's contracts
    assert option_expiries("NIFTY", date(2025, 12, 2)) == NIFTY_EXPIRIES
    # the monthly is one of the two weeklies: only two expiries
    assert option_expiries("NIFTY", date(2025, 12, 24)) == [date(2025, 12, 30), date(2026, 1, 6)]
    # monthly expiry passed: January's monthly is listed
    assert option_expiries("NIFTY", date(2025, 12, 31)) == [
        date(2026, 1, 6),
        date(2026, 1, 13),
        date(2026, 1, 27),
    ]
    assert option_expiries("BANKNIFTY", date(2025, 12, 31)) == [date(2026, 1, 27)]


def test_symbols_follow_angel_one() -> None:
    assert option_symbol("NIFTY", date(2025, 12, 2), 26000, "CE") == "NIFTY02DEC2526000CE"
    assert option_symbol("BANKNIFTY", date(2025, 12, 30), 58000, "PE") == "BANKNIFTY30DEC2558000PE"
    assert option_symbol("NIFTY", date(2026, 1, 6), Decimal("25050"), "PE") == "NIFTY06JAN2625050PE"
    with pytest.raises(ValueError):
        option_symbol("NIFTY", date(2026, 1, 6), Decimal("25050.5"), "PE")


def test_universe_lists_option_specs_only_on_request() -> None:
    plain = default_universe(TODAY)
    full = default_universe(TODAY, options=True)
    options = index_options(TODAY)
    assert not any(s.instrument.is_option for s in plain)
    assert [s.key for s in full] == [s.key for s in plain] + [s.key for s in options]
    assert len(options) == (3 * 31 + 1 * 31) * 2
    assert options == index_options(TODAY)  # deterministic given the date
    by_key = {s.key: s for s in options}
    ce = by_key["NFO:NIFTY02DEC2526000CE"]
    assert ce.option_of == "NSE:NIFTY" and ce.underlying_key is None
    instrument = ce.instrument
    assert instrument.instrument_type is InstrumentType.CE and instrument.exchange is Exchange.NFO
    assert instrument.expiry == date(2025, 12, 2) and instrument.strike == Decimal(26000)
    assert instrument.underlying == "NIFTY" and instrument.lot_size == 75
    assert instrument.tick_size == TICK and instrument.tradable
    assert by_key["NFO:BANKNIFTY30DEC2558000PE"].instrument.lot_size == 35
    for spec in options:
        assert spec.initial_price >= TICK and spec.initial_price % TICK == 0
        assert spec.daily_volume > 0


# -- the chain --------------------------------------------------------------------------------
def test_chain_strikes_lot_sizes_and_expiries(market: SimulatedMarket) -> None:
    assert market.expiries("NIFTY") == NIFTY_EXPIRIES
    assert market.expiries("banknifty") == [date(2025, 12, 30)]
    chain = market.option_chain("NIFTY")  # nearest expiry
    assert [r.strike for r in chain] == [Decimal(25250 + 50 * i) for i in range(31)]
    assert {r.expiry for r in chain} == {date(2025, 12, 2)}
    row = by_strike(chain)[Decimal(26000)]
    assert (row.ce.symbol, row.pe.symbol) == ("NIFTY02DEC2526000CE", "NIFTY02DEC2526000PE")
    assert row.ce.lot_size == row.pe.lot_size == 75 and row.underlying == "NIFTY"
    monthly = market.option_chain("NIFTY", date(2025, 12, 30))
    assert monthly[0].ce.symbol == "NIFTY30DEC2525250CE"
    bank = market.option_chain("BANKNIFTY")
    assert [r.strike for r in bank] == [Decimal(56500 + 100 * i) for i in range(31)]
    assert all(r.ce.lot_size == 35 and r.expiry == date(2025, 12, 30) for r in bank)
    for r in chain + bank:
        for side in (r.ce, r.pe):
            assert side.bid <= side.ltp <= side.ask
            assert side.ltp % TICK == 0 and side.bid % TICK == 0 and side.ask % TICK == 0
            assert side.ltp >= TICK
    with pytest.raises(KeyError):
        market.option_chain("RELIANCE")
    with pytest.raises(KeyError):
        market.expiries("NOPE")
    with pytest.raises(KeyError):
        market.option_chain("NIFTY", date(2025, 12, 3))


async def test_parity_on_mid_prices_within_the_spread(market: SimulatedMarket) -> None:
    for _ in range(5):
        await market.step()
    spot = float(market.quote("NIFTY", "NSE").ltp)
    for expiry in market.expiries("NIFTY"):
        t = (datetime.combine(expiry, datetime.min.time()) - datetime(2025, 12, 1)).days
        t_years = (t + (15.5 - 9.5) / 24) / 365
        forward = spot * (1 + 0.065 * t_years)
        discount = math.exp(-0.065 * t_years)
        for row in market.option_chain("NIFTY", expiry):
            ce_mid = (row.ce.bid + row.ce.ask) / 2
            pe_mid = (row.pe.bid + row.pe.ask) / 2
            parity = Decimal(repr(discount * (forward - float(row.strike))))
            slack = (row.ce.ask - row.ce.bid) / 2 + (row.pe.ask - row.pe.bid) / 2 + TICK
            assert abs(ce_mid - pe_mid - parity) <= slack, (row.strike, expiry)


async def test_index_moves_reprice_options_in_the_same_call(market: SimulatedMarket) -> None:
    seen: list[list[Quote]] = []

    async def listener(quotes: list[Quote]) -> None:
        seen.append(quotes)

    market.add_listener(listener)
    before = by_strike(market.option_chain("NIFTY"))
    await market.set_price("NIFTY", "NSE", "26200")
    after = by_strike(market.option_chain("NIFTY"))
    notified = {q.symbol for q in seen[-1]}
    assert {"NIFTY", "NIFTY25DECFUT", "NIFTY02DEC2526000CE", "NIFTY30DEC2526000PE"} <= notified
    assert not any(s.startswith("BANKNIFTY") for s in notified)
    ups = downs = 0
    for strike, row in after.items():
        old = before[strike]
        assert row.ce.ltp >= old.ce.ltp and row.pe.ltp <= old.pe.ltp
        ups += row.ce.ltp > old.ce.ltp
        downs += row.pe.ltp < old.pe.ltp
    assert ups >= 25 and downs >= 15  # all but the floored far wings moved
    atm = after[Decimal(26000)]
    assert atm.ce.ltp > before[Decimal(26000)].ce.ltp + 100  # delta ~0.5 x 200 points and more


async def test_options_move_with_every_step(market: SimulatedMarket) -> None:
    symbol = atm_row(market).ce.symbol
    prices = set()
    for _ in range(20):
        quotes = {q.symbol: q for q in await market.step()}
        assert symbol in quotes
        option = quotes[symbol]
        assert option.tick_volume > 0 and option.tick_volume % 75 == 0
        prices.add(option.ltp)
    assert len(prices) > 5


async def test_volume_is_highest_at_the_money(market: SimulatedMarket) -> None:
    await market.set_price("NIFTY", "NSE", "26000")  # typical (noise-free) option volumes
    volumes = {
        row.strike: market.quote(row.ce.symbol, "NFO").tick_volume
        for row in market.option_chain("NIFTY")
    }
    atm = volumes[Decimal(26000)]
    assert atm == max(volumes.values())
    assert volumes[Decimal(25250)] == volumes[Decimal(26750)] == 75  # at least one lot
    assert volumes[Decimal(26000)] > volumes[Decimal(26100)] > volumes[Decimal(26300)]


async def test_deep_out_of_the_money_floors_at_one_tick(market: SimulatedMarket) -> None:
    await market.set_price("NIFTY", "NSE", "28000")
    far = by_strike(market.option_chain("NIFTY"))[Decimal(25250)]
    assert far.pe.ltp == Decimal("0.05") and far.pe.bid == Decimal("0.05")
    assert far.pe.ask == Decimal("0.10")
    assert far.ce.ltp > Decimal(2700)  # deep in the money: about the forward's intrinsic value
    quote = market.quote(far.pe.symbol, "NFO")
    assert quote.bid == Decimal("0.05") and quote.ask == Decimal("0.10")


def test_spread_is_half_a_percent_each_side(market: SimulatedMarket) -> None:
    row = atm_row(market, "BANKNIFTY")
    for side in (row.ce, row.pe):
        half = max(TICK, (side.ltp * Decimal("0.005") / TICK).quantize(Decimal(1)) * TICK)
        assert side.bid == side.ltp - half and side.ask == side.ltp + half


def test_greeks_signs(market: SimulatedMarket) -> None:
    row = atm_row(market)
    ce, pe = row.ce, row.pe
    assert 0.3 < ce.delta < 0.7 and -0.7 < pe.delta < -0.3
    assert ce.delta - pe.delta == pytest.approx(1.0, abs=0.01)
    assert ce.gamma > 0 and pe.gamma > 0
    assert ce.vega > 0 and pe.vega > 0
    assert ce.theta < 0 and pe.theta < 0
    assert ce.rho > 0 > pe.rho
    assert ce.iv is not None and 0.11 < ce.iv < 0.16  # near the 13% ATM of the smile
    greeks = market.greeks(ce.symbol, "NFO")
    assert greeks.delta == ce.delta and greeks.theta == ce.theta
    assert market.greeks(ce.symbol.lower(), Exchange.NFO) == greeks
    # the put skew: an OTM put's iv is above an equally distant OTM call's
    chain = by_strike(market.option_chain("NIFTY", date(2025, 12, 30)))
    put_iv, call_iv = chain[Decimal(25500)].pe.iv, chain[Decimal(26500)].ce.iv
    assert put_iv is not None and call_iv is not None and put_iv > call_iv
    with pytest.raises(ValueError):
        market.greeks("NIFTY25DECFUT", "NFO")
    with pytest.raises(KeyError):
        market.greeks("NIFTY02DEC2599999CE", "NFO")


def test_smile_can_be_chosen() -> None:
    default = atm_row(make_market())
    rich = atm_row(make_market(smile=VolSmile(atm_vol=0.3)))
    assert rich.ce.ltp > default.ce.ltp * 2
    assert rich.ce.iv == pytest.approx(0.3, abs=0.01)
    only_bank = make_market(smiles={"banknifty": VolSmile(atm_vol=0.3)})
    assert atm_row(only_bank).ce.ltp == default.ce.ltp
    assert atm_row(only_bank, "BANKNIFTY").ce.ltp > atm_row(make_market(), "BANKNIFTY").ce.ltp


async def test_expired_options_sit_at_intrinsic_and_do_not_trade() -> None:
    clock = Clock()
    market = make_market(clock)
    clock.now = datetime(2025, 12, 2, 10, 0, tzinfo=UTC) + timedelta(minutes=1)  # 15:31 IST
    await market.set_price("NIFTY", "NSE", "26120")
    assert market.option_chain("NIFTY")[0].expiry == date(2025, 12, 9)  # nearest live expiry
    expired = by_strike(market.option_chain("NIFTY", date(2025, 12, 2)))[Decimal(26000)]
    assert expired.ce.ltp == Decimal(120) and expired.pe.ltp == TICK
    assert expired.ce.iv is None and expired.ce.delta == 1.0
    assert market.quote(expired.ce.symbol, "NFO").tick_volume == 0
    clock.now = datetime(2026, 2, 1, tzinfo=UTC)  # everything expired: the last expiry
    assert market.option_chain("NIFTY")[0].expiry == date(2025, 12, 9)  # as of the last update
    await market.step()
    assert market.option_chain("NIFTY")[0].expiry == date(2025, 12, 30)


async def test_same_seed_and_clock_same_option_prices() -> None:
    first, second = make_market(), make_market()
    for _ in range(10):
        await first.step()
        await second.step()
    assert first.option_chain("NIFTY") == second.option_chain("NIFTY")


def test_default_market_lists_options_for_the_clock_date() -> None:
    market = SimulatedMarket(seed=1, clock=Clock())
    assert market.expiries("NIFTY") == NIFTY_EXPIRIES
    assert market.get_instrument("NIFTY02DEC2526000CE", "NFO") is not None


# -- trading ----------------------------------------------------------------------------------
async def test_sell_one_lot_of_the_atm_call_fills_at_the_bid(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    broker = await make_broker()
    ce = atm_row(market).ce
    quote = market.quote(ce.symbol, "NFO")
    assert quote.tick_volume >= 75 and quote.bid < quote.ltp
    oid = await broker.place_order(
        BrokerOrder(
            symbol=ce.symbol,
            exchange="NFO",  # type: ignore[arg-type]
            side="SELL",  # type: ignore[arg-type]
            order_type="MARKET",  # type: ignore[arg-type]
            product_type="CARRYFORWARD",  # type: ignore[arg-type]
            quantity=75,
        )
    )
    state = await broker.get_order(oid)
    assert state.status is OrderStatus.FILLED
    assert state.filled_quantity == 75
    assert state.average_price == quote.bid
    (position,) = await broker.get_positions()
    assert position["symbol"] == ce.symbol and position["quantity"] == -75
