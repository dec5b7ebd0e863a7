"""The backtest's market: the last price point of each instrument, as the paper account
and the strategy's context read it.

Why not ``SimulatedMarket``: the paper account needs only ``get_instrument`` and ``quote``
from its market, and the replay sets a price millions of times; this keeps that to three
stores per point and builds a ``Quote`` only when someone reads it (the matching engine
while an order is working, or the strategy asking for a quote).

Bid and ask sit ``half_spread_ticks`` ticks either side of the last price (the bid never
below one tick); 0 (the default) trades market orders at the bar prices themselves, 1 is
the paper market's two-tick spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from trading_backend.brokers.paper.market import Quote
from trading_backend.brokers.paper.replay import (
    UNLIMITED_VOLUME,
    path_prices,
    path_times,
    path_volumes,
)
from trading_backend.brokers.paper.universe import default_universe
from trading_backend.domain import Bar, Exchange, Instrument, InstrumentType
from trading_backend.strategies.base import TickView

__all__ = ["BacktestMarket", "resolve_instrument"]

_ZERO = Decimal(0)
_EQUITY_TICK = Decimal("0.05")
_CRYPTO_TICK = Decimal("0.01")
_UNIVERSE: dict[str, Instrument] = {}


def resolve_instrument(symbol: str, exchange: Exchange) -> Instrument:
    """The paper universe's instrument (its lot and tick size) when it lists the symbol,
    else a plain cash instrument: lot 1, tick 0.05 (0.01 for crypto)."""
    if not _UNIVERSE:
        _UNIVERSE.update({spec.key: spec.instrument for spec in default_universe()})
    key = f"{exchange.value}:{symbol}"
    known = _UNIVERSE.get(key)
    if known is not None:
        return known
    crypto = exchange is Exchange.CRYPTO
    return Instrument(
        symbol=symbol,
        exchange=exchange,
        instrument_type=InstrumentType.SPOT if crypto else InstrumentType.EQ,
        lot_size=1,
        tick_size=_CRYPTO_TICK if crypto else _EQUITY_TICK,
    )


class BacktestMarket:
    """Instruments by slot (their index in the backtest) and each one's last price point.

    A point is stored as ``(bar, phase, sequence)``: the bar being replayed, which of its
    four path points is current (0 open .. 3 close) and the point's update number (unique
    per instrument, what the matching engine uses to fill an order at most once per
    update). Price, volume and time are read from the bar when asked, so the engine moves
    the market with three list stores per point; ``quote_at`` builds the ``Quote`` once
    per point. The engine writes ``bars``/``phases``/``sequences`` directly in its hot loop.
    """

    def __init__(
        self,
        instruments: Sequence[Instrument],
        half_spread_ticks: int = 0,
        *,
        partial_fills: bool = False,
    ) -> None:
        self.instruments = list(instruments)
        self.slots = {instrument.key: i for i, instrument in enumerate(self.instruments)}
        self._pairs: dict[tuple[str, str | Exchange], int] = {}
        for i, instrument in enumerate(self.instruments):
            self._pairs[(instrument.symbol, instrument.exchange)] = i
            self._pairs[(instrument.symbol, instrument.exchange.value)] = i
        self._half_spreads = [i.tick_size * half_spread_ticks for i in self.instruments]
        self.partial_fills = partial_fills
        n = len(self.instruments)
        self.bars: list[Bar | None] = [None] * n
        self.phases: list[int] = [0] * n
        self.sequences: list[int] = [0] * n
        self._quotes: list[Quote | None] = [None] * n

    def set_point(self, slot: int, bar: Bar, phase: int, sequence: int) -> None:
        self.bars[slot] = bar
        self.phases[slot] = phase
        self.sequences[slot] = sequence

    # -- the current point -------------------------------------------------------------------
    def price(self, slot: int) -> Decimal | None:
        bar = self.bars[slot]
        if bar is None:
            return None
        phase = self.phases[slot]
        if phase == 0:
            return bar.open
        if phase == 3:
            return bar.close
        return path_prices(bar)[phase]

    def shown_volume(self, slot: int) -> int:
        bar = self.bars[slot]
        if bar is None:
            return 0
        return path_volumes(bar.volume, True)[self.phases[slot]]

    def time(self, slot: int) -> datetime | None:
        bar = self.bars[slot]
        if bar is None:
            return None
        phase = self.phases[slot]
        return bar.start if phase == 0 else path_times(bar)[phase]

    # -- what the paper account reads ------------------------------------------------------
    def get_instrument(self, symbol: str, exchange: str | Exchange) -> Instrument | None:
        slot = self._slot(symbol, exchange)
        return None if slot is None else self.instruments[slot]

    def quote(self, symbol: str, exchange: str | Exchange) -> Quote:
        """The last point as a quote; ``KeyError`` for an unknown or not yet priced one."""
        slot = self._slot(symbol, exchange)
        if slot is None:
            raise KeyError(f"unknown instrument {exchange}:{symbol}")
        return self.quote_at(slot)

    def quote_at(self, slot: int) -> Quote:
        quote = self._quotes[slot]
        sequence = self.sequences[slot]
        if quote is not None and quote.sequence == sequence:
            return quote
        bar = self.bars[slot]
        instrument = self.instruments[slot]
        if bar is None:
            raise KeyError(f"{instrument.key} has no price yet")
        phase = self.phases[slot]
        ltp = self.price(slot)
        assert ltp is not None
        shown = self.shown_volume(slot)
        half = self._half_spreads[slot]
        quote = Quote(
            symbol=instrument.symbol,
            exchange=instrument.exchange,
            ltp=ltp,
            bid=max(ltp - half, instrument.tick_size) if half else ltp,
            ask=ltp + half,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=ltp,
            volume=shown,
            tick_volume=shown if self.partial_fills else UNLIMITED_VOLUME,
            change=_ZERO,
            change_percent=_ZERO,
            timestamp=bar.start if phase == 0 else path_times(bar)[phase],
            sequence=sequence,
        )
        self._quotes[slot] = quote
        return quote

    # -- what the strategy reads -----------------------------------------------------------
    def tick_view(self, slot: int) -> TickView:
        quote = self.quote_at(slot)
        return TickView(
            symbol=quote.symbol,
            exchange=quote.exchange,
            ltp=quote.ltp,
            bid=quote.bid,
            ask=quote.ask,
            volume=quote.volume,
            timestamp=quote.timestamp,
        )

    def slot_of(self, symbol: str, exchange: Exchange) -> int:
        """The slot of a listed instrument (``KeyError`` otherwise)."""
        return self._pairs[(symbol, exchange)]

    def _slot(self, symbol: str, exchange: str | Exchange) -> int | None:
        slot = self._pairs.get((symbol, exchange))
        if slot is not None:
            return slot
        try:
            exch = exchange if isinstance(exchange, Exchange) else Exchange(str(exchange).upper())
        except ValueError:
            return None
        return self.slots.get(f"{exch.value}:{str(symbol).strip().upper()}")
