"""The paper exchange's instrument universe.

Why a hand-written table: the paper broker must work offline, deterministically and
without an instrument-master download, yet look like the real Indian market so that
strategies, risk limits and charges behave plausibly. Each entry is an
``InstrumentSpec``: the domain ``Instrument`` plus what the simulator needs to animate it
(starting price, volatility, typical volume). Adding an instrument is one more spec in
one of the builder functions below (or a new builder appended in ``default_universe``);
the market and the broker discover everything from the specs.

Conventions (documented because tests rely on them):

* Nifty 50 equities (NSE, ``EQ``) at late-2025 price levels, lot size 1. Tick size is
  ₹0.05, except ₹0.01 for stocks priced below ₹250 (NSE's revised tick-size regime for
  low-priced stocks). Daily volumes are rough typical NSE volumes in shares.
* NIFTY and BANKNIFTY are NSE ``INDEX`` instruments: they have prices but cannot be traded.
* Their current-month futures live on NFO as ``<UNDERLYING><YY><MON>FUT`` (for example
  ``NIFTY25DECFUT``), expiring on the last Tuesday of the month; once that day has passed
  the next month's contract is listed instead. Lot sizes: NIFTY 75, BANKNIFTY 35.
  A future is priced as its index times ``1 + basis`` where the basis is a cost-of-carry
  premium (6.5% a year pro rata to the days left, at least 0.05%).
* Index options (``CE``/``PE`` on NFO, lot sizes as for futures, tick ₹0.05) are listed
  only when asked for: ``default_universe(today, options=True)`` or ``index_options``
  (a ``SimulatedMarket`` built without an explicit instrument list includes them). Opt-in
  because they are 248 more instruments (a tick costs about eight times as much) and
  because they quote wider than the two-tick spread the other instruments keep. They
  follow the current NSE calendar (SEBI's F&O rules, in force since November 2024, and
  NSE's move of index expiries to Tuesday from September 2025):

  - NIFTY has weekly expiries every Tuesday. Listed: the next two weekly expiries (today
    counts while it is an expiry day) plus the current monthly expiry (the month's last
    Tuesday, rolled to next month once passed) when it is not already one of them.
  - BANKNIFTY has no weekly options any more (SEBI allows each exchange one weekly
    index contract; NSE kept NIFTY's, and the last BANKNIFTY weekly expired in November
    2024), so only its monthly expiry is listed.
  - Exchange holidays, which move an expiry to the previous trading day, are not modelled.
  - Strikes: ``OPTION_STRIKES_EACH_SIDE`` (15) strikes either side of the at-the-money
    strike of the index's initial price, in steps of 50 (NIFTY) or 100 (BANKNIFTY).
  - Symbols follow Angel One's trading symbols (the same for weekly and monthly):
    ``<UNDERLYING><DD><MON><YY><STRIKE><CE|PE>``, for example ``NIFTY02DEC2526000CE``.
  - An option spec has ``option_of`` set to its index's key; the market reprices it from
    the index on every tick with Black-Scholes and a volatility smile (see
    ``trading_backend.marketdata.options``). Its initial price is that model's value at
    09:15 IST on ``today``.
* BTCUSDT and ETHUSDT are ``SPOT`` on ``Exchange.CRYPTO`` with tick 0.01 and 24x7 trading.
  Their quantities are whole coins (lot 1) until fractional quantities exist in the domain.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from trading_backend.domain import Exchange, Instrument, InstrumentType
from trading_backend.marketdata.options import (
    IST,
    VolSmile,
    bs_price,
    price_to_decimal,
    time_to_expiry,
)

__all__ = [
    "FUTURES_LOT_SIZES",
    "OPTION_STRIKES_EACH_SIDE",
    "OPTION_STRIKE_STEPS",
    "REVISED_LOT_SIZES",
    "InstrumentSpec",
    "carry_inputs",
    "crypto_spot",
    "current_expiry",
    "default_universe",
    "futures_symbol",
    "index_futures",
    "index_lot_size",
    "index_options",
    "indices",
    "last_tuesday",
    "nifty50_equities",
    "option_expiries",
    "option_forward",
    "option_symbol",
    "weekly_expiries",
]

TICK = Decimal("0.05")
FINE_TICK = Decimal("0.01")
FINE_TICK_BELOW = Decimal("250")
CARRY_RATE = Decimal("0.065")  # annual cost of carry used for the futures basis
MIN_BASIS = Decimal("0.0005")
FUTURES_LOT_SIZES: dict[str, int] = {"NIFTY": 75, "BANKNIFTY": 35}  # expiries up to Dec 2025
# NSE circular of Oct 2025: contracts expiring from January 2026 trade in smaller lots.
REVISED_LOT_SIZES: dict[str, int] = {"NIFTY": 65, "BANKNIFTY": 30}
LOT_REVISION_FIRST_EXPIRY = date(2026, 1, 1)


def index_lot_size(underlying: str, expiry: date) -> int:
    """The lot size of an index derivative, which depends on its expiry: 75/35 up to the
    December 2025 contracts, 65/30 (NIFTY/BANKNIFTY) from the January 2026 expiry on."""
    if expiry >= LOT_REVISION_FIRST_EXPIRY:
        return REVISED_LOT_SIZES[underlying]
    return FUTURES_LOT_SIZES[underlying]


OPTION_STRIKE_STEPS: dict[str, int] = {"NIFTY": 50, "BANKNIFTY": 100}
OPTION_STRIKES_EACH_SIDE = 15
WEEKLY_OPTIONS = frozenset({"NIFTY"})  # underlyings that still have weekly expiries
WEEKLY_EXPIRIES_LISTED = 2
SESSION_OPEN = time(9, 15)  # NSE; option specs' initial prices are valued at this time


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """An instrument plus the parameters the simulated market animates it with.

    ``underlying_key`` and ``basis`` make the instrument a derivative priced from another
    spec (``price = underlying * (1 + basis)``) instead of following its own random walk.
    ``option_of`` instead makes it an option priced from that spec with a Black-Scholes
    model; for options ``daily_volume`` is what the strike would trade if it were at the
    money (the market scales it down with the distance from the money) and
    ``annual_volatility`` is the smile's volatility at the initial price (informational).
    """

    instrument: Instrument
    initial_price: Decimal
    daily_volume: int = 0  # units per trading day; 0 for reference-only instruments
    annual_volatility: float = 0.25
    underlying_key: str | None = None  # ``Instrument.key`` of the spec this one tracks
    basis: Decimal = Decimal("0")
    option_of: str | None = None  # ``Instrument.key`` of an option's underlying index

    @property
    def key(self) -> str:
        return self.instrument.key


# symbol, company name, late-2025 price level (₹), typical daily volume, annual volatility
_NIFTY50: tuple[tuple[str, str, str, int, float], ...] = (
    ("ADANIENT", "Adani Enterprises", "2400", 1_500_000, 0.35),
    ("ADANIPORTS", "Adani Ports and SEZ", "1450", 2_500_000, 0.30),
    ("APOLLOHOSP", "Apollo Hospitals", "7500", 400_000, 0.25),
    ("ASIANPAINT", "Asian Paints", "2900", 1_200_000, 0.22),
    ("AXISBANK", "Axis Bank", "1250", 8_000_000, 0.24),
    ("BAJAJ-AUTO", "Bajaj Auto", "9000", 350_000, 0.25),
    ("BAJFINANCE", "Bajaj Finance", "1000", 6_000_000, 0.30),
    ("BAJAJFINSV", "Bajaj Finserv", "2050", 1_200_000, 0.26),
    ("BEL", "Bharat Electronics", "410", 15_000_000, 0.32),
    ("BHARTIARTL", "Bharti Airtel", "2100", 5_000_000, 0.20),
    ("CIPLA", "Cipla", "1520", 1_500_000, 0.22),
    ("COALINDIA", "Coal India", "380", 8_000_000, 0.26),
    ("DRREDDY", "Dr. Reddy's Laboratories", "1250", 2_000_000, 0.22),
    ("EICHERMOT", "Eicher Motors", "7000", 500_000, 0.26),
    ("ETERNAL", "Eternal (Zomato)", "300", 40_000_000, 0.38),
    ("GRASIM", "Grasim Industries", "2750", 700_000, 0.22),
    ("HCLTECH", "HCL Technologies", "1600", 3_500_000, 0.24),
    ("HDFCBANK", "HDFC Bank", "990", 15_000_000, 0.18),
    ("HDFCLIFE", "HDFC Life Insurance", "770", 3_000_000, 0.24),
    ("HINDALCO", "Hindalco Industries", "800", 7_000_000, 0.30),
    ("HINDUNILVR", "Hindustan Unilever", "2450", 1_500_000, 0.18),
    ("ICICIBANK", "ICICI Bank", "1380", 12_000_000, 0.20),
    ("INDIGO", "InterGlobe Aviation", "5800", 1_000_000, 0.30),
    ("INFY", "Infosys", "1550", 7_000_000, 0.24),
    ("ITC", "ITC", "405", 15_000_000, 0.18),
    ("JIOFIN", "Jio Financial Services", "300", 12_000_000, 0.32),
    ("JSWSTEEL", "JSW Steel", "1150", 2_500_000, 0.28),
    ("KOTAKBANK", "Kotak Mahindra Bank", "2100", 3_500_000, 0.22),
    ("LT", "Larsen & Toubro", "4000", 2_000_000, 0.22),
    ("M&M", "Mahindra & Mahindra", "3700", 2_500_000, 0.28),
    ("MARUTI", "Maruti Suzuki India", "16000", 400_000, 0.24),
    ("MAXHEALTH", "Max Healthcare Institute", "1150", 2_000_000, 0.30),
    ("NESTLEIND", "Nestle India", "1250", 1_200_000, 0.18),
    ("NTPC", "NTPC", "330", 12_000_000, 0.24),
    ("ONGC", "Oil and Natural Gas Corporation", "250", 12_000_000, 0.26),
    ("POWERGRID", "Power Grid Corporation", "270", 12_000_000, 0.22),
    ("RELIANCE", "Reliance Industries", "1520", 10_000_000, 0.22),
    ("SBILIFE", "SBI Life Insurance", "2000", 1_000_000, 0.22),
    ("SHRIRAMFIN", "Shriram Finance", "800", 5_000_000, 0.34),
    ("SBIN", "State Bank of India", "960", 10_000_000, 0.24),
    ("SUNPHARMA", "Sun Pharmaceutical", "1780", 2_500_000, 0.22),
    ("TCS", "Tata Consultancy Services", "3150", 2_500_000, 0.22),
    ("TATACONSUM", "Tata Consumer Products", "1170", 1_500_000, 0.24),
    ("TMPV", "Tata Motors Passenger Vehicles", "400", 12_000_000, 0.34),
    ("TATASTEEL", "Tata Steel", "170", 30_000_000, 0.30),
    ("TECHM", "Tech Mahindra", "1450", 2_500_000, 0.26),
    ("TITAN", "Titan Company", "3800", 1_000_000, 0.24),
    ("TRENT", "Trent", "4300", 1_000_000, 0.36),
    ("ULTRACEMCO", "UltraTech Cement", "11800", 300_000, 0.22),
    ("WIPRO", "Wipro", "245", 10_000_000, 0.24),
)

# symbol, name, late-2025 level, annual volatility
_INDICES: tuple[tuple[str, str, str, float], ...] = (
    ("NIFTY", "Nifty 50", "26000", 0.13),
    ("BANKNIFTY", "Nifty Bank", "58000", 0.15),
)

# typical daily futures volume in units (contracts x lot size) for the near month
_FUTURES_VOLUME: dict[str, int] = {"NIFTY": 8_000_000, "BANKNIFTY": 2_000_000}

_CRYPTO: tuple[tuple[str, str, str, int, float], ...] = (
    ("BTCUSDT", "Bitcoin / Tether", "90000", 20_000, 0.55),
    ("ETHUSDT", "Ether / Tether", "3000", 400_000, 0.70),
)


def equity_tick_size(price: Decimal) -> Decimal:
    """₹0.01 below ₹250, ₹0.05 otherwise (see the module docstring)."""
    return FINE_TICK if price < FINE_TICK_BELOW else TICK


def nifty50_equities() -> list[InstrumentSpec]:
    specs: list[InstrumentSpec] = []
    for symbol, name, price, volume, vol in _NIFTY50:
        initial = Decimal(price)
        instrument = Instrument(
            symbol=symbol,
            exchange=Exchange.NSE,
            instrument_type=InstrumentType.EQ,
            name=name,
            lot_size=1,
            tick_size=equity_tick_size(initial),
        )
        specs.append(InstrumentSpec(instrument, initial, volume, vol))
    return specs


def indices() -> list[InstrumentSpec]:
    return [
        InstrumentSpec(
            Instrument(
                symbol=symbol,
                exchange=Exchange.NSE,
                instrument_type=InstrumentType.INDEX,
                name=name,
                lot_size=1,
                tick_size=TICK,
            ),
            Decimal(level),
            0,
            vol,
        )
        for symbol, name, level, vol in _INDICES
    ]


def last_tuesday(year: int, month: int) -> date:
    """NSE's monthly index-derivative expiry (from September 2025): the month's last Tuesday."""
    last_day = date(year, month, calendar.monthrange(year, month)[1])
    return last_day - timedelta(days=(last_day.weekday() - calendar.TUESDAY) % 7)


def current_expiry(today: date) -> date:
    """This month's expiry, or next month's once this month's expiry day has passed."""
    expiry = last_tuesday(today.year, today.month)
    if today > expiry:
        year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
        expiry = last_tuesday(year, month)
    return expiry


