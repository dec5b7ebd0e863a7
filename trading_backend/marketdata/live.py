"""A real broker's market, as the risk engine, the hub and the readers see it.

In paper mode those services read the simulated market. A deployment that trades a real
broker must value orders at real prices (a price band checked against simulated prices
would refuse good orders and pass bad ones), so with ``MARKET_DATA_SOURCE=angel_one`` the
runtime hands them a ``LiveMarket`` instead: instruments come from the broker's
instrument master (``InstrumentResolver`` snapshot of the instruments table), prices from
the broker's live feed (every quote the hub publishes passes through ``record``), and an
instrument nobody watches yet is priced once on demand through the broker's REST quote
(``ensure``), which the risk service awaits before its synchronous check.

It offers the part of ``SimulatedMarket``'s interface those services use:
``instruments()``, ``get_instrument()``, ``quote()`` (``KeyError`` when unknown or not
priced yet) and ``option_chain()`` (not available from a live feed: refused clearly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import structlog

from trading_backend.brokers.base import BrokerNotSupported
from trading_backend.brokers.paper.market import Quote
from trading_backend.domain import DomainError, ErrorCode, Exchange, Instrument
from trading_backend.marketdata.instruments import InstrumentResolver

log = structlog.get_logger(__name__)

QuoteFetch = Callable[[str, Exchange], Awaitable[dict[str, Any]]]


def _decimal(value: Any) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


class LiveMarket:
    """Instruments of one broker's master and the last quote of each, kept current by the
    live feed. ``fetch`` prices an instrument the feed has not quoted yet (a broker's
    ``get_market_data``); without it such an instrument simply has no price."""

    def __init__(
        self,
        resolver: InstrumentResolver,
        fetch: QuoteFetch | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.resolver = resolver
        self.fetch = fetch
        self._clock = clock or (lambda: datetime.now(UTC))
        self._quotes: dict[str, Quote] = {}
        self.tick_count = 0

    # -- the SimulatedMarket subset ------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        return self.resolver.all()

    def get_instrument(self, symbol: str, exchange: Exchange | str) -> Instrument | None:
        return self.resolver.instrument(exchange, symbol)

    def quote(self, symbol: str, exchange: Exchange | str) -> Quote:
        """The last quote; ``KeyError`` for an unknown or not yet priced instrument."""
        instrument = self.resolver.instrument(exchange, symbol)
        if instrument is None:
            raise KeyError(f"{exchange}:{symbol}")
        return self._quotes[instrument.key]

    def option_chain(self, underlying: str, expiry: date) -> list[Any]:
        raise BrokerNotSupported(
            "option chains with greeks are computed for the paper market only; "
            "with a live market data source, read the option instruments' quotes instead",
            underlying=underlying,
        )

    # -- prices ----------------------------------------------------------------------------
    async def record(self, quotes: Iterable[Quote]) -> None:
        """Remember the feed's quotes (the runtime puts this in front of ``hub.publish``)."""
        for quote in quotes:
            self._quotes[quote.key] = quote
            self.tick_count += 1

    async def ensure(self, symbol: str, exchange: Exchange | str) -> Quote | None:
        """The last quote, fetched once through the broker when the feed has none yet.
        A failing fetch is logged and answered with None: the risk engine then refuses
        an order it cannot value (rule ``last_price``) instead of guessing."""
        instrument = self.resolver.instrument(exchange, symbol)
        if instrument is None:
            return None
        known = self._quotes.get(instrument.key)
        if known is not None or self.fetch is None:
            return known
        try:
            data = await self.fetch(instrument.symbol, instrument.exchange)
        except DomainError as exc:
            log.warning("live_quote_fetch_failed", key=instrument.key, error=exc.message)
            return None
        ltp = _decimal(data.get("ltp"))
        if ltp <= 0:
            return None
        close = _decimal(data.get("close")) or ltp
        change = ltp - close
        quote = Quote(
            symbol=instrument.symbol,
            exchange=instrument.exchange,
            ltp=ltp,
            bid=_decimal(data.get("bid")) or ltp,
            ask=_decimal(data.get("ask")) or ltp,
            open=_decimal(data.get("open")) or ltp,
            high=_decimal(data.get("high")) or ltp,
            low=_decimal(data.get("low")) or ltp,
            close=close,
            volume=int(_decimal(data.get("volume"))),
            tick_volume=0,
            change=change,
            change_percent=(change * 100 / close).quantize(Decimal("0.01")),
            timestamp=self._clock(),
        )
        # A feed tick that arrived while we were fetching is newer: keep it.
        return self._quotes.setdefault(instrument.key, quote)


class FeedUpstream:
    """The hub's upstream in live mode, usable before the broker feed is up.

    The hub is built when the runtime is, the feed only once the market-data account has
    logged in; keys subscribed in between are kept and subscribed when ``attach`` hands
    over the real feed upstream (and again after a re-attach). Unknown instruments are
    refused at once (the hub then registers no consumer), as the paper market does.
    """

    def __init__(self, resolver: InstrumentResolver) -> None:
        self.resolver = resolver
        self.keys: set[str] = set()
        self.inner: Any = None

    async def subscribe(self, key: str) -> None:
        if self.resolver.resolve_key(key) is None:
            raise DomainError(f"unknown instrument {key}", ErrorCode.INSTRUMENT_NOT_FOUND)
        if self.inner is not None:
            await self.inner.subscribe(key)
        self.keys.add(key)

    async def unsubscribe(self, key: str) -> None:
        self.keys.discard(key)
        if self.inner is not None:
            await self.inner.unsubscribe(key)

    async def attach(self, inner: Any) -> None:
        """Start forwarding to ``inner`` (an ``AngelOneFeedUpstream``); keys that cannot
        be subscribed are logged and dropped, the others go on."""
        self.inner = inner
        for key in sorted(self.keys):
            try:
                await inner.subscribe(key)
            except DomainError as exc:
                log.warning("live_feed_subscribe_failed", key=key, error=exc.message)
