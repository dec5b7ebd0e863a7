"""SmartStream binary packets: sizes and offsets as documented, exact round trips for every
mode (Hypothesis), currency scaling, NUL-padded tokens, best-five sides by position, and
the fidelity proof: the official SDK's own parser (``SmartWebSocketV2._parse_binary_data``)
decodes the bytes we pack to the same values we do."""

from __future__ import annotations

import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.packets import (
    Depth20Packet,
    Level,
    LtpPacket,
    PacketError,
    QuotePacket,
    SnapQuotePacket,
)

EXCHANGE_TYPES = st.sampled_from([1, 2, 3, 4, 5, 7, 13])
TOKENS = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=25)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
U_I64 = st.integers(min_value=0, max_value=2**63 - 1)
I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
I16 = st.integers(min_value=-(2**15), max_value=2**15 - 1)
DOUBLES = st.floats(allow_nan=False, allow_infinity=False)


def ltp_packets() -> st.SearchStrategy[LtpPacket]:
    return st.builds(LtpPacket, st.just(1), EXCHANGE_TYPES, TOKENS, I64, I64, I64)


def quote_packets() -> st.SearchStrategy[QuotePacket]:
    return st.builds(
        QuotePacket, st.just(2), EXCHANGE_TYPES, TOKENS, I64, I64, I64, I64, I64, I64,
        DOUBLES, DOUBLES, I64, I64, I64, I64,
    )  # fmt: skip


def book(count: int, quantity: Any, price: Any, orders: Any) -> Any:
    level = st.builds(Level, quantity, price, orders)
    return st.lists(level, min_size=count, max_size=count).map(tuple)


def snapquote_packets() -> st.SearchStrategy[SnapQuotePacket]:
    # Bids strictly below asks (a sane book); the swap rule is tested separately.
    def sane(p: SnapQuotePacket) -> bool:
        return not (p.bids[0].quantity and p.asks[0].quantity) or (
            p.bids[0].price <= p.asks[0].price
        )

    return st.builds(
        SnapQuotePacket, st.just(3), EXCHANGE_TYPES, TOKENS, I64, I64, I64, I64, I64, I64,
        DOUBLES, DOUBLES, I64, I64, I64, I64, I64, I64, DOUBLES,
        book(5, I64, I64, I16), book(5, I64, I64, I16), I64, I64, I64, I64,
    ).filter(sane)  # fmt: skip