def futures_symbol(underlying: str, expiry: date) -> str:
    """``NIFTY`` + 2025-12-30 -> ``NIFTY25DECFUT``."""
    return f"{underlying}{expiry:%y}{calendar.month_abbr[expiry.month].upper()}FUT"


def index_futures(today: date | None = None) -> list[InstrumentSpec]:
    today = today or datetime.now(UTC).date()
    expiry = current_expiry(today)
    days_left = Decimal(max((expiry - today).days, 0))
    basis = max(MIN_BASIS, (CARRY_RATE * days_left / Decimal(365)).quantize(Decimal("0.000001")))
    specs: list[InstrumentSpec] = []
    for index in indices():
        underlying = index.instrument.symbol
        instrument = Instrument(
            symbol=futures_symbol(underlying, expiry),
            exchange=Exchange.NFO,
            instrument_type=InstrumentType.FUT,
            name=f"{index.instrument.name} futures {expiry:%b %Y}",
            lot_size=index_lot_size(underlying, expiry),
            tick_size=TICK,
            expiry=expiry,
            underlying=underlying,
        )
        specs.append(
            InstrumentSpec(
                instrument,
                index.initial_price * (1 + basis),
                _FUTURES_VOLUME[underlying],
                index.annual_volatility,
                underlying_key=index.key,
                basis=basis,
            )
        )
    return specs


