"""A deterministic simulated market shared by every paper account in the process.

Why simulate instead of replaying real data: paper trading, demos and tests need prices
that move, offline, and reproducibly. Given a seed, the n-th tick's prices depend only on
that seed and n (never on wall-clock time or on how fast ``run`` loops), so a failing
scenario can be replayed exactly. Each instrument draws from its own numpy ``Generator``
seeded from ``(seed, crc32(instrument key))``: adding an instrument to the universe does
not disturb the others' paths.

Model:

* Each free-floating instrument follows a driftless geometric Brownian motion with its
  spec's annual volatility; one tick represents ``seconds_per_tick`` seconds of trading
  (default 1 s, matching ``run(interval=1.0)``), scaled by a 252-day, 6.25-hour NSE year
  (365 x 24 h for crypto).
* Derivatives (specs with ``underlying_key``) track their underlying: price = underlying
  x (1 + basis). A forced ``set_price`` on a derivative holds only until the next step.
* The published last price is snapped to the instrument's tick; bid and ask sit one tick
  either side of it (a two-tick spread).
* Per-tick traded volume is the instrument's typical daily volume spread evenly over the
  session, times a lognormal noise factor; the paper fill model lets an order take only a
  share of it, which is how large orders come to fill over several ticks.
* Open/high/low/close describe the simulated day: close is the previous close (the
  initial price), open is the session's opening price (also the initial price).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import structlog

from trading_backend.brokers.paper.universe import InstrumentSpec, default_universe
from trading_backend.domain import Exchange, Instrument
from trading_backend.domain.money import round_to_tick, to_decimal

__all__ = ["Quote", "QuoteListener", "SimulatedMarket"]

log = structlog.get_logger(__name__)

NSE_SECONDS_PER_YEAR = 252 * 6.25 * 3600
NSE_SECONDS_PER_DAY = 6.25 * 3600
CRYPTO_SECONDS_PER_YEAR = 365 * 24 * 3600
CRYPTO_SECONDS_PER_DAY = 24 * 3600
VOLUME_NOISE_SIGMA = 0.5
DEFAULT_PRICE = Decimal("100")  # for caller-supplied instruments we know nothing about
DEFAULT_DAILY_VOLUME = 1_000_000
_PCT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Quote:
    """One instrument's market snapshot. Money is Decimal; volumes are units."""

    symbol: str
    exchange: Exchange
    ltp: Decimal
    bid: Decimal
    ask: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal  # previous close
    volume: int  # cumulative for the day
    tick_volume: int  # traded during the last tick: what fills may draw on
    change: Decimal
    change_percent: Decimal
    timestamp: datetime
    sequence: int = 0  # market-wide update counter: two quotes with equal sequence are one tick

    @property
    def key(self) -> str:
        return f"{self.exchange.value}:{self.symbol}"


QuoteListener = Callable[[list[Quote]], Awaitable[None]]


