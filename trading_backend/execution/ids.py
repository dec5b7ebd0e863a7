"""Order ids double as the broker-side order tag, so they fit the tightest tag limit (20)."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuv"  # base32, lower case: safe in any tag field


def new_order_id() -> str:
    """``o`` + 9 base32 digits of milliseconds (sortable by time) + 10 random: 20 chars."""
    millis = time.time_ns() // 1_000_000
    stamp = ""
    for _ in range(9):
        stamp = _ALPHABET[millis & 31] + stamp
        millis >>= 5
    return "o" + stamp + "".join(secrets.choice(_ALPHABET) for _ in range(10))
