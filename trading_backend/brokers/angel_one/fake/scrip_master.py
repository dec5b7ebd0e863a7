"""A deterministic generator of Angel One instrument masters (``OpenAPIScripMaster.json``).

Why generate instead of shipping a download: the real file is 30-40 MB, changes every
day and may not be redistributed, yet our parser, caps, database load and benchmark must
be exercised at its real size and with its real quirks. The rows follow the real format
(BROKER_PROTOCOLS.md §1.11) exactly:

* one JSON array of objects whose values are all strings: ``token``, ``symbol``, ``name``,
  ``expiry`` (``DDMMMYYYY``, upper case), ``strike`` (rupees x 100 as ``"2250000.000000"``,
  ``"-1.000000"`` for non-options; currency options x 10^7), ``lotsize``,
  ``instrumenttype``, ``exch_seg``, ``tick_size`` (paise: ``"5.000000"`` = ₹0.05);
* NSE equities ``<SYMBOL>-EQ`` (and ``-BE``/``-BL``/``-SG``/``-GB``/``-N1`` series), BSE
  equities without a suffix and with BSE scrip codes as tokens;
* indices (``AMXIDX``) on NSE, BSE and MCX with their display names as symbols (``Nifty 50``
  99926000, ``Nifty Bank`` 99926009, ...);
* NFO index and stock futures ``NIFTY30DEC25FUT`` and option chains
  ``NIFTY02DEC2526000CE`` (weekly and monthly alike), BFO (SENSEX, BANKEX), MCX
  ``FUTCOM``/``OPTFUT``, CDS ``FUTCUR``/``OPTCUR``/``FUTIRC`` and NCDEX ``FUTCOM``.

Expiries follow today's calendar rules relative to ``today`` (NSE index and stock
derivatives on Tuesdays, BSE on Thursdays, MCX/CDS/NCDEX on fixed days moved back off
weekends; exchange holidays are not modelled). Tokens of a few well-known scrips are the
real ones (SBIN-EQ 3045, RELIANCE-EQ 2885, Nifty 50 99926000 ...); the rest, and the
long tail of company names, are synthetic but stable for a given ``seed``.

At any size the file keeps a realistic mix (about 7% NSE and 8% BSE equities, BFO 8%,
MCX 7%, CDS 5%, NCDEX 0.7%, index and stock futures, NFO options for the rest), and the
most important instruments come first in each segment, so even a 200-row file has the
Nifty 50 index, SBIN, RELIANCE, NIFTY futures and an at-the-money NIFTY option chain.
"""

from __future__ import annotations

import calendar
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path

from trading_backend.brokers.paper.universe import nifty50_equities

__all__ = [
    "DEFAULT_ROWS",
    "generate_scrip_master",
    "scrip_master_bytes",
    "small_scrip_master",
    "write_scrip_master",
]

DEFAULT_ROWS = 150_000
Row = dict[str, str]

# Share of the file per segment; NFO options take whatever is left.
_SHARES: dict[str, float] = {
    "nse_eq": 0.07,
    "bse_eq": 0.08,
    "bfo": 0.08,
    "mcx": 0.07,
    "cds": 0.05,
    "ncdex": 0.007,
}

# Real tokens of a few scrips (NSE token, BSE scrip code).
_KNOWN_TOKENS: dict[str, tuple[str, str]] = {
    "SBIN": ("3045", "500112"),
    "RELIANCE": ("2885", "500325"),
    "TCS": ("11536", "532540"),
    "INFY": ("1594", "500209"),
    "HDFCBANK": ("1333", "500180"),
    "ICICIBANK": ("4963", "532174"),
    "ITC": ("1660", "500875"),
    "LT": ("11483", "500510"),
    "AXISBANK": ("5900", "532215"),
    "KOTAKBANK": ("1922", "500247"),
}