def crypto_spot() -> list[InstrumentSpec]:
    return [
        InstrumentSpec(
            Instrument(
                symbol=symbol,
                exchange=Exchange.CRYPTO,
                instrument_type=InstrumentType.SPOT,
                name=name,
                lot_size=1,
                tick_size=FINE_TICK,
            ),
            Decimal(price),
            volume,
            vol,
        )
        for symbol, name, price, volume, vol in _CRYPTO
    ]


# Option volume: units an at-the-money strike of the nearest expiry trades in a day
# (per side), and the share of that the later expiries see, nearest first.
_OPTION_ATM_VOLUME: dict[str, int] = {"NIFTY": 30_000_000, "BANKNIFTY": 5_000_000}
_EXPIRY_VOLUME_SHARE: tuple[float, ...] = (1.0, 0.35, 0.2)


def option_forward(spot: float, t: float) -> float:
    """The paper market's forward: the futures' simple cost of carry, ``S (1 + carry t)``."""
    return spot * (1.0 + float(CARRY_RATE) * t)


def carry_inputs(t: float) -> tuple[float, float]:
    """``(rate, dividend_yield)`` for ``bs_price`` matching ``option_forward``.

    The rate is the carry constant (continuous); the yield ``q`` is chosen so that
    ``S e^{(r - q) t} = S (1 + carry t)``, so the model's forward equals the one the
    futures are priced with.
    """
    rate = float(CARRY_RATE)
    if t <= 0.0:
        return rate, rate
    return rate, rate - math.log1p(rate * t) / t


