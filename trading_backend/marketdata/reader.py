"""The strategies' pull reads (``MarketReader``) over the deployment's market.

Quotes and option chains come straight from the market; recent bars from the hub, which
keeps the bars it aggregated for watched instruments, topped up from historical candles
(the candle store, when one is given) when a strategy asks for more than the hub has seen
since it started watching.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime, timedelta

from trading_backend.brokers.paper.market import OptionChainRow, SimulatedMarket
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe
from trading_backend.marketdata.candles import CandleService, Fetch
from trading_backend.marketdata.hub import MarketHub, tick_view
from trading_backend.marketdata.options import expiry_datetime
from trading_backend.strategies.base import OptionQuote, TickView

# (symbol, exchange, timeframe, count, before) -> up to ``count`` completed bars that
# ended at or before ``before``, oldest first.
HistoryLoader = Callable[[str, Exchange, Timeframe, int, datetime], Awaitable[Sequence[Bar]]]


MAX_HISTORY_BARS = 5000  # a strategy's warm-up read, not a data export


def candle_history(candles: CandleService, broker_name: str, fetch: Fetch) -> HistoryLoader:
    """A ``HistoryLoader`` over the candle cache (fetching what is missing from the broker
    once). The span asked for is widened to cover nights and weekends of session-bound
    exchanges, then trimmed to ``count`` bars."""

    async def load(
        symbol: str, exchange: Exchange, timeframe: Timeframe, count: int, before: datetime
    ) -> Sequence[Bar]:
        count = min(count, MAX_HISTORY_BARS)
        # A session covers about a quarter of a day (NSE 375 of 1440 minutes) and 5 days
        # in 7 trade: 6x the bars' duration plus 4 days reaches back far enough.
        widen = 1 if Exchange(exchange) is Exchange.CRYPTO else 6
        start = before - timeframe.duration * count * widen - timedelta(days=4)
        bars = await candles.get(broker_name, fetch, symbol, exchange, timeframe, start, before)
        return [b for b in bars if b.end <= before][-count:]

    return load


def option_quotes(rows: Sequence[OptionChainRow]) -> list[OptionQuote]:
    """Flatten market chain rows into the strategies' ``OptionQuote`` list (CE, PE by
    strike)."""
    quotes: list[OptionQuote] = []
    for row in rows:
        for kind, leg in (("CE", row.ce), ("PE", row.pe)):
            quotes.append(
                OptionQuote(
                    symbol=leg.symbol,
                    strike=row.strike,
                    option_type=kind,
                    expiry=expiry_datetime(row.expiry),
                    ltp=leg.ltp,
                    bid=leg.bid,
                    ask=leg.ask,
                    iv=leg.iv if leg.iv is not None else 0.0,
                    delta=leg.delta,
                    gamma=leg.gamma,
                    theta=leg.theta,
                    vega=leg.vega,
                    lot_size=leg.lot_size,
                )
            )
    return quotes


class MarketDataReader:
    def __init__(
        self, market: SimulatedMarket, hub: MarketHub, history: HistoryLoader | None = None
    ) -> None:
        self._market = market
        self._hub = hub
        self._history = history

    async def quote(self, symbol: str, exchange: Exchange) -> TickView:
        if self._market.get_instrument(symbol, exchange) is None:
            raise DomainError(
                f"no instrument {symbol!r} on {Exchange(exchange).value}",
                ErrorCode.INSTRUMENT_NOT_FOUND,
            )
        return tick_view(self._market.quote(symbol, exchange))

    async def bars(
        self, symbol: str, exchange: Exchange, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        if count <= 0:
            return []
        timeframe = Timeframe(timeframe)
        live = self._hub.recent_bars(symbol, exchange, timeframe, count)
        missing = count - len(live)
        if missing <= 0 or self._history is None:
            return live
        before = live[0].start if live else self._market.quote(symbol, exchange).timestamp
        older = [
            b
            for b in await self._history(symbol, Exchange(exchange), timeframe, missing, before)
            if b.end <= before
        ]
        return [*older[-missing:], *live]

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]:
        day: date | None = None
        if expiry is not None:
            day = expiry.date() if isinstance(expiry, datetime) else expiry
        try:
            rows = self._market.option_chain(underlying, day)
        except KeyError as exc:
            raise DomainError(str(exc.args[0]), ErrorCode.INSTRUMENT_NOT_FOUND) from None
        return option_quotes(rows)
