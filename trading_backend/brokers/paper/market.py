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
* Index options (specs with ``option_of``) are repriced from their index on every tick
  and every forced index price: Black-Scholes with the volatility smile of their
  underlying, forward ``spot x (1 + carry x t)``, the carry rate as the interest rate, and
  ``t`` the time from the market clock to 15:30 IST on the expiry date. So unlike every
  other instrument, their prices depend on the clock as well as on the seed and the tick
  number (inject ``clock`` for reproducible option prices). Bid and ask sit
  ``max(tick, 0.5% of the price)`` (snapped to the tick) either side of the last price,
  which is never below one tick (₹0.05) however far out of the money. Tick volume is the
  strike's at-the-money volume times ``exp(-d²/2)``, ``d`` the strike's distance from the
  forward in standard deviations (at least ``MIN_OPTION_VOLUME_WEIGHT``), in whole lots,
  at least one lot; an expired option trades nothing.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import structlog

from trading_backend.brokers.paper.history import MAX_HISTORY_BARS, HistorySpec, synthetic_bars
from trading_backend.brokers.paper.universe import (
    InstrumentSpec,
    carry_inputs,
    default_universe,
    option_forward,
)
from trading_backend.domain import Exchange, Instrument, InstrumentType
from trading_backend.domain.bars import Bar, Timeframe
from trading_backend.domain.money import round_to_tick, to_decimal
from trading_backend.marketdata.options import (
    IST,
    Greeks,
    VolSmile,
    bs_greeks,
    bs_price,
    expiry_datetime,
    implied_volatility,
    time_to_expiry,
)

__all__ = ["OptionChainRow", "OptionQuote", "Quote", "QuoteListener", "SimulatedMarket"]

log = structlog.get_logger(__name__)

NSE_SECONDS_PER_YEAR = 252 * 6.25 * 3600
NSE_SECONDS_PER_DAY = 6.25 * 3600
CRYPTO_SECONDS_PER_YEAR = 365 * 24 * 3600
CRYPTO_SECONDS_PER_DAY = 24 * 3600
VOLUME_NOISE_SIGMA = 0.5
DEFAULT_PRICE = Decimal("100")  # for caller-supplied instruments we know nothing about
DEFAULT_DAILY_VOLUME = 1_000_000
_PCT = Decimal("0.01")
OPTION_HALF_SPREAD = Decimal("0.005")  # bid/ask distance from an option's last price
MIN_OPTION_VOLUME_WEIGHT = 0.01  # far-from-the-money strikes still trade a little


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
_GroupCache = dict[tuple[int, date], tuple[float, float, float, float]]


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """One side (CE or PE) of an option-chain row.

    ``iv`` is implied from the last price (``None`` when there is none, e.g. expired or
    at the price floor below intrinsic bounds); the greeks use that ``iv``, or the smile's
    volatility when there is no ``iv``. Greeks are per unit of the underlying (multiply by
    ``lot_size`` for one lot); units as in ``trading_backend.marketdata.options``.
    """

    symbol: str
    exchange: Exchange
    ltp: Decimal
    bid: Decimal
    ask: Decimal
    iv: float | None
    delta: float
    gamma: float
    theta: float  # per calendar day
    vega: float  # per volatility point
    rho: float  # per percentage point of the rate
    lot_size: int
    volume: int  # cumulative for the day


@dataclass(frozen=True, slots=True)
class OptionChainRow:
    """A strike of a chain: its call (``ce``) and its put (``pe``)."""

    underlying: str
    expiry: date
    strike: Decimal
    ce: OptionQuote
    pe: OptionQuote