# (display symbol, name, token, level) per exchange
_INDICES: dict[str, tuple[tuple[str, str, str, int], ...]] = {
    "NSE": (
        ("Nifty 50", "NIFTY", "99926000", 26000),
        ("Nifty Bank", "BANKNIFTY", "99926009", 58000),
        ("Nifty Fin Service", "FINNIFTY", "99926037", 27500),
        ("NIFTY MID SELECT", "MIDCPNIFTY", "99926074", 13500),
        ("India VIX", "INDIA VIX", "99926017", 12),
        ("Nifty IT", "NIFTY IT", "99926008", 36000),
        ("Nifty Next 50", "NIFTY NEXT 50", "99926013", 68000),
        ("Nifty 100", "NIFTY 100", "99926012", 26500),
        ("Nifty 500", "NIFTY 500", "99926004", 23500),
        ("Nifty Auto", "NIFTY AUTO", "99926029", 27000),
        ("Nifty FMCG", "NIFTY FMCG", "99926021", 55000),
        ("Nifty Pharma", "NIFTY PHARMA", "99926023", 22000),
        ("Nifty Metal", "NIFTY METAL", "99926030", 10000),
        ("Nifty Realty", "NIFTY REALTY", "99926018", 900),
        ("Nifty Energy", "NIFTY ENERGY", "99926020", 35000),
        ("Nifty PSU Bank", "NIFTY PSU BANK", "99926025", 8000),
        ("Nifty Media", "NIFTY MEDIA", "99926031", 1500),
        ("Nifty Midcap 100", "NIFTY MIDCAP 100", "99926011", 60000),
        ("Nifty Smallcap 100", "NIFTY SMLCAP 100", "99926032", 18000),
        ("Nifty Pvt Bank", "NIFTY PVT BANK", "99926047", 28000),
    ),
    "BSE": (
        ("SENSEX", "SENSEX", "99919000", 85000),
        ("BANKEX", "BANKEX", "99919012", 65000),
        ("SNSX50", "SNSX50", "99919001", 27000),
        ("BSE100", "BSE100", "99919002", 27500),
        ("BSE500", "BSE500", "99919003", 37000),
    ),
    "MCX": (
        ("MCXCOMPDEX", "MCXCOMPDEX", "99920000", 20000),
        ("MCXMETLDEX", "MCXMETLDEX", "99920001", 19000),
        ("MCXBULLDEX", "MCXBULLDEX", "99920002", 30000),
    ),
}

# Index derivatives: underlying -> (exchange, level, strike step, lot size)
_INDEX_DERIVATIVES: dict[str, tuple[str, int, int, int]] = {
    "NIFTY": ("NFO", 26000, 50, 75),
    "BANKNIFTY": ("NFO", 58000, 100, 35),
    "FINNIFTY": ("NFO", 27500, 50, 65),
    "MIDCPNIFTY": ("NFO", 13500, 25, 140),
    "SENSEX": ("BFO", 85000, 100, 20),
    "BANKEX": ("BFO", 65000, 100, 30),
}
_REVISED_INDEX_LOTS = {"NIFTY": 65, "BANKNIFTY": 30, "FINNIFTY": 60, "MIDCPNIFTY": 120}
_LOT_REVISION = date(2026, 1, 1)

# MCX: name -> (price, lot, tick in paise, option strike step, has options)
_MCX: dict[str, tuple[int, int, int, str, bool]] = {
    "CRUDEOIL": (6500, 100, 100, "50", True),
    "GOLD": (72000, 100, 100, "100", True),
    "SILVER": (85000, 30, 100, "250", True),
    "NATURALGAS": (250, 1250, 10, "5", True),
    "COPPER": (800, 2500, 5, "5", True),
    "ZINC": (260, 5000, 5, "2.5", True),
    "CRUDEOILM": (6500, 10, 100, "50", False),
    "GOLDM": (72000, 10, 100, "100", False),
    "SILVERM": (85000, 5, 100, "250", False),
    "ALUMINIUM": (230, 5000, 5, "1", False),
    "LEAD": (185, 5000, 5, "1", False),
    "NICKEL": (1600, 1500, 10, "10", False),
    "MENTHAOIL": (950, 360, 10, "10", False),
    "COTTONCNDY": (56000, 48, 1000, "200", False),
}
# CDS: pair -> (price, option strike step)
_CDS: dict[str, tuple[str, str]] = {
    "USDINR": ("83.25", "0.25"),
    "EURINR": ("90.50", "0.25"),
    "GBPINR": ("105.75", "0.25"),
    "JPYINR": ("55.50", "0.25"),
}
# NCDEX agricultural futures: name -> (price, lot, tick in paise)
_NCDEX: dict[str, tuple[int, int, int]] = {
    "DHANIYA": (7500, 10, 200),
    "JEERAUNJHA": (25000, 3, 500),
    "GUARSEED10": (5400, 10, 100),
    "CASTOR": (6200, 10, 100),
    "TMCFGRNZM": (14000, 5, 200),
    "COCUDAKL": (2800, 10, 100),
    "SYBEANIDR": (4500, 10, 100),
    "KAPAS": (1500, 4, 50),
}

