"""The fake's instrument universe: rows in the real OpenAPIScripMaster.json format (every
value a string, strike x100, tick_size in paise) plus the parsed view the engine trades on.

The default set is small but realistic: five NSE equities, two indices, a NIFTY future, six
NIFTY options around the money and one MCX commodity future. Derivative expiries follow the
injected clock (the monthly expiry on or after "today"), so symbols look live on any date;
their tokens are fixed (see the ``*_TOKEN`` constants) so tests can address them.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from trading_backend.brokers.angel_one.protocol import to_decimal, to_int

DERIVATIVE_EXCHANGES = frozenset({"NFO", "BFO", "MCX", "CDS", "NCDEX"})

NIFTY_FUT_TOKEN = "52168"
NIFTY_STRIKES = (23800, 24000, 24200)
NIFTY_CE_TOKENS = {23800: "43150", 24000: "43152", 24200: "43154"}
NIFTY_PE_TOKENS = {23800: "43151", 24000: "43153", 24200: "43155"}
NIFTY_LOT = 75
MCX_CRUDE_TOKEN = "430106"

# (exchange, token) -> starting LTP for the default universe.
DEFAULT_PRICES: dict[tuple[str, str], Decimal] = {
    ("NSE", "3045"): Decimal("812.50"),
    ("NSE", "2885"): Decimal("1298.40"),
    ("NSE", "11536"): Decimal("3510.00"),
    ("NSE", "1594"): Decimal("1502.35"),
    ("NSE", "1333"): Decimal("1725.60"),
    ("NSE", "99926000"): Decimal("24012.35"),
    ("NSE", "99926009"): Decimal("52150.80"),
    ("NFO", NIFTY_FUT_TOKEN): Decimal("24080.00"),
    ("MCX", MCX_CRUDE_TOKEN): Decimal("6012.00"),
}


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable (or index) row, parsed. ``strike`` is in rupees (-1 when not an option)."""

    token: str
    symbol: str
    name: str
    exchange: str
    instrumenttype: str
    lotsize: int
    tick: Decimal
    strike: Decimal
    expiry: str
    option_type: str
    row: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str]:
        return (self.exchange, self.token)

    @property
    def is_derivative(self) -> bool:
        return self.exchange in DERIVATIVE_EXCHANGES

    @property
    def is_index(self) -> bool:
        return self.instrumenttype == "AMXIDX"

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Instrument:
        clean = {k: "" if v is None else str(v) for k, v in row.items()}
        symbol = clean.get("symbol", "")
        strike_raw = to_decimal(clean.get("strike"), Decimal(-1))
        itype = clean.get("instrumenttype", "")
        is_option = itype.startswith("OPT") and strike_raw > 0
        tick = to_decimal(clean.get("tick_size"), Decimal(5)) / 100
        return cls(
            token=clean.get("token", ""),
            symbol=symbol,
            name=clean.get("name", ""),
            exchange=clean.get("exch_seg", "").upper(),
            instrumenttype=itype,
            lotsize=max(1, to_int(clean.get("lotsize"), 1)),
            tick=tick if tick > 0 else Decimal("0.05"),
            strike=(strike_raw / 100) if is_option else Decimal(-1),
            expiry=clean.get("expiry", "").upper(),
            option_type=symbol[-2:] if is_option and symbol[-2:] in ("CE", "PE") else "",
            row=clean,
        )


def _monthly_expiry(today: date, weekday: int) -> date:
    """Last ``weekday`` of today's month, or of next month once it has passed."""
    year, month = today.year, today.month
    for _ in range(2):
        last = date(year, month, calendar.monthrange(year, month)[1])
        expiry = last - timedelta(days=(last.weekday() - weekday) % 7)
        if expiry >= today:
            return expiry
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    raise AssertionError("unreachable")


def _row(
    token: str,
    symbol: str,
    name: str,
    exch: str,
    itype: str = "",
    *,
    expiry: str = "",
    strike: str = "-1.000000",
    lotsize: str = "1",
    tick: str = "5.000000",
) -> dict[str, str]:
    return {
        "token": token,
        "symbol": symbol,
        "name": name,
        "expiry": expiry,
        "strike": strike,
        "lotsize": lotsize,
        "instrumenttype": itype,
        "exch_seg": exch,
        "tick_size": tick,
    }