def depth_packets() -> st.SearchStrategy[Depth20Packet]:
    return st.builds(
        Depth20Packet, st.just(4), st.just(1), TOKENS, I64, I64,
        book(20, I32, I32, I16), book(20, I32, I32, I16),
    )  # fmt: skip


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The SDK's parser on an instance built without its constructor (no socket, no log
    files); importing ``SmartApi`` tries api.ipify.org once, so import from a temp dir."""
    import os

    cwd = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("sdk"))
    try:
        from SmartApi.smartWebSocketV2 import SmartWebSocketV2
    finally:
        os.chdir(cwd)
    return object.__new__(SmartWebSocketV2)


# -- layout ---------------------------------------------------------------------------------
def test_sizes_match_the_documented_layouts() -> None:
    assert packets.MODE_SIZES == {1: 51, 2: 123, 3: 379, 4: 443}
    p = LtpPacket(1, 13, "1234", 7, 1_764_045_000_000, 832_512_345)
    data = packets.pack_ltp(p)
    assert len(data) == 51
    assert data[0] == 1 and data[1] == 13
    assert data[2:27] == b"1234" + b"\0" * 21
    assert struct.unpack_from("<qqq", data, 27) == (7, 1_764_045_000_000, 832_512_345)


def test_snapquote_best_five_are_buys_first_with_flag_one() -> None:
    bids = tuple(Level(100 + i, 50_000 - 5 * i, i + 1) for i in range(5))
    asks = tuple(Level(200 + i, 50_005 + 5 * i, i + 2) for i in range(5))
    p = SnapQuotePacket(
        3, 1, "3045", 1, 2, 50_002, 10, 50_001, 1_000, 1.0, 2.0, 1, 2, 3, 4, 5, 6, 0.0,
        bids, asks, 55_000, 45_000, 60_000, 40_000,
    )  # fmt: skip
    data = packets.pack_snapquote(p)
    assert len(data) == 379
    first_buy = struct.unpack_from("<hqqh", data, 147)
    first_sell = struct.unpack_from("<hqqh", data, 247)
    assert first_buy == (1, 100, 50_000, 1) and first_sell == (0, 200, 50_005, 2)
    assert struct.unpack_from("<qqqq", data, 347) == (55_000, 45_000, 60_000, 40_000)


def test_depth20_layout() -> None:
    bids = tuple(Level(i + 1, 1_000 - i, i) for i in range(20))
    asks = tuple(Level(i + 1, 1_001 + i, i) for i in range(20))
    data = packets.pack_depth20(Depth20Packet(4, 1, "2885", 11, 22, bids, asks))
    assert len(data) == 443
    assert struct.unpack_from("<qq", data, 27) == (11, 22)
    assert struct.unpack_from("<iih", data, 43) == (1, 1_000, 0)
    assert struct.unpack_from("<iih", data, 243) == (1, 1_001, 0)


# -- round trips ----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(ltp_packets(), quote_packets(), snapquote_packets(), depth_packets()))
def test_every_mode_round_trips_exactly(packet: packets.Packet) -> None:
    data = packets.pack(packet)
    assert len(data) == packets.MODE_SIZES[packet.mode]
    assert packets.parse(data) == packet
    assert packets.parse(bytearray(data)) == packet
    assert packets.parse(memoryview(data)) == packet


def test_the_token_is_read_up_to_the_first_nul() -> None:
    data = bytearray(packets.pack_ltp(LtpPacket(1, 1, "3045", 0, 0, 100)))
    data[2 + 4 + 1 : 27] = b"garbage after the nul"[: 27 - 7]  # padding that is not NULs
    assert packets.parse(bytes(data)).token == "3045"
    full = packets.pack_ltp(LtpPacket(1, 1, "9" * 25, 0, 0, 100))  # no NUL at all
    assert packets.parse(full).token == "9" * 25


def test_tokens_that_do_not_fit_are_refused() -> None:
    with pytest.raises(PacketError):
        packets.pack_ltp(LtpPacket(1, 1, "9" * 26, 0, 0, 100))
    with pytest.raises(PacketError):
        packets.pack_ltp(LtpPacket(1, 1, "30\x0045", 0, 0, 100))
    with pytest.raises(PacketError):
        packets.pack_ltp(LtpPacket(1, 1, "3045", 0, 0, 2**63))  # beyond int64


def test_currency_prices_scale_by_ten_million_others_by_a_hundred() -> None:
    assert packets.price_divisor(13) == 10_000_000 and packets.price_divisor(1) == 100
    usd_inr = packets.parse(packets.pack_ltp(LtpPacket(1, 13, "1", 0, 0, 832_512_345)))
    assert packets.to_price(usd_inr.ltp, usd_inr.exchange_type) == Decimal("83.2512345")
    sbin = packets.parse(packets.pack_ltp(LtpPacket(1, 1, "3045", 0, 0, 81_235)))
    assert packets.to_price(sbin.ltp, sbin.exchange_type) == Decimal("812.35")
    assert packets.from_price(Decimal("83.2512345"), 13) == 832_512_345
    assert packets.from_price("812.35", 1) == 81_235
    with pytest.raises(PacketError):
        packets.from_price("812.355", 1)  # finer than a paisa


def test_crossed_best_five_sides_are_swapped_back() -> None:
    # A server using the opposite convention (sells first): prices reveal it.
    sells = tuple(Level(10, 50_010 + 5 * i, 1) for i in range(5))
    buys = tuple(Level(10, 50_000 - 5 * i, 1) for i in range(5))
    p = SnapQuotePacket(
        3, 1, "3045", 1, 2, 50_005, 1, 1, 1, 1.0, 1.0, 1, 1, 1, 1, 1, 1, 0.0,
        sells, buys, 1, 1, 1, 1,
    )  # fmt: skip
    parsed = packets.parse(packets.pack_snapquote(p))
    assert isinstance(parsed, SnapQuotePacket)
    assert parsed.bids == buys and parsed.asks == sells
    assert parsed.bids[0].price < parsed.asks[0].price


def test_frames_that_are_not_packets_are_refused_clearly() -> None:
    ltp = packets.pack_ltp(LtpPacket(1, 1, "3045", 0, 0, 100))
    with pytest.raises(PacketError, match="empty"):
        packets.parse(b"")
    with pytest.raises(PacketError, match="needs 51 bytes"):
        packets.parse(ltp[:50])
    with pytest.raises(PacketError, match="unknown subscription mode 9"):
        packets.parse(b"\x09" + ltp[1:])
    with pytest.raises(PacketError, match="needs 123 bytes"):
        packets.parse(b"\x02" + ltp[1:])  # a Quote header on an LTP-sized frame
    # Trailing bytes beyond the layout are ignored, as the SDKs do.
    assert packets.parse(ltp + b"\0\0").ltp == 100


# -- fidelity with the official SDK ---------------------------------------------------------
def sdk_view(packet: packets.Packet) -> dict[str, Any]:
    """What ``_parse_binary_data`` must return for ``packet`` (its key names)."""
    view: dict[str, Any] = {
        "subscription_mode": packet.mode,
        "exchange_type": packet.exchange_type,
        "token": packet.token,
    }
    if isinstance(packet, Depth20Packet):
        # SDK quirk (§1.12): "exchange_timestamp" is read from offset 35.
        view["exchange_timestamp"] = packet.packet_received_time
        view["packet_received_time"] = packet.packet_received_time
        view["depth_20_buy_data"] = [
            {"quantity": q, "price": p, "num_of_orders": o} for q, p, o in packet.bids
        ]
        view["depth_20_sell_data"] = [
            {"quantity": q, "price": p, "num_of_orders": o} for q, p, o in packet.asks
        ]
        return view
    view |= {
        "sequence_number": packet.sequence,
        "exchange_timestamp": packet.exchange_timestamp,
        "last_traded_price": packet.ltp,
        "subscription_mode_val": {1: "LTP", 2: "QUOTE", 3: "SNAP_QUOTE"}[packet.mode],
    }
    if isinstance(packet, QuotePacket | SnapQuotePacket):
        view |= {
            "last_traded_quantity": packet.last_traded_quantity,
            "average_traded_price": packet.average_price,
            "volume_trade_for_the_day": packet.volume,
            "total_buy_quantity": packet.total_buy_quantity,
            "total_sell_quantity": packet.total_sell_quantity,
            "open_price_of_the_day": packet.open,
            "high_price_of_the_day": packet.high,
            "low_price_of_the_day": packet.low,
            "closed_price": packet.close,
        }
    if isinstance(packet, SnapQuotePacket):
        view |= {
            "last_traded_timestamp": packet.last_traded_timestamp,
            "open_interest": packet.open_interest,
            # The SDK reads this double as int64; the fake (and we, in tests) send 0.
            "open_interest_change_percentage": 0,
            "upper_circuit_limit": packet.upper_circuit,
            "lower_circuit_limit": packet.lower_circuit,
            "52_week_high_price": packet.high_52_week,
            "52_week_low_price": packet.low_52_week,
            # The SDK reads flag and orders unsigned; sides by flag then swapped (§1.12).
            "best_5_buy_data": [
                {"flag": 1, "quantity": q, "price": p, "no of orders": o % 65536}
                for q, p, o in packet.bids
            ],
            "best_5_sell_data": [
                {"flag": 0, "quantity": q, "price": p, "no of orders": o % 65536}
                for q, p, o in packet.asks
            ],
        }
    return view


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        ltp_packets(),
        quote_packets(),
        snapquote_packets().map(lambda p: p._replace(open_interest_change=0.0)),
        depth_packets(),
    )
)
def test_the_official_sdk_parses_our_packets_to_the_same_values(
    sdk: Any, packet: packets.Packet
) -> None:
    data = packets.pack(packet)
    assert sdk._parse_binary_data(data) == sdk_view(packet)
    assert packets.parse(data) == packet


def test_the_fake_feeds_packets_parse_identically_in_the_sdk(sdk: Any) -> None:
    """The bytes the fake server emits (synthetic SnapQuote fields included) decode the
    same in the SDK as in our parser."""
    from trading_backend.brokers.angel_one.fake.feed_ws import FakeFeedServer

    fake = FakeFeedServer(lambda _: None)
    built = fake._build((1, "3045"), {"ltp": Decimal("812.35"), "volume": 1200})
    for mode, data in built.items():
        ours = packets.parse(data)
        assert ours.mode == mode
        assert sdk._parse_binary_data(data) == sdk_view(ours)
    snap = packets.parse(built[packets.MODE_SNAP_QUOTE])
    assert isinstance(snap, SnapQuotePacket)
    assert snap.bids[0].price == 81_230 and snap.asks[0].price == 81_240
