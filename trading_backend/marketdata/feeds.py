"""Live broker feeds as ``MarketHub`` upstreams.

``AngelOneFeedUpstream`` turns the hub's reference-counted ``subscribe(key)`` /
``unsubscribe(key)`` calls (one per instrument key such as ``NSE:SBIN``, whatever the
number of consumers) into SmartStream subscriptions, and the feed's binary packets into
the hub's ``Quote`` type, which ``MarketHub.publish`` aggregates into bars and fans out
exactly like the paper market's ticks.

Instrument keys are mapped to (exchange, token) by an injected async resolver (the
instrument master provides one; any ``async (key) -> (exchange, token) | None`` will do),
so this module knows nothing about where instruments are stored.

Wiring (done by the runtime, not here)::

    feed = AngelOneFeed(credentials, url=..., refresh_credentials=...)
    upstream = AngelOneFeedUpstream(feed, resolve)
    hub = MarketHub(market, upstream, paper_prices=False)
    upstream.bind(hub.publish)
    await feed.start()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

import structlog

from trading_backend.brokers.angel_one import packets
from trading_backend.brokers.angel_one.feed import AngelOneFeed, exchange_type_of
from trading_backend.brokers.paper.market import Quote
from trading_backend.domain import DomainError, ErrorCode, Exchange

__all__ = ["AngelOneFeedUpstream", "Resolver", "quote_from_packet"]

log = structlog.get_logger(__name__)

Resolver = Callable[[str], Awaitable[tuple[str | int, str] | None]]
QuoteSink = Callable[[Iterable[Quote]], Awaitable[None]]
_PCT: Final = Decimal("0.01")


def _split_key(key: str) -> tuple[Exchange, str]:
    exchange, sep, symbol = key.partition(":")
    if not sep or not symbol:
        raise DomainError(
            f"instrument key {key!r} is not EXCHANGE:SYMBOL", ErrorCode.VALIDATION_ERROR
        )
    try:
        return Exchange(exchange.upper()), symbol
    except ValueError:
        raise DomainError(
            f"unknown exchange in instrument key {key!r}", ErrorCode.VALIDATION_ERROR
        ) from None


def quote_from_packet(
    packet: packets.LtpPacket | packets.QuotePacket | packets.SnapQuotePacket,
    symbol: str,
    exchange: Exchange,
    *,
    tick_volume: int = 0,
    now: datetime | None = None,
) -> Quote:
    """Our ``Quote`` (Decimal rupees) from a packet (integer wire units): the edge where
    wire prices become money. Fields a mode does not carry fall back to the last price
    (bid/ask/OHLC in LTP mode; bid/ask in Quote mode) and to zero (volume)."""
    et = packet.exchange_type
    ltp = packets.to_price(packet.ltp, et)
    if packet.exchange_timestamp > 0:
        timestamp = datetime.fromtimestamp(packet.exchange_timestamp / 1000, UTC)
    else:  # index feeds and odd packets carry no time: use ours
        timestamp = now or datetime.now(UTC)
    bid = ask = open_ = high = low = close = ltp
    volume = 0
    if isinstance(packet, packets.QuotePacket | packets.SnapQuotePacket):
        open_, high = packets.to_price(packet.open, et), packets.to_price(packet.high, et)
        low, close = packets.to_price(packet.low, et), packets.to_price(packet.close, et)
        volume = packet.volume
    if isinstance(packet, packets.SnapQuotePacket):
        best_bid, best_ask = packet.bids[0], packet.asks[0]
        if best_bid.quantity:
            bid = packets.to_price(best_bid.price, et)
        if best_ask.quantity:
            ask = packets.to_price(best_ask.price, et)
    change = ltp - close
    percent = (change * 100 / close).quantize(_PCT, ROUND_HALF_UP) if close else Decimal(0)
    return Quote(
        symbol=symbol,
        exchange=exchange,
        ltp=ltp,
        bid=bid,
        ask=ask,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        tick_volume=tick_volume,
        change=change,
        change_percent=percent,
        timestamp=timestamp,
        sequence=getattr(packet, "sequence", 0),
    )


class AngelOneFeedUpstream:
    """``Upstream`` backed by one ``AngelOneFeed`` (one client code's feed).

    Takes over ``feed.on_tick``. ``mode`` is the SmartStream mode used for every key:
    SnapQuote (default) carries best bid/ask, which ``TickView`` exposes; Quote is enough
    for bars; LTP is the lightest. Per-tick traded volume (what bars sum) is the change
    of the day's cumulative volume between two packets (the last traded quantity for the
    first packet of an instrument; zero in LTP mode, which carries no volume).
    """

    def __init__(
        self,
        feed: AngelOneFeed,
        resolve: Resolver,
        *,
        mode: int = packets.MODE_SNAP_QUOTE,
        sink: QuoteSink | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if mode not in (packets.MODE_LTP, packets.MODE_QUOTE, packets.MODE_SNAP_QUOTE):
            raise ValueError("the hub needs prices: mode must be LTP, Quote or SnapQuote")
        self.feed = feed
        self.mode = mode
        self._resolve = resolve
        self._sink = sink
        self._clock = clock or (lambda: datetime.now(UTC))
        self._by_wire: dict[tuple[int, str], tuple[str, Exchange]] = {}
        self._by_key: dict[str, tuple[int, str]] = {}
        self._volumes: dict[tuple[int, str], int] = {}
        self.ticks = 0
        feed.on_tick = self.on_packet

    def bind(self, sink: QuoteSink) -> None:
        """Where quotes go: ``hub.publish`` (the hub is built after its upstream)."""
        self._sink = sink

    @property
    def keys(self) -> set[str]:
        return set(self._by_key)

    async def subscribe(self, key: str) -> None:
        exchange, symbol = _split_key(key)
        resolved = await self._resolve(key)
        if resolved is None:
            raise DomainError(
                f"no Angel One instrument for {key}", ErrorCode.INSTRUMENT_NOT_FOUND, key=key
            )
        wire = (exchange_type_of(resolved[0]), str(resolved[1]))
        self._by_wire[wire] = (symbol, exchange)
        self._by_key[key] = wire
        try:
            await self.feed.subscribe([wire], self.mode)
        except BaseException:
            self._forget(key)
            raise

    async def unsubscribe(self, key: str) -> None:
        wire = self._by_key.get(key)
        if wire is None:
            return
        self._forget(key)
        await self.feed.unsubscribe([wire], self.mode)

    def _forget(self, key: str) -> None:
        wire = self._by_key.pop(key, None)
        if wire is not None:
            self._by_wire.pop(wire, None)
            self._volumes.pop(wire, None)

    async def on_packet(self, packet: packets.Packet) -> None:
        if isinstance(packet, packets.Depth20Packet):
            return  # no last price: nothing for the hub
        wire = (packet.exchange_type, packet.token)
        target = self._by_wire.get(wire)
        if target is None or self._sink is None:
            return  # unsubscribed a moment ago, or not bound yet
        tick_volume = 0
        if isinstance(packet, packets.QuotePacket | packets.SnapQuotePacket):
            previous = self._volumes.get(wire)
            self._volumes[wire] = packet.volume
            if previous is None or packet.volume < previous:  # first packet, or a new day
                tick_volume = max(packet.last_traded_quantity, 0)
            else:
                tick_volume = packet.volume - previous
        now = self._clock() if packet.exchange_timestamp <= 0 else None
        quote = quote_from_packet(packet, target[0], target[1], tick_volume=tick_volume, now=now)
        self.ticks += 1
        await self._sink([quote])