def default_rows(today: date) -> list[dict[str, str]]:
    """The default universe in scrip-master format, expiries relative to ``today``."""
    nifty_exp = _monthly_expiry(today, calendar.TUESDAY)
    crude_exp = _monthly_expiry(today, calendar.THURSDAY)
    exp_field = nifty_exp.strftime("%d%b%Y").upper()
    exp_sym = nifty_exp.strftime("%d%b%y").upper()
    rows = [
        _row("3045", "SBIN-EQ", "SBIN", "NSE"),
        _row("2885", "RELIANCE-EQ", "RELIANCE", "NSE"),
        _row("11536", "TCS-EQ", "TCS", "NSE"),
        _row("1594", "INFY-EQ", "INFY", "NSE"),
        _row("1333", "HDFCBANK-EQ", "HDFCBANK", "NSE"),
        _row("99926000", "Nifty 50", "NIFTY", "NSE", "AMXIDX", strike="0.000000", tick="0"),
        _row("99926009", "Nifty Bank", "BANKNIFTY", "NSE", "AMXIDX", strike="0.000000", tick="0"),
        _row(
            NIFTY_FUT_TOKEN,
            f"NIFTY{exp_sym}FUT",
            "NIFTY",
            "NFO",
            "FUTIDX",
            expiry=exp_field,
            lotsize=str(NIFTY_LOT),
        ),
    ]
    for strike in NIFTY_STRIKES:
        for kind, tokens in (("CE", NIFTY_CE_TOKENS), ("PE", NIFTY_PE_TOKENS)):
            rows.append(
                _row(
                    tokens[strike],
                    f"NIFTY{exp_sym}{strike}{kind}",
                    "NIFTY",
                    "NFO",
                    "OPTIDX",
                    expiry=exp_field,
                    strike=f"{strike * 100}.000000",
                    lotsize=str(NIFTY_LOT),
                )
            )
    rows.append(
        _row(
            MCX_CRUDE_TOKEN,
            f"CRUDEOIL{crude_exp.strftime('%d%b%y').upper()}FUT",
            "CRUDEOIL",
            "MCX",
            "FUTCOM",
            expiry=crude_exp.strftime("%d%b%Y").upper(),
            lotsize="100",
            tick="100.000000",
        )
    )
    return rows


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    if tick <= 0:
        return value.quantize(Decimal("0.01"))
    return ((value / tick).to_integral_value() * tick).quantize(Decimal("0.01"))


def starting_price(inst: Instrument, seed: int, spot: Mapping[str, Decimal]) -> Decimal:
    """A plausible, deterministic first LTP: known defaults, option premia from the spot of
    their underlying (intrinsic + time value), anything else from a hash of the token."""
    known = DEFAULT_PRICES.get(inst.key)
    if known is not None:
        return known
    underlying = spot.get(inst.name)
    if inst.strike > 0 and underlying is not None:
        intrinsic = (
            underlying - inst.strike if inst.option_type == "CE" else inst.strike - underlying
        )
        price = max(intrinsic, Decimal(0)) + Decimal("120") - abs(underlying - inst.strike) / 20
        return round_to_tick(max(price, Decimal("5")), inst.tick)
    digest = hashlib.sha256(f"{seed}:{inst.exchange}:{inst.token}".encode()).digest()
    base = Decimal(100 + int.from_bytes(digest[:4], "big") % 4900)
    return round_to_tick(base + Decimal(digest[4] % 20) / 20, inst.tick)


def build_universe(
    rows: Iterable[Mapping[str, object]], seed: int
) -> tuple[list[dict[str, str]], dict[tuple[str, str], Instrument], dict[tuple[str, str], Decimal]]:
    """Parse rows; return (wire rows, instruments by key, starting prices by key)."""
    wire: list[dict[str, str]] = []
    instruments: dict[tuple[str, str], Instrument] = {}
    for row in rows:
        inst = Instrument.from_row(row)
        if not inst.token or not inst.exchange:
            raise ValueError(f"instrument row without token/exch_seg: {dict(row)!r}")
        instruments[inst.key] = inst
        wire.append(dict(inst.row))
    spot = {
        "NIFTY": DEFAULT_PRICES[("NSE", "99926000")],
        "BANKNIFTY": DEFAULT_PRICES[("NSE", "99926009")],
    }
    for inst in instruments.values():
        if inst.is_index and inst.key in DEFAULT_PRICES:
            spot[inst.name] = DEFAULT_PRICES[inst.key]
    prices = {key: starting_price(inst, seed, spot) for key, inst in instruments.items()}
    return wire, instruments, prices