_SYLLABLES = (
    "AR", "BA", "CHE", "DA", "EN", "FI", "GA", "HI", "IN", "JA", "KA", "LA", "MA", "NA",
    "OM", "PA", "RA", "SA", "TA", "UR", "VA", "YA", "ZE", "TEX", "CON", "TECH", "FIN",
    "IND", "POL", "GEN", "MET", "CEM", "PHA", "SOL", "NET", "AGRO", "LAB", "SYS", "TRA",
)  # fmt: skip
_OTHER_SERIES = ("BE", "BL", "SG", "GB", "N1", "N2", "BZ", "ST")


def _money(value: Decimal) -> str:
    return format(value, ".6f")


def _expiry(day: date) -> str:
    return day.strftime("%d%b%Y").upper()


def _month_tag(day: date) -> str:
    return f"{day:%d}{calendar.month_abbr[day.month].upper()}{day:%y}"


def _strike_text(strike: Decimal) -> str:
    normal = strike.normalize()
    return format(normal.quantize(Decimal(1)) if normal == normal.to_integral() else normal, "f")


def _last_weekday(year: int, month: int, weekday: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _add_months(day: date, months: int) -> tuple[int, int]:
    index = day.year * 12 + day.month - 1 + months
    return index // 12, index % 12 + 1


def _monthly(today: date, weekday: int, count: int) -> list[date]:
    """The next ``count`` monthly expiries on the month's last ``weekday``."""
    found: list[date] = []
    offset = 0
    while len(found) < count:
        year, month = _add_months(today, offset)
        expiry = _last_weekday(year, month, weekday)
        if expiry >= today:
            found.append(expiry)
        offset += 1
    return found


def _weekly(today: date, weekday: int, count: int) -> list[date]:
    first = today + timedelta(days=(weekday - today.weekday()) % 7)
    return [first + timedelta(weeks=i) for i in range(count)]


def _fixed_day(today: date, day: int, count: int) -> list[date]:
    """Monthly expiries on a fixed day of the month, moved back to Friday off weekends."""
    found: list[date] = []
    offset = 0
    while len(found) < count:
        year, month = _add_months(today, offset)
        expiry = date(year, month, min(day, calendar.monthrange(year, month)[1]))
        while expiry.weekday() >= 5:
            expiry -= timedelta(days=1)
        if expiry >= today:
            found.append(expiry)
        offset += 1
    return found


def _index_lot(name: str, expiry: date, lot: int) -> int:
    if expiry >= _LOT_REVISION and name in _REVISED_INDEX_LOTS:
        return _REVISED_INDEX_LOTS[name]
    return lot


def _nice_lot(price: Decimal) -> int:
    """A lot worth roughly ₹7 lakh, rounded to 1-2-5 steps, as NSE sizes stock lots."""
    raw = max(1, int(Decimal(700_000) / max(price, Decimal(1))))
    magnitude: int = 10 ** (len(str(raw)) - 1)
    for step in (1, 2, 5, 10):
        if raw <= step * magnitude:
            return step * magnitude
    return raw  # pragma: no cover - the loop always returns


def _stock_step(price: Decimal) -> Decimal:
    for limit, step in ((50, "1"), (100, "2.5"), (250, "5"), (500, "10"), (1000, "20")):
        if price < limit:
            return Decimal(step)
    if price < 2500:
        return Decimal(50)
    if price < 5000:
        return Decimal(100)
    return Decimal(250)


@dataclass(frozen=True, slots=True)
class _Chain:
    """One option chain family: every expiry shares the strikes around ``spot``."""

    name: str
    expiries: list[date]
    spot: Decimal
    step: Decimal
    lot: int
    kind: str
    exchange: str
    tick: str
    scale: Decimal
    width: int = 1  # strikes added each side per round: deeper chains for busy indices


class _Tokens:
    """Unique numeric tokens per exchange, skipping the real ones already taken."""

    def __init__(self, start: int, taken: set[str] | None = None) -> None:
        self._next = start
        self._taken = taken or set()

    def __call__(self) -> str:
        while str(self._next) in self._taken:
            self._next += 1
        token = str(self._next)
        self._next += 1
        return token


class _Generator:
    def __init__(self, seed: int, today: date) -> None:
        self.rng = random.Random(seed)
        self.today = today
        nifty = [
            (s.instrument.symbol, s.initial_price) for s in nifty50_equities()
        ]  # realistic prices
        self.nifty = nifty
        self.names = {symbol for symbol, _ in nifty}
        self._companies: list[tuple[str, Decimal]] = []

    # -- companies ------------------------------------------------------------------------
    def company(self, index: int) -> tuple[str, Decimal]:
        """The ``index``-th company: the Nifty 50 first, then synthetic ones (stable)."""
        if index < len(self.nifty):
            return self.nifty[index]
        while len(self._companies) <= index - len(self.nifty):
            name = "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 4)))
            if name in self.names or len(name) > 20:
                continue
            self.names.add(name)
            price = Decimal(self.rng.choice((5, 12, 40, 85, 150, 320, 640, 1200, 2800, 7000)))
            price = (price * Decimal(self.rng.uniform(0.6, 1.6))).quantize(Decimal("0.05"))
            self._companies.append((name, price))
        return self._companies[index - len(self.nifty)]

    def fno_stocks(self) -> list[tuple[str, Decimal]]:
        """Stocks with futures and options: the Nifty 50 and 130 more."""
        return [self.company(i) for i in range(len(self.nifty) + 130)]

    # -- segments -------------------------------------------------------------------------
    def indices(self) -> Iterator[Row]:
        for exchange, entries in _INDICES.items():
            for symbol, name, token, _ in entries:
                yield {
                    "token": token,
                    "symbol": symbol,
                    "name": name,
                    "expiry": "",
                    "strike": "0.000000",
                    "lotsize": "1",
                    "instrumenttype": "AMXIDX",
                    "exch_seg": exchange,
                    "tick_size": "0.000000",
                }

    def equities(self, exchange: str) -> Iterator[Row]:
        """Endless equities: every company's EQ row, with the odd other series."""
        known = {pair[0 if exchange == "NSE" else 1] for pair in _KNOWN_TOKENS.values()}
        tokens = _Tokens(30000 if exchange == "NSE" else 540000, known)
        index = 0
        while True:
            symbol, price = self.company(index)
            index += 1
            real = _KNOWN_TOKENS.get(symbol)
            tick = "1.000000" if price < 250 else "5.000000"
            if exchange == "NSE":
                token = real[0] if real else tokens()
                series = "EQ" if self.rng.random() < 0.85 or index <= 60 else None
                series = series or self.rng.choice(_OTHER_SERIES)
                trading = f"{symbol}-{series}"
            else:
                token = real[1] if real else tokens()
                trading = symbol
            yield {
                "token": token,
                "symbol": trading,
                "name": symbol,
                "expiry": "",
                "strike": "-1.000000",
                "lotsize": "1",
                "instrumenttype": "",
                "exch_seg": exchange,
                "tick_size": tick,
            }

    def _future(
        self, token: str, name: str, expiry: date, lot: int, kind: str, exchange: str, tick: str
    ) -> Row:
        return {
            "token": token,
            "symbol": f"{name}{_month_tag(expiry)}FUT",
            "name": name,
            "expiry": _expiry(expiry),
            "strike": "-1.000000",
            "lotsize": str(lot),
            "instrumenttype": kind,
            "exch_seg": exchange,
            "tick_size": tick,
        }

    def _option(
        self,
        token: str,
        name: str,
        expiry: date,
        strike: Decimal,
        right: str,
        lot: int,
        kind: str,
        exchange: str,
        tick: str,
        scale: Decimal = Decimal(100),
    ) -> Row:
        return {
            "token": token,
            "symbol": f"{name}{_month_tag(expiry)}{_strike_text(strike)}{right}",
            "name": name,
            "expiry": _expiry(expiry),
            "strike": _money(strike * scale),
            "lotsize": str(lot),
            "instrumenttype": kind,
            "exch_seg": exchange,
            "tick_size": tick,
        }

    def nfo_futures(self, tokens: _Tokens) -> Iterator[Row]:
        months = _monthly(self.today, calendar.TUESDAY, 3)
        for name, (exchange, _, _, lot) in _INDEX_DERIVATIVES.items():
            if exchange == "NFO":
                for expiry in months:
                    lot_size = _index_lot(name, expiry, lot)
                    yield self._future(
                        tokens(), name, expiry, lot_size, "FUTIDX", "NFO", "5.000000"
                    )
        for name, price in self.fno_stocks():
            for expiry in months:
                yield self._future(
                    tokens(), name, expiry, _nice_lot(price), "FUTSTK", "NFO", "5.000000"
                )

    def _chains(self, chains: list[_Chain], tokens: _Tokens) -> Iterator[Row]:
        """Option rows of many chains, widening all of them from the money a round at a
        time (``width`` strikes each side per round) so that any prefix of the stream is a
        set of centred chains."""
        rounds = 0
        while True:
            produced = False
            for chain in chains:
                atm = (chain.spot / chain.step).quantize(Decimal(1)) * chain.step
                for distance in range(rounds * chain.width, (rounds + 1) * chain.width):
                    offsets = [0] if distance == 0 else [distance, -distance]
                    for expiry in chain.expiries:
                        for offset in offsets:
                            strike = atm + offset * chain.step
                            if strike <= 0:
                                continue
                            produced = True
                            for right in ("CE", "PE"):
                                yield self._option(
                                    tokens(),
                                    chain.name,
                                    expiry,
                                    strike,
                                    right,
                                    chain.lot,
                                    chain.kind,
                                    chain.exchange,
                                    chain.tick,
                                    chain.scale,
                                )
            if not produced:
                return
            rounds += 1

    def nfo_options(self, tokens: _Tokens) -> Iterator[Row]:
        monthly = _monthly(self.today, calendar.TUESDAY, 3)
        quarterly = [d for d in _monthly(self.today, calendar.TUESDAY, 15) if d.month % 3 == 0][:4]
        chains: list[_Chain] = []
        for name, (exchange, level, step, lot) in _INDEX_DERIVATIVES.items():
            if exchange != "NFO":
                continue
            expiries = list(monthly)
            if name == "NIFTY":
                expiries = sorted({*_weekly(self.today, calendar.TUESDAY, 4), *monthly, *quarterly})
            for expiry in expiries:
                chains.append(
                    _Chain(
                        name,
                        [expiry],
                        Decimal(level),
                        Decimal(step),
                        _index_lot(name, expiry, lot),
                        "OPTIDX",
                        "NFO",
                        "5.000000",
                        Decimal(100),
                        width=8 if name in ("NIFTY", "BANKNIFTY") else 4,
                    )
                )
        for name, price in self.fno_stocks():
            chains.append(
                _Chain(
                    name,
                    monthly,
                    price,
                    _stock_step(price),
                    _nice_lot(price),
                    "OPTSTK",
                    "NFO",
                    "5.000000",
                    Decimal(100),
                )
            )
        yield from self._chains(chains, tokens)

    def bfo(self) -> Iterator[Row]:
        tokens = _Tokens(800000)
        monthly = _monthly(self.today, calendar.THURSDAY, 3)
        chains: list[_Chain] = []
        for name, (exchange, level, step, lot) in _INDEX_DERIVATIVES.items():
            if exchange != "BFO":
                continue
            for expiry in monthly:
                yield self._future(tokens(), name, expiry, lot, "FUTIDX", "BFO", "5.000000")
            expiries = list(monthly)
            if name == "SENSEX":
                expiries = sorted({*_weekly(self.today, calendar.THURSDAY, 3), *monthly})
            chains.append(
                _Chain(
                    name,
                    expiries,
                    Decimal(level),
                    Decimal(step),
                    lot,
                    "OPTIDX",
                    "BFO",
                    "5.000000",
                    Decimal(100),
                    width=4,
                )
            )
        yield from self._chains(chains, tokens)

    def mcx(self) -> Iterator[Row]:
        tokens = _Tokens(420000)
        chains: list[_Chain] = []
        for name, (price, lot, tick, step, options) in _MCX.items():
            day = 19 if "CRUDE" in name else 25 if name == "NATURALGAS" else 5
            futures = _fixed_day(self.today, day, 4)
            for expiry in futures:
                yield self._future(
                    tokens(), name, expiry, lot, "FUTCOM", "MCX", _money(Decimal(tick))
                )
            if options:
                option_expiries = [
                    e - timedelta(days=3 if e.weekday() >= 3 else 5) for e in futures[:3]
                ]
                chains.append(
                    _Chain(
                        name,
                        [e for e in option_expiries if e >= self.today],
                        Decimal(price),
                        Decimal(step),
                        lot,
                        "OPTFUT",
                        "MCX",
                        _money(Decimal(tick)),
                        Decimal(100),
                    )
                )
        yield from self._chains(chains, tokens)

    def cds(self) -> Iterator[Row]:
        tokens = _Tokens(1100)
        monthly = _fixed_day(self.today, 26, 6)
        weekly = _weekly(self.today, calendar.FRIDAY, 4)
        chains: list[_Chain] = []
        for name, (price, step) in _CDS.items():
            for expiry in monthly:
                yield self._future(tokens(), name, expiry, 1, "FUTCUR", "CDS", "0.250000")
            chains.append(
                _Chain(
                    name,
                    sorted({*weekly, *monthly[:3]}),
                    Decimal(price),
                    Decimal(step),
                    1,
                    "OPTCUR",
                    "CDS",
                    "0.250000",
                    Decimal(10) ** 7,
                )
            )
        for expiry in monthly[:2]:
            yield self._future(tokens(), "GS2033", expiry, 2000, "FUTIRC", "CDS", "0.250000")
        yield from self._chains(chains, tokens)

    def ncdex(self) -> Iterator[Row]:
        tokens = _Tokens(60000)
        expiries = _fixed_day(self.today, 20, 3)
        for expiry in expiries:
            for name, (_, lot, tick) in _NCDEX.items():
                yield self._future(
                    tokens(), name, expiry, lot, "FUTCOM", "NCDEX", _money(Decimal(tick))
                )


def generate_scrip_master(
    rows: int = DEFAULT_ROWS, seed: int = 0, today: date | None = None
) -> list[dict[str, str]]:
    """``rows`` instrument-master rows in the real format (see the module docstring).

    Deterministic for a given ``(rows, seed, today)``; ``today`` defaults to the current
    date (expiries are relative to it).
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    gen = _Generator(seed, today or date.today())
    out: list[Row] = list(islice(gen.indices(), rows))
    quota = {name: int(rows * share) for name, share in _SHARES.items()}
    nfo_tokens = _Tokens(35000)
    segments: list[tuple[Iterator[Row], int]] = [
        (gen.equities("NSE"), max(quota["nse_eq"], min(60, rows // 4))),
        (gen.equities("BSE"), quota["bse_eq"]),
        (gen.nfo_futures(nfo_tokens), int(rows * 0.01)),
        (gen.bfo(), quota["bfo"]),
        (gen.mcx(), quota["mcx"]),
        (gen.cds(), quota["cds"]),
        (gen.ncdex(), quota["ncdex"]),
    ]
    for stream, count in segments:
        out.extend(islice(stream, max(0, min(count, rows - len(out)))))
    out.extend(islice(gen.nfo_options(nfo_tokens), max(0, rows - len(out))))
    if len(out) < rows:  # the option chains ran dry (tiny steps): top up with BSE scrips
        out.extend(islice(gen.equities("BSE"), rows - len(out)))
    return out[:rows]


def small_scrip_master(today: date | None = None) -> list[dict[str, str]]:
    """A small file for tests and the fake server's default: the NSE indices, Nifty 50
    equities on NSE and BSE, NIFTY/BANKNIFTY futures, centred NIFTY option chains, a few
    BFO, MCX, CDS and NCDEX rows (about 600 rows)."""
    return generate_scrip_master(600, seed=0, today=today)


def scrip_master_bytes(rows: list[dict[str, str]]) -> bytes:
    """The JSON array as the real service serves it."""
    return json.dumps(rows).encode()


def write_scrip_master(path: str | Path, rows: list[dict[str, str]]) -> int:
    """Write ``rows`` as ``OpenAPIScripMaster.json`` to ``path``; returns the byte count."""
    data = scrip_master_bytes(rows)
    Path(path).write_bytes(data)
    return len(data)
