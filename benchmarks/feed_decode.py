"""SmartStream packet decoding: our parser against the official SDK's, in the same run.

    python benchmarks/feed_decode.py [--packets 300000] [--repeat 3]

For each of LTP, Quote and SnapQuote, ``--packets`` distinct packets (a few hundred
tokens, moving prices) are packed up front; then they are decoded with
``packets.parse`` and with ``SmartWebSocketV2._parse_binary_data`` (called on an instance
made with ``object.__new__``: no socket, no log files). The best of ``--repeat`` runs is
reported per parser and mode, with the ratio, and written to
benchmarks/results/feed_decode.json. Before timing, every sample packet is checked to
decode to the same values in both parsers (the run fails otherwise).

Goals (issue #6): >= 1,000,000 LTP packets/s on one core, and >= 2x the SDK.
The SDK is a test-only dependency: install it (``smartapi-python``) to run this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trading_backend.brokers.angel_one import packets  # noqa: E402
from trading_backend.brokers.angel_one.packets import (  # noqa: E402
    Level,
    LtpPacket,
    QuotePacket,
    SnapQuotePacket,
)

RESULTS = ROOT / "benchmarks" / "results"
MODES = {1: "ltp", 2: "quote", 3: "snapquote"}


def sdk_parser() -> Callable[[bytes], dict[str, Any]]:
    # Importing SmartApi pings api.ipify.org once and may write ./logs: do it elsewhere.
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            from SmartApi.smartWebSocketV2 import SmartWebSocketV2
        finally:
            os.chdir(cwd)
    instance = object.__new__(SmartWebSocketV2)
    return instance._parse_binary_data  # type: ignore[no-any-return]


def prepare(mode: int, count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed + mode)
    tokens = [str(rng.randint(1, 99_999)) for _ in range(500)]
    stamp = 1_764_045_000_000
    out = []
    for n in range(count):
        token = tokens[n % len(tokens)]
        exchange_type = 13 if n % 50 == 0 else rng.choice((1, 2, 3, 5))
        ltp = rng.randint(100, 5_000_000)
        head = (exchange_type, token, n, stamp + n, ltp)
        if mode == 1:
            out.append(packets.pack_ltp(LtpPacket(1, *head)))
            continue
        tail = (
            rng.randint(1, 500), ltp, rng.randint(0, 10**8), float(rng.randint(0, 10**6)),
            float(rng.randint(0, 10**6)), ltp - 100, ltp + 200, ltp - 300, ltp - 50,
        )  # fmt: skip
        if mode == 2:
            out.append(packets.pack_quote(QuotePacket(2, *head, *tail)))
            continue
        bids = tuple(Level(rng.randint(1, 9_999), ltp - 5 * (i + 1), i + 1) for i in range(5))
        asks = tuple(Level(rng.randint(1, 9_999), ltp + 5 * (i + 1), i + 1) for i in range(5))
        snap = SnapQuotePacket(
            3, *head, *tail, stamp // 1000, rng.randint(0, 10**7), 0.0, bids, asks,
            ltp + 1000, ltp - 1000, ltp + 5000, ltp - 5000,
        )  # fmt: skip
        out.append(packets.pack_snapquote(snap))
    return out


def same_values(ours: packets.Packet, sdk: dict[str, Any]) -> bool:
    base = (
        sdk["subscription_mode"] == ours.mode
        and sdk["exchange_type"] == ours.exchange_type
        and sdk["token"] == ours.token
        and sdk["sequence_number"] == ours.sequence
        and sdk["exchange_timestamp"] == ours.exchange_timestamp
        and sdk["last_traded_price"] == ours.ltp
    )
    if not base or isinstance(ours, LtpPacket):
        return base
    assert isinstance(ours, QuotePacket | SnapQuotePacket)
    quote = (
        sdk["last_traded_quantity"] == ours.last_traded_quantity
        and sdk["average_traded_price"] == ours.average_price
        and sdk["volume_trade_for_the_day"] == ours.volume
        and sdk["total_buy_quantity"] == ours.total_buy_quantity
        and sdk["total_sell_quantity"] == ours.total_sell_quantity
        and sdk["open_price_of_the_day"] == ours.open
        and sdk["high_price_of_the_day"] == ours.high
        and sdk["low_price_of_the_day"] == ours.low
        and sdk["closed_price"] == ours.close
    )
    if not quote or isinstance(ours, QuotePacket):
        return quote
    assert isinstance(ours, SnapQuotePacket)

    def side(levels: list[dict[str, int]]) -> tuple[Level, ...]:
        return tuple(Level(x["quantity"], x["price"], x["no of orders"]) for x in levels)

    return (
        sdk["last_traded_timestamp"] == ours.last_traded_timestamp
        and sdk["open_interest"] == ours.open_interest
        and sdk["upper_circuit_limit"] == ours.upper_circuit
        and sdk["lower_circuit_limit"] == ours.lower_circuit
        and sdk["52_week_high_price"] == ours.high_52_week
        and sdk["52_week_low_price"] == ours.low_52_week
        and side(sdk["best_5_buy_data"]) == ours.bids
        and side(sdk["best_5_sell_data"]) == ours.asks
    )


def rate(
    parse: Callable[[bytes], Any], frames: list[bytes], repeat: int
) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for frame in frames:
            parse(frame)
        runs.append(time.perf_counter() - started)
    return len(frames) / min(runs), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sdk = sdk_parser()
    modes: dict[str, Any] = {}
    for mode, name in MODES.items():
        frames = prepare(mode, args.packets)
        mismatches = sum(
            1 for frame in frames[:2_000] if not same_values(packets.parse(frame), sdk(frame))
        )
        if mismatches:
            raise SystemExit(f"{name}: {mismatches} sample packets decode differently")
        # SDK runs on a slice: it is slow enough that a full pass only costs wall time.
        sdk_frames = frames[: max(1, len(frames) // 5)]
        ours_rate, ours_runs = rate(packets.parse, frames, args.repeat)
        sdk_rate, sdk_runs = rate(sdk, sdk_frames, args.repeat)
        modes[name] = {
            "packet_bytes": len(frames[0]),
            "packets_ours": len(frames),
            "packets_sdk": len(sdk_frames),
            "ours_per_second": round(ours_rate),
            "sdk_per_second": round(sdk_rate),
            "ratio": round(ours_rate / sdk_rate, 2),
            "ours_runs_seconds": [round(r, 4) for r in ours_runs],
            "sdk_runs_seconds": [round(r, 4) for r in sdk_runs],
            "values_checked": min(len(frames), 2_000),
        }
        print(
            f"{name:>9}: ours {ours_rate:>12,.0f}/s   sdk {sdk_rate:>10,.0f}/s   "
            f"x{ours_rate / sdk_rate:.1f}"
        )
    ltp = modes["ltp"]
    result = {
        "benchmark": "feed_decode",
        "modes": modes,
        "goals": {
            "ltp_per_second_at_least": 1_000_000,
            "ratio_at_least": 2.0,
            "ltp_rate_met": ltp["ours_per_second"] >= 1_000_000,
            "ratio_met": all(m["ratio"] >= 2.0 for m in modes.values()),
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "feed_decode.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
