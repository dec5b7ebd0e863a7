"""Tradable (and reference) instruments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from trading_backend.domain.enums import Exchange, InstrumentType


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    exchange: Exchange
    instrument_type: InstrumentType
    token: str = ""  # the broker's own identifier (Angel "symboltoken", Kite instrument_token)
    name: str = ""
    lot_size: int = 1
    tick_size: Decimal = Decimal("0.05")
    expiry: date | None = None
    strike: Decimal | None = None
    underlying: str | None = None
    # The broker's own trading symbol when it differs from ``symbol`` (Angel One
    # ``SBIN-EQ`` for our ``SBIN``, ``Nifty 50`` for ``NIFTY``); "" means the same.
    broker_symbol: str = ""

    @property
    def key(self) -> str:
        """Exchange-qualified symbol, unique across exchanges: ``NSE:TCS``."""
        return f"{self.exchange.value}:{self.symbol}"

    @property
    def tradable(self) -> bool:
        return self.instrument_type is not InstrumentType.INDEX

    @property
    def is_derivative(self) -> bool:
        return self.instrument_type in (InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE)

    @property
    def is_option(self) -> bool:
        return self.instrument_type in (InstrumentType.CE, InstrumentType.PE)
