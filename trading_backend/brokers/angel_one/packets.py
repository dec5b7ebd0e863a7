"""SmartStream (WebSocket 2.0) binary tick packets: exact parsers and packers.

Layouts are in ``BROKER_PROTOCOLS.md`` §1.12 (little-endian throughout):

* LTP (mode 1, 51 bytes): ``<BB25sqqq`` — mode, exchange type, NUL-padded token,
  sequence, exchange timestamp (epoch ms), last traded price.
* Quote (mode 2, 123 bytes): LTP + ``<qqqddqqqq`` — last traded quantity, average price,
  day volume, total buy / sell quantity (doubles), open, high, low, previous close.
* SnapQuote (mode 3, 379 bytes): Quote + ``<qqd`` (last traded timestamp, open interest,
  OI change %) + 10 x ``<hqqh`` best-five levels (flag, quantity, price, orders; five buys
  then five sells) + ``<qqqq`` (upper / lower circuit, 52-week high / low).
* Depth-20 (mode 4, 443 bytes): ``<BB25sqq`` (mode, exchange type, token, exchange
  timestamp, packet-received time) + 20 x ``<iih`` buys + 20 x ``<iih`` sells.

Why this module instead of the SDK's parser: a feed of a few thousand instruments can
deliver tens of thousands of packets a second per process, and the SDK's parser slices
and unpacks every field separately and walks the token byte by byte. Here each packet is
one precompiled ``struct.Struct.unpack_from`` plus one tuple build; results are
``NamedTuple`` s (plain tuples at runtime, no per-instance dict).

Prices stay **integers in the wire unit** (paise; 1e-7 rupee for currency derivatives,
exchange type 13) inside packets, so parsing never touches ``Decimal``. Convert with
``to_price`` where a packet becomes one of our market-data types.

Best-five sides are taken **by position** (the first five levels are bids), not by the
flag, whose convention is disputed (smartapi-python issue #71 / PR #72). A book whose best
bid is above its best ask can only mean the sides came the other way round, so the parser
swaps them back (sanity check, §1.12 "adapter advice").
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

__all__ = [
    "CURRENCY_EXCHANGE_TYPE",
    "DEPTH20_SIZE",
    "LTP_SIZE",
    "MODE_DEPTH_20",
    "MODE_LTP",
    "MODE_QUOTE",
    "MODE_SIZES",
    "MODE_SNAP_QUOTE",
    "QUOTE_SIZE",
    "SNAP_QUOTE_SIZE",
    "Depth20Packet",
    "Level",
    "LtpPacket",
    "Packet",
    "PacketError",
    "QuotePacket",
    "SnapQuotePacket",
    "from_price",
    "pack",
    "pack_depth20",
    "pack_ltp",
    "pack_quote",
    "pack_snapquote",
    "parse",
    "parse_depth20",
    "parse_ltp",
    "parse_quote",
    "parse_snapquote",
    "price_divisor",
    "to_price",
]

MODE_LTP: Final = 1
MODE_QUOTE: Final = 2
MODE_SNAP_QUOTE: Final = 3
MODE_DEPTH_20: Final = 4

LTP_SIZE: Final = 51
QUOTE_SIZE: Final = 123
SNAP_QUOTE_SIZE: Final = 379
DEPTH20_SIZE: Final = 443
MODE_SIZES: Final[dict[int, int]] = {
    MODE_LTP: LTP_SIZE,
    MODE_QUOTE: QUOTE_SIZE,
    MODE_SNAP_QUOTE: SNAP_QUOTE_SIZE,
    MODE_DEPTH_20: DEPTH20_SIZE,
}

_T = TypeVar("_T")
CURRENCY_EXCHANGE_TYPE: Final = 13  # cde_fo: prices in 1e-7 rupee
TOKEN_SIZE: Final = 25
BEST_FIVE_BUY_FLAG: Final = 1  # the docs' convention; the fake emits it, the parser ignores it
BEST_FIVE_SELL_FLAG: Final = 0

_HEAD = "<BB25s"
_LTP_TAIL = "qqq"
_QUOTE_TAIL = "qqqddqqqq"
_SNAP_TAIL = "qqd" + "hqqh" * 10 + "qqqq"  # packing: flag, quantity, price, orders
_SNAP_PARSE_TAIL = "qqd" + "2xqqh" * 10 + "qqqq"  # parsing: the flag is skipped
_DEPTH_TAIL = "qq" + "iih" * 40

_LTP = struct.Struct(_HEAD + _LTP_TAIL)
_QUOTE = struct.Struct(_HEAD + _LTP_TAIL + _QUOTE_TAIL)
_SNAP = struct.Struct(_HEAD + _LTP_TAIL + _QUOTE_TAIL + _SNAP_TAIL)
_SNAP_PARSE = struct.Struct(_HEAD + _LTP_TAIL + _QUOTE_TAIL + _SNAP_PARSE_TAIL)
_DEPTH = struct.Struct(_HEAD + _DEPTH_TAIL)
assert _LTP.size == LTP_SIZE and _QUOTE.size == QUOTE_SIZE
assert _SNAP.size == _SNAP_PARSE.size == SNAP_QUOTE_SIZE and _DEPTH.size == DEPTH20_SIZE


class PacketError(ValueError):
    """A binary frame that is not a SmartStream tick packet (unknown mode, too short)."""


class Level(NamedTuple):
    """One price level of a book side. ``price`` in the wire unit (see ``to_price``)."""

    quantity: int
    price: int
    orders: int


class LtpPacket(NamedTuple):
    mode: int
    exchange_type: int
    token: str
    sequence: int
    exchange_timestamp: int  # epoch milliseconds
    ltp: int


class QuotePacket(NamedTuple):
    mode: int
    exchange_type: int
    token: str
    sequence: int
    exchange_timestamp: int
    ltp: int
    last_traded_quantity: int
    average_price: int
    volume: int  # traded today, cumulative
    total_buy_quantity: float
    total_sell_quantity: float
    open: int
    high: int
    low: int
    close: int  # previous close


class SnapQuotePacket(NamedTuple):
    mode: int
    exchange_type: int
    token: str
    sequence: int
    exchange_timestamp: int
    ltp: int
    last_traded_quantity: int
    average_price: int
    volume: int
    total_buy_quantity: float
    total_sell_quantity: float
    open: int
    high: int
    low: int
    close: int
    last_traded_timestamp: int  # unit undocumented (seconds in community use)
    open_interest: int
    open_interest_change: float  # documented as garbage; the SDK reads it as int64
    bids: tuple[Level, ...]  # best first
    asks: tuple[Level, ...]
    upper_circuit: int
    lower_circuit: int
    high_52_week: int
    low_52_week: int


class Depth20Packet(NamedTuple):
    mode: int
    exchange_type: int
    token: str
    exchange_timestamp: int
    packet_received_time: int  # "dummy, will be deprecated"
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


Packet = LtpPacket | QuotePacket | SnapQuotePacket | Depth20Packet


# -- tokens ---------------------------------------------------------------------------------
# A feed repeats the same few thousand tokens forever: decoding each distinct 25-byte field
# once and looking it up afterwards is cheaper than find + slice + decode per packet.
_TOKEN_CACHE_MAX: Final = 65_536
_tokens: dict[bytes, str] = {}
_tokens_get = _tokens.get


def _decode_token(raw: bytes) -> str:
    end = raw.find(b"\0")
    token = (raw if end < 0 else raw[:end]).decode("ascii", "replace")
    if len(_tokens) >= _TOKEN_CACHE_MAX:  # garbage in the padding must not grow us forever
        _tokens.clear()
    _tokens[raw] = token
    return token


def _encode_token(token: str) -> bytes:
    raw = token.encode("ascii")
    if len(raw) > TOKEN_SIZE or b"\0" in raw:
        raise PacketError(f"token {token!r} does not fit the 25-byte field")
    return raw  # struct's "25s" pads with NULs


# -- parsing --------------------------------------------------------------------------------
if TYPE_CHECKING:

    def _new(cls: type[_T], values: Iterable[Any], /) -> _T: ...

else:
    _new = tuple.__new__  # builds a NamedTuple from a tuple without a Python __new__ frame
Buffer = bytes | bytearray | memoryview
_ltp_unpack = _LTP.unpack_from
_quote_unpack = _QUOTE.unpack_from
_snap_unpack = _SNAP_PARSE.unpack_from
_depth_unpack = _DEPTH.unpack_from


def parse_ltp(data: Buffer) -> LtpPacket:
    v = _ltp_unpack(data)
    raw = v[2]
    return _new(LtpPacket, (v[0], v[1], _tokens_get(raw) or _decode_token(raw), v[3], v[4], v[5]))


def parse_quote(data: Buffer) -> QuotePacket:
    v = _quote_unpack(data)
    raw = v[2]
    return _new(QuotePacket, (*v[:2], _tokens_get(raw) or _decode_token(raw), *v[3:]))


def _levels(v: tuple[Any, ...], start: int, stop: int) -> tuple[Level, ...]:
    return tuple([_new(Level, v[i : i + 3]) for i in range(start, stop, 3)])


def parse_snapquote(data: Buffer) -> SnapQuotePacket:
    # The best-five flags are skipped by the layout itself ("2x"): sides come by position.
    # Unrolled: this is the heaviest packet, and a loop here costs ~40 % of its parse time.
    v = _snap_unpack(data)
    raw = v[2]
    bids = (
        _new(Level, v[18:21]),
        _new(Level, v[21:24]),
        _new(Level, v[24:27]),
        _new(Level, v[27:30]),
        _new(Level, v[30:33]),
    )
    asks = (
        _new(Level, v[33:36]),
        _new(Level, v[36:39]),
        _new(Level, v[39:42]),
        _new(Level, v[42:45]),
        _new(Level, v[45:48]),
    )
    best_bid, best_ask = bids[0], asks[0]
    if best_bid[0] and best_ask[0] and best_bid[1] > best_ask[1]:
        bids, asks = asks, bids  # sides came sells-first: trust prices, not position
    return _new(
        SnapQuotePacket,
        (*v[:2], _tokens_get(raw) or _decode_token(raw), *v[3:18], bids, asks, *v[48:52]),
    )


def parse_depth20(data: Buffer) -> Depth20Packet:
    v = _depth_unpack(data)
    raw = v[2]
    return _new(
        Depth20Packet,
        (
            v[0],
            v[1],
            _tokens_get(raw) or _decode_token(raw),
            v[3],
            v[4],
            _levels(v, 5, 65),
            _levels(v, 65, 125),
        ),
    )


_PARSERS: Final[dict[int, tuple[int, Callable[[Buffer], Packet]]]] = {
    MODE_LTP: (LTP_SIZE, parse_ltp),
    MODE_QUOTE: (QUOTE_SIZE, parse_quote),
    MODE_SNAP_QUOTE: (SNAP_QUOTE_SIZE, parse_snapquote),
    MODE_DEPTH_20: (DEPTH20_SIZE, parse_depth20),
}
# One dict lookup checks size and mode together (mode < 256, so the key is unique).
_EXACT: Final[dict[int, Callable[[Buffer], Packet]]] = {
    size * 256 + mode: parser for mode, (size, parser) in _PARSERS.items()
}


def parse(data: Buffer) -> Packet:
    """Decode one binary frame.

    Every real packet has exactly its mode's size, which costs one dict lookup here;
    anything else goes through ``_parse_other``: longer frames are parsed by their mode
    byte (trailing bytes ignored, as the SDKs do), shorter or unknown ones raise
    ``PacketError``."""
    try:
        return _EXACT[len(data) * 256 + data[0]](data)
    except (KeyError, IndexError):
        return _parse_other(data)


def _parse_other(data: Buffer) -> Packet:
    if not data:
        raise PacketError("empty binary frame")
    known = _PARSERS.get(data[0])
    if known is None:
        raise PacketError(f"unknown subscription mode {data[0]} ({len(data)} bytes)")
    size, parser = known
    if len(data) < size:
        raise PacketError(f"mode {data[0]} packet needs {size} bytes, got {len(data)}")
    return parser(data)


# -- prices ---------------------------------------------------------------------------------
def price_divisor(exchange_type: int) -> int:
    """Wire units per rupee: 100 (paise), or 10,000,000 for currency derivatives."""
    return 10_000_000 if exchange_type == CURRENCY_EXCHANGE_TYPE else 100


def to_price(value: int, exchange_type: int) -> Decimal:
    """Exact rupees from a wire price (``Decimal``; ``scaleb`` keeps every digit)."""
    return Decimal(value).scaleb(-7 if exchange_type == CURRENCY_EXCHANGE_TYPE else -2)


def from_price(rupees: Decimal | int | str, exchange_type: int) -> int:
    """Wire units from rupees; refuses values that are not a whole number of units."""
    scaled = Decimal(rupees) * price_divisor(exchange_type)
    units = int(scaled)
    if units != scaled:
        raise PacketError(f"price {rupees} is finer than the wire unit of exchange {exchange_type}")
    return units


# -- packing (fake server, tests) -----------------------------------------------------------
def _pack(layout: struct.Struct, *values: object) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:  # a value out of its field's range, or of the wrong type
        raise PacketError(f"cannot pack tick packet: {exc}") from None


def pack_ltp(packet: LtpPacket) -> bytes:
    mode, exchange_type, token, *rest = packet
    return _pack(_LTP, mode, exchange_type, _encode_token(token), *rest)


def pack_quote(packet: QuotePacket) -> bytes:
    mode, exchange_type, token, *rest = packet
    return _pack(_QUOTE, mode, exchange_type, _encode_token(token), *rest)


def _book_side(levels: tuple[Level, ...], count: int, flag: int | None) -> list[int | float]:
    if len(levels) > count:
        raise PacketError(f"{len(levels)} levels do not fit a side of {count}")
    padded = list(levels) + [Level(0, 0, 0)] * (count - len(levels))
    out: list[int | float] = []
    for quantity, price, orders in padded:
        if flag is not None:
            out.append(flag)
        out.extend((quantity, price, orders))
    return out


def pack_snapquote(packet: SnapQuotePacket) -> bytes:
    """Best-five levels go buys first with flag 1, then sells with flag 0 (docs'
    convention, which all three official SDKs label correctly)."""
    p = packet
    return _pack(
        _SNAP,
        p.mode,
        p.exchange_type,
        _encode_token(p.token),
        *p[3:18],
        *_book_side(p.bids, 5, BEST_FIVE_BUY_FLAG),
        *_book_side(p.asks, 5, BEST_FIVE_SELL_FLAG),
        *p[20:24],
    )


def pack_depth20(packet: Depth20Packet) -> bytes:
    p = packet
    return _pack(
        _DEPTH,
        p.mode,
        p.exchange_type,
        _encode_token(p.token),
        p.exchange_timestamp,
        p.packet_received_time,
        *_book_side(p.bids, 20, None),
        *_book_side(p.asks, 20, None),
    )


def pack(packet: Packet) -> bytes:
    """Encode any packet with the packer of its type."""
    if isinstance(packet, LtpPacket):
        return pack_ltp(packet)
    if isinstance(packet, QuotePacket):
        return pack_quote(packet)
    if isinstance(packet, SnapQuotePacket):
        return pack_snapquote(packet)
    return pack_depth20(packet)