def weekly_expiries(today: date, count: int) -> list[date]:
    """The next ``count`` Tuesdays from ``today`` (today included when it is a Tuesday)."""
    first = today + timedelta(days=(calendar.TUESDAY - today.weekday()) % 7)
    return [first + timedelta(weeks=i) for i in range(count)]


def option_expiries(underlying: str, today: date) -> list[date]:
    """Listed option expiries of ``underlying`` on ``today``, nearest first."""
    monthly = current_expiry(today)
    if underlying not in WEEKLY_OPTIONS:
        return [monthly]
    return sorted({*weekly_expiries(today, WEEKLY_EXPIRIES_LISTED), monthly})


def option_symbol(underlying: str, expiry: date, strike: Decimal | int, option_type: str) -> str:
    """Angel One style: ``NIFTY`` + 2025-12-02 + 26000 + ``CE`` -> ``NIFTY02DEC2526000CE``."""
    value = Decimal(strike)
    if value != value.to_integral_value():
        raise ValueError(f"strike {strike} is not a whole number of rupees")
    month = calendar.month_abbr[expiry.month].upper()
    return f"{underlying}{expiry:%d}{month}{expiry:%y}{int(value)}{option_type}"


def index_options(today: date | None = None) -> list[InstrumentSpec]:
    """Option chains of NIFTY and BANKNIFTY (see the module docstring for the rules)."""
    today = today or datetime.now(UTC).date()
    valuation = datetime.combine(today, SESSION_OPEN, tzinfo=IST)
    specs: list[InstrumentSpec] = []
    for index in indices():
        underlying = index.instrument.symbol
        step = OPTION_STRIKE_STEPS[underlying]
        spot = float(index.initial_price)
        atm = round(spot / step) * step
        strikes = [
            atm + i * step for i in range(-OPTION_STRIKES_EACH_SIDE, OPTION_STRIKES_EACH_SIDE + 1)
        ]
        smile = VolSmile(atm_vol=index.annual_volatility)
        for rank, expiry in enumerate(option_expiries(underlying, today)):
            t = time_to_expiry(valuation, expiry)
            forward = option_forward(spot, t)
            rate, carry_yield = carry_inputs(t)
            share = _EXPIRY_VOLUME_SHARE[min(rank, len(_EXPIRY_VOLUME_SHARE) - 1)]
            for strike in strikes:
                vol = smile.vol(strike, forward, t)
                for option_type in (InstrumentType.CE, InstrumentType.PE):
                    symbol = option_symbol(underlying, expiry, strike, option_type.value)
                    value = bs_price(option_type, spot, strike, t, vol, rate, carry_yield)
                    instrument = Instrument(
                        symbol=symbol,
                        exchange=Exchange.NFO,
                        instrument_type=option_type,
                        name=f"{index.instrument.name} {expiry:%d %b %Y} {strike} {option_type}",
                        lot_size=index_lot_size(underlying, expiry),
                        tick_size=TICK,
                        expiry=expiry,
                        strike=Decimal(strike),
                        underlying=underlying,
                    )
                    specs.append(
                        InstrumentSpec(
                            instrument,
                            price_to_decimal(value, TICK, minimum=TICK),
                            round(_OPTION_ATM_VOLUME[underlying] * share),
                            vol,
                            option_of=index.key,
                        )
                    )
    return specs


def default_universe(today: date | None = None, *, options: bool = False) -> list[InstrumentSpec]:
    """Every instrument the paper exchange lists, in a stable order.

    Each instrument's random path is seeded from the market seed and its own key, so
    adding instruments never changes the price paths of the existing ones. ``options``
    adds the index option chains (``index_options``); they are opt-in because they
    multiply the number of instruments (and so the cost of a tick) about sixfold.
    """
    specs = [*indices(), *nifty50_equities(), *index_futures(today), *crypto_spot()]
    if options:
        specs.extend(index_options(today))
    return specs