class _OptionTerms:
    """What pricing an option book needs, fixed at construction."""

    __slots__ = ("atm_tick_volume", "call", "expiry", "expiry_at", "kind", "smile", "strike")

    def __init__(self, instrument: Instrument, smile: VolSmile, atm_tick_volume: float) -> None:
        assert instrument.expiry is not None and instrument.strike is not None
        self.kind = instrument.instrument_type.value
        self.call = instrument.instrument_type is InstrumentType.CE
        self.strike = float(instrument.strike)
        self.expiry = instrument.expiry
        self.expiry_at = expiry_datetime(instrument.expiry)
        self.smile = smile
        self.atm_tick_volume = atm_tick_volume


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
        "model_vol",
        "open",
        "option",
        "option_of",
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
        self.option_of: _Book | None = None  # an option's underlying (set with ``option``)
        self.option: _OptionTerms | None = None
        self.model_vol = spec.annual_volatility
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

    def reset_day(self, price: Decimal, tick_volume: int) -> None:
        """Start the day at ``price`` (construction): open, high, low and close all equal it."""
        self.ltp = self._snap(price)
        self.open = self.high = self.low = self.close = self.ltp
        self.tick_volume = tick_volume

    def quote(self, timestamp: datetime, sequence: int) -> Quote:
        tick = self.instrument.tick_size
        change = self.ltp - self.close
        pct = (
            (change * 100 / self.close).quantize(_PCT, ROUND_HALF_UP) if self.close else Decimal(0)
        )
        half_spread = tick
        if self.option is not None:
            half_spread = max(tick, round_to_tick(self.ltp * OPTION_HALF_SPREAD, tick))
        return Quote(
            symbol=self.instrument.symbol,
            exchange=self.instrument.exchange,
            ltp=self.ltp,
            bid=max(self.ltp - half_spread, tick),
            ask=self.ltp + half_spread,
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

    Without ``instruments`` the market lists ``default_universe(today, options=True)``,
    ``today`` being the clock's date in IST. Option volatility: ``smiles[underlying]``
    if given, else ``smile``, else a ``VolSmile`` whose ATM volatility is the index
    spec's ``annual_volatility`` (13% NIFTY, 15% BANKNIFTY) with the default shape.
    """

    def __init__(
        self,
        seed: int = 42,
        instruments: Sequence[Instrument | InstrumentSpec] | None = None,
        *,
        seconds_per_tick: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        smile: VolSmile | None = None,
        smiles: Mapping[str, VolSmile] | None = None,
    ) -> None:
        if seconds_per_tick <= 0:
            raise ValueError("seconds_per_tick must be positive")
        self.seed = seed
        self._clock = clock or (lambda: datetime.now(UTC))
        self._books: dict[str, _Book] = {}
        self._specs: dict[str, InstrumentSpec] = {}  # for the synthetic history
        self._listeners: list[QuoteListener] = []
        self._tick_count = 0
        self._sequence = 0
        self._timestamp = self._clock()
        specs = self._resolve_specs(instruments, self._timestamp)
        for spec in specs:
            if spec.key in self._books:
                raise ValueError(f"instrument {spec.key} listed twice")
            self._books[spec.key] = _Book(spec, seed, seconds_per_tick, spec.initial_price)
            self._specs[spec.key] = spec
        # underlying symbol -> expiry -> strike -> {"CE": book, "PE": book}
        self._chains: dict[str, dict[date, dict[Decimal, dict[str, _Book]]]] = {}
        self._options: list[_Book] = []
        chosen = {k.strip().upper(): v for k, v in (smiles or {}).items()}
        for spec in specs:
            book = self._books[spec.key]
            if spec.underlying_key is not None:
                underlying = self._books.get(spec.underlying_key)
                if underlying is None:
                    raise ValueError(
                        f"{spec.key} tracks {spec.underlying_key}, which is not listed"
                    )
                book.underlying = underlying
            if spec.option_of is not None:
                self._link_option(book, spec, chosen, smile)
        # Roots first so derivatives always price off this tick's underlying.
        self._order = sorted(
            self._books.values(),
            key=lambda b: b.underlying is not None or b.option_of is not None,
        )
        if self._options:
            cache: _GroupCache = {}
            for book in self._options:
                fair, tick_volume = self._price_option(book, cache)
                book.fair = fair
                book.reset_day(Decimal(fair), tick_volume)

    def _link_option(
        self,
        book: _Book,
        spec: InstrumentSpec,
        smiles: Mapping[str, VolSmile],
        smile: VolSmile | None,
    ) -> None:
        instrument = spec.instrument
        underlying = self._books.get(spec.option_of or "")
        if underlying is None:
            raise ValueError(f"{spec.key} is an option on {spec.option_of}, which is not listed")
        if not instrument.is_option or instrument.expiry is None or instrument.strike is None:
            raise ValueError(f"{spec.key} needs an option type, an expiry and a strike")
        name = underlying.instrument.symbol
        chosen = smiles.get(name) or smile or VolSmile(atm_vol=underlying.model_vol)
        book.option_of = underlying
        book.option = _OptionTerms(instrument, chosen, book.mean_tick_volume)
        self._options.append(book)
        strikes = self._chains.setdefault(name, {}).setdefault(instrument.expiry, {})
        strikes.setdefault(instrument.strike, {})[book.option.kind] = book

    @staticmethod
    def _resolve_specs(
        instruments: Sequence[Instrument | InstrumentSpec] | None, now: datetime
    ) -> list[InstrumentSpec]:
        today = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).astimezone(IST)
        defaults = default_universe(today.date(), options=True)
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

    def historical_bars(
        self,
        symbol: str,
        exchange: str | Exchange,
        timeframe: Timeframe | str,
        start: datetime,
        end: datetime,
        *,
        max_bars: int = MAX_HISTORY_BARS,
    ) -> list[Bar]:
        """Synthetic, reproducible history: the complete bars starting in ``[start, end)``
        (see ``brokers.paper.history``; it depends on the seed, never on the ticks so far).

        Raises ``KeyError`` for an unknown instrument and ``ValueError`` for an empty
        range or one of more than ``max_bars`` bars.
        """
        book = self._get(symbol, exchange)
        spec = self._specs[book.instrument.key]
        history = HistorySpec(
            seed=self.seed,
            instrument=book.instrument,
            price=spec.initial_price,
            annual_volatility=spec.annual_volatility,
            daily_volume=spec.daily_volume,
        )
        now = self._clock()
        return synthetic_bars(history, timeframe, start, end, now=now, max_bars=max_bars)

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

    # -- options ---------------------------------------------------------------------------
    def _group_inputs(
        self, underlying: _Book, terms: _OptionTerms, cache: _GroupCache
    ) -> tuple[float, float, float, float]:
        """``(t, forward, rate, carry_yield)`` shared by every option of one underlying and
        expiry; ``cache`` lives for one update, after the underlying has its price."""
        key = (id(underlying), terms.expiry)
        inputs = cache.get(key)
        if inputs is None:
            t = time_to_expiry(self._timestamp, terms.expiry_at)
            rate, carry_yield = carry_inputs(t)
            inputs = cache[key] = (t, option_forward(underlying.fair, t), rate, carry_yield)
        return inputs

    def _price_option(
        self, book: _Book, cache: _GroupCache, z_volume: float | None = None
    ) -> tuple[float, int]:
        """``(fair value, tick volume)`` of an option book from its underlying's fair price.

        ``z_volume`` is the tick's volume noise; ``None`` means the typical volume.
        """
        terms = book.option
        underlying = book.option_of
        assert terms is not None and underlying is not None
        t, forward, rate, carry_yield = self._group_inputs(underlying, terms, cache)
        vol = terms.smile.vol(terms.strike, forward, t)
        book.model_vol = vol
        fair = bs_price(terms.kind, underlying.fair, terms.strike, t, vol, rate, carry_yield)
        if t <= 0.0:
            return fair, 0  # expired: priced at intrinsic value, no longer trading
        distance = math.log(terms.strike / forward) / (vol * math.sqrt(t))
        weight = max(math.exp(-0.5 * distance * distance), MIN_OPTION_VOLUME_WEIGHT)
        mean = terms.atm_tick_volume * weight
        if z_volume is not None:
            mean *= math.exp(VOLUME_NOISE_SIGMA * z_volume - 0.5 * VOLUME_NOISE_SIGMA**2)
        lot = book.instrument.lot_size
        return fair, max(1, round(mean / lot)) * lot

    def _option_book(self, symbol: str, exchange: str | Exchange) -> _Book:
        book = self._get(symbol, exchange)
        if book.option is None:
            raise ValueError(f"{book.instrument.key} is not an option")
        return book

    def _option_quote(self, book: _Book) -> OptionQuote:
        terms = book.option
        underlying = book.option_of
        assert terms is not None and underlying is not None
        spot = underlying.fair
        t = time_to_expiry(self._timestamp, terms.expiry_at)
        rate, carry_yield = carry_inputs(t)
        iv = implied_volatility(
            terms.kind, float(book.ltp), spot, terms.strike, t, rate, carry_yield
        )
        greeks = bs_greeks(
            terms.kind,
            spot,
            terms.strike,
            t,
            iv if iv is not None else book.model_vol,
            rate,
            carry_yield,
        )
        quote = book.quote(self._timestamp, self._sequence)
        return OptionQuote(
            symbol=quote.symbol,
            exchange=quote.exchange,
            ltp=quote.ltp,
            bid=quote.bid,
            ask=quote.ask,
            iv=iv,
            delta=greeks.delta,
            gamma=greeks.gamma,
            theta=greeks.theta,
            vega=greeks.vega,
            rho=greeks.rho,
            lot_size=book.instrument.lot_size,
            volume=quote.volume,
        )

    def _chain(self, underlying: str) -> dict[date, dict[Decimal, dict[str, _Book]]]:
        chain = self._chains.get(str(underlying).strip().upper())
        if chain is None:
            raise KeyError(f"no options listed on {underlying!r}")
        return chain

    def expiries(self, underlying: str) -> list[date]:
        """Every listed expiry of ``underlying``'s options, nearest first (expired included).

        Raises ``KeyError`` when ``underlying`` has no options.
        """
        return sorted(self._chain(underlying))

    def option_chain(self, underlying: str, expiry: date | None = None) -> list[OptionChainRow]:
        """The chain of one expiry, sorted by strike.

        ``expiry=None`` means the nearest expiry that has not expired by the market clock
        (the last listed one when all have). Raises ``KeyError`` for an underlying without
        options or an expiry that is not listed.
        """
        chain = self._chain(underlying)
        if expiry is None:
            live = [e for e in sorted(chain) if expiry_datetime(e) > self._aware_now()]
            expiry = live[0] if live else max(chain)
        strikes = chain.get(expiry)
        if strikes is None:
            raise KeyError(f"{underlying} has no options expiring {expiry.isoformat()}")
        name = str(underlying).strip().upper()
        rows: list[OptionChainRow] = []
        for strike in sorted(strikes):
            sides = strikes[strike]
            if "CE" not in sides or "PE" not in sides:
                continue  # a custom universe may list one side only
            rows.append(
                OptionChainRow(
                    underlying=name,
                    expiry=expiry,
                    strike=strike,
                    ce=self._option_quote(sides["CE"]),
                    pe=self._option_quote(sides["PE"]),
                )
            )
        return rows

    def option_quote(self, symbol: str, exchange: str | Exchange = Exchange.NFO) -> OptionQuote:
        """One option's quote with its implied volatility and greeks."""
        return self._option_quote(self._option_book(symbol, exchange))

    def greeks(self, symbol: str, exchange: str | Exchange = Exchange.NFO) -> Greeks:
        """An option's greeks now (per unit; see ``OptionQuote`` for the volatility used).

        Raises ``KeyError`` for an unknown instrument and ``ValueError`` for a non-option.
        """
        q = self.option_quote(symbol, exchange)
        return Greeks(delta=q.delta, gamma=q.gamma, theta=q.theta, vega=q.vega, rho=q.rho)

    def _aware_now(self) -> datetime:
        now = self._timestamp
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- evolution ---------------------------------------------------------------------------
    async def step(self) -> list[Quote]:
        """Advance every instrument by one tick and await every listener."""
        self._tick_count += 1
        self._sequence += 1
        self._timestamp = self._clock()
        cache: _GroupCache = {}
        for book in self._order:
            # Always two draws per instrument per tick, so the n-th tick is reproducible.
            z_price, z_volume = book.rng.standard_normal(2)
            if book.option is not None:
                fair, tick_volume = self._price_option(book, cache, float(z_volume))
                book.publish(fair, tick_volume)
                continue
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
        typical per-tick volume). Instruments tracking this one move with it, and the
        options on it are repriced from it (with the current clock). The random
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
        cache: _GroupCache = {}
        for other in self._order:
            if other.underlying is book:
                other.publish(book.fair * (1.0 + float(other.basis)), round(other.mean_tick_volume))
                changed.append(other)
            elif other.option_of is book:
                other.publish(*self._price_option(other, cache))
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