class _Book:
    """Mutable per-instrument simulation state."""

    __slots__ = (
        "basis",
        "close",
        "fair",
        "high",
        "instrument",
        "low",
        "ltp",
        "mean_tick_volume",
        "open",
        "rng",
        "sigma",
        "tick_volume",
        "underlying",
        "volume",
    )

    def __init__(
        self, spec: InstrumentSpec, seed: int, seconds_per_tick: float, price: Decimal
    ) -> None:
        instrument = spec.instrument
        crypto = instrument.exchange is Exchange.CRYPTO
        year = CRYPTO_SECONDS_PER_YEAR if crypto else NSE_SECONDS_PER_YEAR
        day = CRYPTO_SECONDS_PER_DAY if crypto else NSE_SECONDS_PER_DAY
        self.instrument = instrument
        self.rng = np.random.default_rng([seed, zlib.crc32(instrument.key.encode())])
        self.sigma = spec.annual_volatility * math.sqrt(seconds_per_tick / year)
        self.mean_tick_volume = spec.daily_volume * seconds_per_tick / day
        self.underlying: _Book | None = None
        self.basis = spec.basis
        self.fair = float(price)
        self.ltp = self._snap(price)
        self.open = self.high = self.low = self.close = self.ltp
        self.volume = 0
        # A fresh market is tradable at once: the opening "tick" carries a typical volume.
        self.tick_volume = round(self.mean_tick_volume)

    def _snap(self, price: Decimal) -> Decimal:
        tick = self.instrument.tick_size
        return max(round_to_tick(price, tick), tick)

    def publish(self, fair: float, tick_volume: int, exact: Decimal | None = None) -> None:
        self.fair = fair
        self.ltp = self._snap(exact if exact is not None else Decimal(fair))
        self.high = max(self.high, self.ltp)
        self.low = min(self.low, self.ltp)
        self.tick_volume = tick_volume
        self.volume += tick_volume

    def quote(self, timestamp: datetime, sequence: int) -> Quote:
        tick = self.instrument.tick_size
        change = self.ltp - self.close
        pct = (
            (change * 100 / self.close).quantize(_PCT, ROUND_HALF_UP) if self.close else Decimal(0)
        )
        return Quote(
            symbol=self.instrument.symbol,
            exchange=self.instrument.exchange,
            ltp=self.ltp,
            bid=max(self.ltp - tick, tick),
            ask=self.ltp + tick,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            tick_volume=self.tick_volume,
            change=change,
            change_percent=pct,
            timestamp=timestamp,
            sequence=sequence,
        )


def _normalise_exchange(exchange: str | Exchange) -> Exchange:
    if isinstance(exchange, Exchange):
        return exchange
    try:
        return Exchange(str(exchange).strip().upper())
    except ValueError:
        raise KeyError(f"unknown exchange {exchange!r}") from None


