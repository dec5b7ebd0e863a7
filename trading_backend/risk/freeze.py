"""Exchange freeze quantities: the largest quantity one order may carry.

An order above the freeze quantity is "frozen" and rejected by the exchange itself; brokers
then make the client split it (iceberg / slicing). Checking it here saves the round trip.

The data is the NSE F&O table for index derivatives (futures and options alike), in
units (not lots). NSE recomputes it periodically from the index level (chapter 1.8 of
the F&O consolidated circular NSE/FAOP/67775 of 30 April 2025: the higher the index
level, the lower the freeze quantity, e.g. above 55,000 it is 600) and publishes a
circular "Quantity freeze limits for indices" with each change. Values below are from
the NSE circular of 30 January 2026, effective 1 February 2026 (unchanged from the one
effective 3 November 2025):

    BANKNIFTY 600, NIFTY 1800, FINNIFTY 1800, MIDCPNIFTY 2800, NIFTYNXT50 600

(BANKNIFTY was 900 from 1 September 2025 until 2 November 2025; it fell to 600 as the
index rose above 55,000. FINNIFTY was briefly cut to 1200 by a circular of 28 November
2025; the February 2026 circular lists 1800.) Update this table when NSE publishes a new
circular; ``freeze_quantity`` also takes a table, so the integration may load a fresher
one (for example from the broker's instrument master, which carries it per contract).

Stock derivatives and BSE (SENSEX, BANKEX on BFO) have freeze quantities too, but they
are not in this table: for them ``freeze_quantity`` returns None (no check here; the
exchange still enforces its own).
"""

from __future__ import annotations

from collections.abc import Mapping

from trading_backend.domain import Exchange, Instrument

FreezeTable = Mapping[tuple[Exchange, str], int]

# (exchange of the derivative, underlying index symbol) -> units per order
FREEZE_QUANTITIES: dict[tuple[Exchange, str], int] = {
    (Exchange.NFO, "NIFTY"): 1800,
    (Exchange.NFO, "BANKNIFTY"): 600,
    (Exchange.NFO, "FINNIFTY"): 1800,
    (Exchange.NFO, "MIDCPNIFTY"): 2800,
    (Exchange.NFO, "NIFTYNXT50"): 600,
}
FREEZE_TABLE_AS_OF = "2026-02-01"  # effective date of the circular the table follows


def underlying_of(instrument: Instrument, table: FreezeTable = FREEZE_QUANTITIES) -> str | None:
    """The instrument's underlying: ``instrument.underlying`` when set, otherwise the
    longest underlying of ``table`` (on the instrument's exchange) that its symbol starts
    with, followed by a digit (``NIFTY25DECFUT`` -> NIFTY; ``NIFTYNXT50...`` is not
    NIFTY)."""
    if instrument.underlying:
        return instrument.underlying.upper()
    symbol = instrument.symbol.upper()
    best: str | None = None
    for exchange, name in table:
        if exchange is not instrument.exchange or not symbol.startswith(name):
            continue
        rest = symbol[len(name) :]
        if rest[:1].isdigit() and (best is None or len(name) > len(best)):
            best = name
    return best


def freeze_quantity(instrument: Instrument, table: FreezeTable = FREEZE_QUANTITIES) -> int | None:
    """Units one order in ``instrument`` may carry at most, or None when not known here
    (equities, crypto, and derivatives whose underlying is not in ``table``)."""
    if not instrument.is_derivative:
        return None
    underlying = underlying_of(instrument, table)
    if underlying is None:
        return None
    return table.get((instrument.exchange, underlying))
