"""Angel One's instrument master (``OpenAPIScripMaster.json``): download, parse, normalise
into our ``Instrument`` records, and choose which to keep.

The file (BROKER_PROTOCOLS.md §1.11) is one JSON array of about 1.5 lakh objects whose
values are all strings. What normalising means here:

* Exchanges: ``exch_seg`` names (``NSE``, ``NFO``...; also the docs' ``nse_cm`` spellings).
* Types: ``""`` -> EQ (NSE/BSE only), ``AMXIDX`` -> INDEX, ``FUT*`` -> FUT, ``OPT*`` ->
  CE or PE from the symbol's suffix. Anything else (``UNDCUR``, ``COMDTY``...) is skipped.
* Symbols (ours): NSE/BSE equities of the EQ series drop ``-EQ`` (``SBIN-EQ`` -> ``SBIN``,
  the same name the paper universe uses; ``XYZ-BE`` keeps its series), indices get short
  names (``Nifty 50`` -> ``NIFTY``, ``Nifty Bank`` -> ``BANKNIFTY`` ... see
  ``INDEX_SYMBOLS``; others upper case without spaces), derivatives keep Angel's trading
  symbol. Angel's own symbol always stays in ``broker_symbol`` and its token in ``token``:
  orders and the feed use those.
* Numbers: ``tick_size`` is in paise (``"5.000000"`` -> ₹0.05), ``strike`` is rupees x 100
  (``"2250000.000000"`` -> ₹22,500), currency options (``OPTCUR``/``OPTIRC``) x 10^7;
  ``expiry`` is ``DDMMMYYYY`` in any letter case. Contracts that expired before ``today``
  are dropped (a stale file must not resurrect them).

A row that cannot be normalised is counted under a reason and skipped; it never stops
the load. A body that is not a JSON array (a truncated download, an HTML error page) is
refused with ``ScripMasterError``: the caller keeps the table it has.

Choosing (``select_instruments``, the seed's "Instrument Configuration"): indices are
always kept (a few dozen reference rows); then at most ``max_equity`` equities, the
Nifty 50 first (NSE before BSE, the EQ series before others) and then the rest
alphabetically; and at most ``max_derivatives`` derivatives: NIFTY/BANKNIFTY index
futures, other index futures, stock futures, commodity/currency futures, then options
(NIFTY/BANKNIFTY index options, other index options, stock options, the rest). Within a
tier the nearest expiry comes first and options closest to the middle of their chain
(the listed strikes are centred on the money) come first. ``load_all`` keeps everything
in that order up to ``max_total``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from typing import Any, Final

import httpx

from trading_backend.domain import DomainError, ErrorCode, Exchange, Instrument, InstrumentType

__all__ = [
    "EXCHANGE_SEGMENTS",
    "INDEX_SYMBOLS",
    "InstrumentCaps",
    "NormaliseResult",
    "ScripMasterError",
    "ScripRow",
    "Selection",
    "SyncProgress",
    "fetch_scrip_master",
    "normalise_rows",
    "parse_expiry",
    "parse_scrip_master",
    "read_scrip_master",
    "select_instruments",
    "to_instrument",
]

SyncProgress = Callable[[str, int, int | None], object]
"""``(phase, done, total)``: ``download`` (bytes), ``parse`` (rows)."""

ScripRow = tuple[
    Exchange, str, InstrumentType, str, str, str, int, Decimal, date | None, Decimal | None,
    str | None, str,
]  # fmt: skip
"""A normalised instrument as a plain tuple (building 1.5 lakh frozen dataclasses costs
about 0.4 s): an ``InstrumentRecord`` (``marketdata.instruments``: exchange, symbol,
instrument_type, token, broker_symbol, name, lot_size, tick_size, expiry, strike,
underlying) followed by Angel's ``instrumenttype`` (``FUTIDX``...; ``""`` for equities),
which the prioritisation needs. ``to_instrument`` turns one into an ``Instrument``."""
EXCHANGE: Final = 0
SYMBOL: Final = 1
TYPE: Final = 2
TOKEN: Final = 3
BROKER_SYMBOL: Final = 4
NAME: Final = 5
LOT: Final = 6
TICK: Final = 7
EXPIRY: Final = 8
STRIKE: Final = 9
UNDERLYING: Final = 10
KIND: Final = 11

EXCHANGE_SEGMENTS: Final[dict[str, Exchange]] = {
    "NSE": Exchange.NSE,
    "BSE": Exchange.BSE,
    "NFO": Exchange.NFO,
    "BFO": Exchange.BFO,
    "MCX": Exchange.MCX,
    "CDS": Exchange.CDS,
    "NCDEX": Exchange.NCDEX,
    "NSE_CM": Exchange.NSE,
    "BSE_CM": Exchange.BSE,
    "NSE_FO": Exchange.NFO,
    "BSE_FO": Exchange.BFO,
    "MCX_FO": Exchange.MCX,
    "CDE_FO": Exchange.CDS,
    "NCX_FO": Exchange.NCDEX,
}
_SEGMENTS: Final = {**EXCHANGE_SEGMENTS, **{k.lower(): v for k, v in EXCHANGE_SEGMENTS.items()}}
CASH_EXCHANGES: Final = frozenset({Exchange.NSE, Exchange.BSE})
_EQ, _INDEX, _FUT, _CE, _PE = (
    InstrumentType.EQ,
    InstrumentType.INDEX,
    InstrumentType.FUT,
    InstrumentType.CE,
    InstrumentType.PE,
)

# Angel index display names (upper-cased) -> our short names. NIFTY and BANKNIFTY are
# the paper universe's index symbols too.
INDEX_SYMBOLS: Final[dict[str, str]] = {
    "NIFTY 50": "NIFTY",
    "NIFTY BANK": "BANKNIFTY",
    "NIFTY FIN SERVICE": "FINNIFTY",
    "NIFTY MID SELECT": "MIDCPNIFTY",
    "INDIA VIX": "INDIAVIX",
}
TOP_UNDERLYINGS: Final = frozenset({"NIFTY", "BANKNIFTY"})
CURRENCY_OPTION_KINDS: Final = frozenset({"OPTCUR", "OPTIRC"})
CURRENCY_STRIKE_SCALE: Final = Decimal(10) ** 7
STRIKE_SCALE: Final = Decimal(100)
TICK_SCALE: Final = Decimal(100)  # tick_size is in paise
DEFAULT_INDEX_TICK: Final = Decimal("0.05")
MAX_DOWNLOAD_BYTES: Final = 256 * 1024 * 1024  # the real file is 30-40 MB
PROGRESS_EVERY: Final = 10_000

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}


class ScripMasterError(DomainError):
    """The instrument master as a whole is unusable (not JSON, not an array, unreachable)."""

    code = ErrorCode.VALIDATION_ERROR


class _Skip(Exception):
    """One row cannot be used; ``args[0]`` is the reason reported in the summary."""


@dataclass(frozen=True, slots=True)
class InstrumentCaps:
    """How many instruments to keep (the seed's MAX_* / LOAD_ALL_INSTRUMENTS settings)."""

    max_equity: int = 1000
    max_derivatives: int = 500
    load_all: bool = False
    max_total: int = 150_000

    @classmethod
    def from_settings(cls, settings: Any, *, load_all: bool | None = None) -> InstrumentCaps:
        return cls(
            max_equity=settings.max_equity_instruments,
            max_derivatives=settings.max_derivatives_instruments,
            load_all=settings.load_all_instruments if load_all is None else load_all,
            max_total=settings.max_total_instruments,
        )


@dataclass(slots=True)
class NormaliseResult:
    rows: list[ScripRow]
    rows_read: int
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass(slots=True)
class Selection:
    """The rows chosen, in priority order, with counts per category."""

    rows: list[ScripRow]
    kept: dict[str, int]
    dropped: dict[str, int]

    def instruments(self) -> list[Instrument]:
        return [to_instrument(row) for row in self.rows]


def to_instrument(row: ScripRow) -> Instrument:
    return Instrument(
        symbol=row[SYMBOL],
        exchange=row[EXCHANGE],
        instrument_type=row[TYPE],
        token=row[TOKEN],
        name=row[NAME],
        lot_size=row[LOT],
        tick_size=row[TICK],
        expiry=row[EXPIRY],
        strike=row[STRIKE],
        underlying=row[UNDERLYING],
        broker_symbol=row[BROKER_SYMBOL],
    )


# -- reading ------------------------------------------------------------------------------
def parse_scrip_master(data: bytes | str) -> list[Any]:
    """Decode the file; refuse anything but a JSON array (truncated downloads fail here)."""
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScripMasterError(
            f"the instrument master is not valid JSON (truncated download?): {exc}"
        ) from None
    if not isinstance(payload, list):
        raise ScripMasterError(
            f"the instrument master is a JSON {type(payload).__name__}, not an array"
        )
    return payload


def read_scrip_master(path: str, progress: SyncProgress | None = None) -> bytes:
    """Read a local copy of the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ScripMasterError(f"cannot read {path}: {exc.strerror or exc}") from None
    if progress is not None:
        progress("download", len(data), len(data))
    return data


async def fetch_scrip_master(
    url: str,
    *,
    timeout: float = 120.0,
    progress: SyncProgress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bytes:
    """Download the file (public, no headers). Generous timeout: 30-40 MB from a server
    that is often slow in the morning. Raises ``ScripMasterError`` on any failure."""
    try:
        async with (
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
                follow_redirects=True,
                transport=transport,
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ScripMasterError(
                    f"instrument master download failed: HTTP {response.status_code}"
                )
            total = response.headers.get("content-length")
            expected = int(total) if total and total.isdigit() else None
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise ScripMasterError(
                        f"instrument master larger than {MAX_DOWNLOAD_BYTES} bytes: refused"
                    )
                if progress is not None:
                    progress("download", size, expected)
    except httpx.HTTPError as exc:
        raise ScripMasterError(
            f"instrument master download failed: {type(exc).__name__}: {exc}",
            ErrorCode.BROKER_UNAVAILABLE,
        ) from None
    if expected is not None and size < expected:
        raise ScripMasterError(f"instrument master truncated: {size} of {expected} bytes")
    return b"".join(chunks)


# -- normalising --------------------------------------------------------------------------
def parse_expiry(text: str) -> date:
    """``28MAR2024`` / ``04Apr2024`` (any case); ``28-MAR-2024`` and ISO dates tolerated."""
    value = text.strip()
    if len(value) == 9:
        month = _MONTHS.get(value[2:5].upper())
        if month is not None and value[:2].isdigit() and value[5:].isdigit():
            return date(int(value[5:]), month, int(value[:2]))
    for fmt in ("%d-%b-%Y", "%Y-%m-%d", "%d%b%y"):
        try:
            return datetime.strptime(value.title(), fmt).date()
        except ValueError:
            continue
    raise ValueError(value)


def _clean(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (22500, 0.05)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


class _Normaliser:
    """Per-load caches: a file repeats the same few ticks, lots, strikes and expiries."""

    def __init__(self, today: date) -> None:
        self.today = today
        # Keyed by the raw values (normally strings; anything hashable is tolerated).
        self.ticks: dict[Any, Decimal] = {}
        self.lots: dict[Any, int] = {}
        self.strikes: dict[tuple[Any, bool], Decimal] = {}
        self.expiries: dict[Any, date] = {}
        self.kinds: dict[Any, tuple[str, InstrumentType | None, bool, bool]] = {}

    def tick(self, raw: Any) -> Decimal:
        value = self.ticks.get(raw)
        if value is None:
            try:
                number = Decimal(raw.strip())
            except (InvalidOperation, AttributeError):
                raise _Skip("bad tick_size") from None
            if not number.is_finite():
                raise _Skip("bad tick_size")
            value = self.ticks[raw] = _clean(number / TICK_SCALE)
        return value

    def lot(self, raw: Any) -> int:
        value = self.lots.get(raw)
        if value is None:
            try:
                value = self.lots[raw] = int(Decimal(raw.strip()))
            except (InvalidOperation, AttributeError, ValueError, OverflowError):
                raise _Skip("bad lotsize") from None
        return value

    def strike(self, raw: Any, currency: bool) -> Decimal:
        key = (raw, currency)
        value = self.strikes.get(key)
        if value is None:
            try:
                number = Decimal(raw.strip())
            except (InvalidOperation, AttributeError):
                raise _Skip("bad strike") from None
            if not number.is_finite() or number <= 0:
                raise _Skip("option without a positive strike")
            scale = CURRENCY_STRIKE_SCALE if currency else STRIKE_SCALE
            value = self.strikes[key] = _clean(number / scale)
        return value

    def expiry(self, raw: Any) -> date:
        value = self.expiries.get(raw)
        if value is None:
            if not isinstance(raw, str) or not raw.strip():
                raise _Skip("derivative without expiry")
            try:
                value = self.expiries[raw] = parse_expiry(raw)
            except ValueError:
                raise _Skip("bad expiry") from None
        return value

    def kind(self, raw: Any) -> tuple[str, InstrumentType | None, bool, bool]:
        """``instrumenttype`` -> (normalised kind, our type (None: decided by the symbol's
        CE/PE suffix), is an option, is a currency option); cached per raw spelling."""
        found = self.kinds.get(raw)
        if found is None:
            if type(raw) is not str:
                raise _Skip("non-string instrumenttype")
            kind = raw.strip().upper()
            if kind == "":
                found = (kind, _EQ, False, False)
            elif kind == "AMXIDX":
                found = (kind, _INDEX, False, False)
            elif kind[:3] == "FUT":
                found = (kind, _FUT, False, False)
            elif kind[:3] == "OPT":
                found = (kind, None, True, kind in CURRENCY_OPTION_KINDS)
            else:
                raise _Skip(f"unsupported instrumenttype {kind[:16]}")
            self.kinds[raw] = found
        return found

    def row(self, row: Any) -> ScripRow:
        """One raw row -> a record tuple (see ``ScripRow``); raises ``_Skip``. Written for
        speed (a file has 1.5 lakh rows): cached conversions, no per-row objects beyond
        the tuple."""
        if type(row) is not dict:
            raise _Skip("row is not an object")
        try:
            token = row["token"]
            symbol = row["symbol"]
            raw_kind = row["instrumenttype"]
            segment = row["exch_seg"]
            name = row["name"]
            raw_tick = row["tick_size"]
            raw_lot = row["lotsize"]
        except KeyError as exc:
            raise _Skip(f"missing field {exc.args[0]}") from None
        if type(token) is not str or type(symbol) is not str:
            raise _Skip("non-string token or symbol")
        if token[-1:].isspace() or token[:1].isspace():
            token = token.strip()
        if symbol[-1:].isspace() or symbol[:1].isspace():
            symbol = symbol.strip()
        if not token:
            raise _Skip("empty token")
        if not symbol:
            raise _Skip("empty symbol")
        exchange = _SEGMENTS.get(segment)
        if exchange is None:
            exchange = EXCHANGE_SEGMENTS.get(str(segment).strip().upper())
            if exchange is None:
                raise _Skip(f"unknown exch_seg {str(segment)[:16]!r}")
        kind, kind_type, option, currency = self.kinds.get(raw_kind) or self.kind(raw_kind)
        if type(name) is not str:
            name = ""
        tick = self.ticks.get(raw_tick)
        if tick is None:
            tick = self.tick(raw_tick)
        if kind_type is _EQ:
            if exchange not in CASH_EXCHANGES:
                raise _Skip(f"no instrumenttype on {exchange.value}")
            ours = symbol[:-3] if symbol[-3:] == "-EQ" else symbol
            lot = self.lots.get(raw_lot)
            if lot is None:
                lot = self.lot(raw_lot)
            if tick <= 0 or lot <= 0:
                raise _Skip("equity without a positive tick or lot")
            return (
                exchange,
                ours,
                _EQ,
                token,
                symbol,
                name or ours,
                lot,
                tick,
                None,
                None,
                None,
                kind,
            )
        if kind_type is _INDEX:
            upper = symbol.upper()
            ours = INDEX_SYMBOLS.get(upper) or upper.replace(" ", "")
            if tick <= 0:
                tick = DEFAULT_INDEX_TICK
            return (exchange, ours, _INDEX, token, symbol, symbol, 1, tick, None, None, None, kind)
        raw_expiry = row.get("expiry")
        expiry = self.expiries.get(raw_expiry)
        if expiry is None:
            expiry = self.expiry(raw_expiry)
        if expiry < self.today:
            raise _Skip("expired contract")
        strike: Decimal | None = None
        if option:
            right = symbol[-2:]
            if right == "CE" or right == "ce":
                kind_type = _CE
            elif right == "PE" or right == "pe":
                kind_type = _PE
            else:
                raise _Skip("option symbol without CE/PE suffix")
            raw_strike = row.get("strike")
            strike = self.strikes.get((raw_strike, currency))
            if strike is None:
                strike = self.strike(raw_strike, currency)
        if tick <= 0:
            raise _Skip("derivative without a positive tick_size")
        lot = self.lots.get(raw_lot)
        if lot is None:
            lot = self.lot(raw_lot)
        if lot <= 0:
            raise _Skip("derivative without a positive lotsize")
        assert kind_type is not None
        name = name.strip()
        return (
            exchange,
            symbol,
            kind_type,
            token,
            symbol,
            name or symbol,
            lot,
            tick,
            expiry,
            strike,
            name.upper() or None,
            kind,
        )


def normalise_rows(
    rows: Iterable[Any], *, today: date, progress: SyncProgress | None = None
) -> NormaliseResult:
    """Turn raw rows into ``(Instrument, instrumenttype)`` pairs, skipping (and counting)
    unusable rows, expired contracts and duplicates of an (exchange, symbol) or
    (exchange, token) already seen (the first one wins)."""
    normaliser = _Normaliser(today)
    skipped: Counter[str] = Counter()
    out: list[ScripRow] = []
    # Keys of plain strings: hashing an Enum member runs Python code, a str's hash is cached.
    symbols: set[tuple[str, str]] = set()
    tokens: set[tuple[str, str]] = set()
    names = {exchange: exchange.value for exchange in Exchange}
    total = len(rows) if isinstance(rows, list) else None
    read = 0
    convert = normaliser.row
    for row in rows:
        read += 1
        if progress is not None and read % PROGRESS_EVERY == 0:
            progress("parse", read, total)
        try:
            item = convert(row)
        except _Skip as exc:
            skipped[exc.args[0]] += 1
            continue
        except (TypeError, AttributeError, ValueError, ArithmeticError):
            skipped["malformed row"] += 1  # e.g. a list where a string belongs
            continue
        exchange = names[item[EXCHANGE]]
        symbol_key = (exchange, item[SYMBOL])
        token_key = (exchange, item[TOKEN])
        if symbol_key in symbols:
            skipped["duplicate symbol"] += 1
            continue
        if token_key in tokens:
            skipped["duplicate token"] += 1
            continue
        symbols.add(symbol_key)
        tokens.add(token_key)
        out.append(item)
    if progress is not None:
        progress("parse", read, total if total is not None else read)
    return NormaliseResult(out, read, skipped)


# -- choosing -----------------------------------------------------------------------------
def _derivative_tier(row: ScripRow) -> int:
    kind = row[KIND]
    top = row[UNDERLYING] in TOP_UNDERLYINGS
    if row[TYPE] is InstrumentType.FUT:
        if kind == "FUTIDX":
            return 0 if top else 1
        return 2 if kind == "FUTSTK" else 3
    if kind == "OPTIDX":
        return 4 if top else 5
    return 6 if kind == "OPTSTK" else 7


def _kind_category(kind: str) -> str:
    if kind == "":
        return "equity"
    if kind == "AMXIDX":
        return "index"
    option = kind[:3] == "OPT"
    if kind[3:] == "IDX":
        return "index_option" if option else "index_future"
    if kind[3:] == "STK":
        return "stock_option" if option else "stock_future"
    return "other_option" if option else "other_future"


def _categories(rows: list[ScripRow]) -> Counter[str]:
    """Rows per category, counted per ``instrumenttype`` at C speed, then mapped."""
    counts: Counter[str] = Counter()
    for kind, count in Counter(map(itemgetter(KIND), rows)).items():
        counts[_kind_category(kind)] += count
    return counts


def _chain_middles(derivatives: list[ScripRow]) -> dict[tuple[Exchange, str, date], Decimal]:
    """The middle listed strike of each option chain: a stand-in for at-the-money, which
    the file cannot tell (it has no prices) but around which exchanges list strikes."""
    strikes: dict[tuple[Exchange, str, date], list[Decimal]] = {}
    for row in derivatives:
        strike, expiry = row[STRIKE], row[EXPIRY]
        if strike is not None and expiry is not None:
            strikes.setdefault((row[EXCHANGE], row[UNDERLYING] or "", expiry), []).append(strike)
    middles = {}
    for key, values in strikes.items():
        values.sort()
        middles[key] = values[len(values) // 2]
    return middles


def select_instruments(
    rows: list[ScripRow], caps: InstrumentCaps, nifty50: Iterable[str] | None = None
) -> Selection:
    """Apply the caps and priorities described in the module docstring."""
    if nifty50 is None:
        from trading_backend.brokers.paper.universe import nifty50_equities

        nifty50 = [spec.instrument.symbol for spec in nifty50_equities()]
    top_equities = frozenset(nifty50)
    indices: list[ScripRow] = []
    equities: list[ScripRow] = []
    derivatives: list[ScripRow] = []
    for row in rows:
        kind_type = row[TYPE]
        if kind_type is InstrumentType.INDEX:
            indices.append(row)
        elif kind_type is InstrumentType.EQ:
            equities.append(row)
        else:
            derivatives.append(row)
    everything_fits = caps.load_all and len(rows) <= caps.max_total
    if not everything_fits:

        def equity_key(row: ScripRow) -> tuple[int, int, int, str]:
            return (
                0 if row[NAME] in top_equities or row[SYMBOL] in top_equities else 1,
                0 if row[EXCHANGE] is Exchange.NSE else 1,
                0 if row[BROKER_SYMBOL] == row[SYMBOL] or row[BROKER_SYMBOL][-3:] == "-EQ" else 1,
                row[SYMBOL],
            )

        middles = _chain_middles(derivatives)
        far = date.max
        zero = Decimal(0)

        def derivative_key(row: ScripRow) -> tuple[int, date, Decimal, str, Decimal, str]:
            strike = row[STRIKE]
            expiry = row[EXPIRY] or far
            underlying = row[UNDERLYING] or ""
            distance = zero
            if strike is not None:
                distance = abs(strike - middles.get((row[EXCHANGE], underlying, expiry), strike))
            return (
                _derivative_tier(row),
                expiry,
                distance,
                underlying,
                strike if strike is not None else zero,
                row[SYMBOL],
            )

        equities.sort(key=equity_key)
        derivatives.sort(key=derivative_key)
    if caps.load_all:
        chosen = [*indices, *equities, *derivatives][: max(caps.max_total, 0)]
    else:
        chosen = [
            *indices,
            *equities[: max(caps.max_equity, 0)],
            *derivatives[: max(caps.max_derivatives, 0)],
        ]
    kept = _categories(chosen)
    offered = kept if everything_fits else _categories(rows)
    dropped = {name: offered[name] - kept[name] for name in offered if offered[name] > kept[name]}
    return Selection(chosen, dict(kept), dropped)