class SimulatedMarket:
    """Prices for every listed instrument, advanced one tick at a time.

    Tests drive it with ``step()`` and ``set_price()``; the server runs ``run()`` as a
    background task. Listeners (the paper brokers) are awaited on every tick so a fill
    caused by a tick has happened by the time ``step()`` returns.
    """

    def __init__(
        self,
        seed: int = 42,
        instruments: Sequence[Instrument | InstrumentSpec] | None = None,
        *,
        seconds_per_tick: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if seconds_per_tick <= 0:
            raise ValueError("seconds_per_tick must be positive")
        self.seed = seed
        self._clock = clock or (lambda: datetime.now(UTC))
        self._books: dict[str, _Book] = {}
        self._listeners: list[QuoteListener] = []
        self._tick_count = 0
        self._sequence = 0
        self._timestamp = self._clock()
        specs = self._resolve_specs(instruments)
        for spec in specs:
            if spec.key in self._books:
                raise ValueError(f"instrument {spec.key} listed twice")
            self._books[spec.key] = _Book(spec, seed, seconds_per_tick, spec.initial_price)
        for spec in specs:
            if spec.underlying_key is not None:
                underlying = self._books.get(spec.underlying_key)
                if underlying is None:
                    raise ValueError(
                        f"{spec.key} tracks {spec.underlying_key}, which is not listed"
                    )
                self._books[spec.key].underlying = underlying
        # Roots first so derivatives always price off this tick's underlying.
        self._order = sorted(self._books.values(), key=lambda b: b.underlying is not None)

    @staticmethod
    def _resolve_specs(
        instruments: Sequence[Instrument | InstrumentSpec] | None,
    ) -> list[InstrumentSpec]:
        defaults = default_universe()
        if instruments is None:
            return defaults
        known = {spec.key: spec for spec in defaults}
        specs: list[InstrumentSpec] = []
        for item in instruments:
            if isinstance(item, InstrumentSpec):
                specs.append(item)
            elif item.key in known:
                specs.append(known[item.key])
            else:
                specs.append(InstrumentSpec(item, DEFAULT_PRICE, DEFAULT_DAILY_VOLUME))
        return specs

    # -- lookup ----------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        return [book.instrument for book in self._books.values()]

    def get_instrument(self, symbol: str, exchange: str | Exchange) -> Instrument | None:
        book = self._find(symbol, exchange)
        return book.instrument if book is not None else None

    def _find(self, symbol: str, exchange: str | Exchange) -> _Book | None:
        try:
            exch = _normalise_exchange(exchange)
        except KeyError:
            return None
        return self._books.get(f"{exch.value}:{str(symbol).strip().upper()}")

    def _get(self, symbol: str, exchange: str | Exchange) -> _Book:
        book = self._find(symbol, exchange)
        if book is None:
            raise KeyError(f"unknown instrument {exchange}:{symbol}")
        return book

    def quote(self, symbol: str, exchange: str | Exchange) -> Quote:
        """The latest quote; raises ``KeyError`` for an unknown instrument."""
        return self._get(symbol, exchange).quote(self._timestamp, self._sequence)

    def quotes(self) -> list[Quote]:
        return [book.quote(self._timestamp, self._sequence) for book in self._books.values()]

    @property
    def tick_count(self) -> int:
        """Number of ``step()`` calls so far."""
        return self._tick_count

    @property
    def sequence(self) -> int:
        """Number of market updates (steps and forced prices) so far."""
        return self._sequence

    # -- listeners -------------------------------------------------------------------------
    def add_listener(self, callback: QuoteListener) -> None:
        if callback not in self._listeners:
            self._listeners.append(callback)

    def remove_listener(self, callback: QuoteListener) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    async def _notify(self, quotes: list[Quote]) -> None:
        for listener in list(self._listeners):
            try:
                await listener(quotes)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One broken account must not stop the market for everybody else.
                log.exception("market listener failed", listener=repr(listener))

    # -- evolution -------------------------------------------------------------------------
    def _draw_volume(self, book: _Book, z: float) -> int:
        if book.mean_tick_volume <= 0:
            return 0
        factor = math.exp(VOLUME_NOISE_SIGMA * z - 0.5 * VOLUME_NOISE_SIGMA**2)
        return max(1, round(book.mean_tick_volume * factor))

    async def step(self) -> list[Quote]:
        """Advance every instrument by one tick and await every listener."""
        self._tick_count += 1
        self._sequence += 1
        self._timestamp = self._clock()
        for book in self._order:
            # Always two draws per instrument per tick, so the n-th tick is reproducible.
            z_price, z_volume = book.rng.standard_normal(2)
            tick_volume = self._draw_volume(book, float(z_volume))
            if book.underlying is not None:
                fair = book.underlying.fair * (1.0 + float(book.basis))
            else:
                fair = book.fair * math.exp(book.sigma * float(z_price) - 0.5 * book.sigma**2)
            book.publish(fair, tick_volume)
        quotes = self.quotes()
        await self._notify(quotes)
        return quotes

    async def set_price(
        self,
        symbol: str,
        exchange: str | Exchange,
        price: Decimal | float | int | str,
        volume: int | None = None,
    ) -> Quote:
        """Force an instrument's price (snapped to its tick) and notify listeners.

        ``volume`` is the traded volume of this forced tick (default: the instrument's
        typical per-tick volume). Instruments tracking this one move with it. The random
        generators are not consumed, so later steps stay reproducible.
        """
        book = self._get(symbol, exchange)
        value = to_decimal(price, "price")
        if value <= 0:
            raise ValueError(f"price must be positive, got {value}")
        if volume is not None and volume < 0:
            raise ValueError(f"volume must not be negative, got {volume}")
        self._sequence += 1
        self._timestamp = self._clock()
        typical = round(book.mean_tick_volume)
        book.publish(float(value), typical if volume is None else volume, exact=value)
        changed = [book]
        for other in self._order:
            if other.underlying is book:
                other.publish(book.fair * (1.0 + float(other.basis)), round(other.mean_tick_volume))
                changed.append(other)
        quotes = [b.quote(self._timestamp, self._sequence) for b in changed]
        await self._notify(quotes)
        return quotes[0]

    def start_new_day(self) -> None:
        """Roll the session: today's last price becomes the previous close and the open."""
        for book in self._books.values():
            book.close = book.open = book.high = book.low = book.ltp
            book.volume = 0
            book.tick_volume = 0

    async def run(self, interval: float = 1.0) -> None:
        """Step every ``interval`` seconds until cancelled."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        while True:
            await self.step()
            await asyncio.sleep(interval)
