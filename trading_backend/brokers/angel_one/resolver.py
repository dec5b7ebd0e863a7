"""Our symbol + exchange -> Angel ``tradingsymbol`` + ``symboltoken`` (and back).

Why a port: orders, quotes and candles need Angel's numeric token, which only the
instrument master (~150k rows, loaded by ``marketdata.instruments``) knows. The runtime
may hand the adapter a store-backed resolver as ``context.extras["instrument_resolver"]``
(anything with ``resolve(exchange, symbol)``, sync or async, returning a
``(tradingsymbol, token, lot_size, tick_size)`` tuple or None). Without one the adapter
falls back to ``SearchScripResolver``: the ``searchScrip`` API plus an in-memory cache,
mapping our ``SBIN`` to ``SBIN-EQ`` for NSE/BSE equities.

The reverse direction (an order-book row's ``tradingsymbol`` -> our symbol) uses what the
resolver has seen, else the naming rule: a trailing ``-EQ`` is dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, runtime_checkable

from trading_backend.brokers.base import BrokerRejected
from trading_backend.domain import ErrorCode

__all__ = [
    "InstrumentResolver",
    "ResolvedSymbol",
    "SearchScripResolver",
    "our_symbol",
    "resolve_with",
]

EQUITY_SUFFIX = "-EQ"
_EQUITY_EXCHANGES = ("NSE", "BSE")


class ResolvedSymbol(NamedTuple):
    tradingsymbol: str
    token: str
    lot_size: int = 1
    tick_size: Decimal = Decimal("0.05")


@runtime_checkable
class InstrumentResolver(Protocol):
    def resolve(self, exchange: str, symbol: str) -> Any:
        """``(tradingsymbol, token, lot_size, tick_size)`` or None (may be awaitable)."""


def our_symbol(exchange: str, tradingsymbol: str) -> str:
    """The naming rule for Angel symbols we have no mapping for."""
    symbol = (tradingsymbol or "").strip().upper()
    if symbol.endswith(EQUITY_SUFFIX):
        return symbol[: -len(EQUITY_SUFFIX)]
    return symbol


def _coerce(value: Any) -> ResolvedSymbol | None:
    if value is None:
        return None
    if isinstance(value, ResolvedSymbol):
        return value
    if isinstance(value, dict):
        value = (
            value.get("tradingsymbol") or value.get("symbol"),
            value.get("token") or value.get("symboltoken"),
            value.get("lot_size", 1),
            value.get("tick_size", "0.05"),
        )
    items = [*list(value), None, None, None, None]
    tradingsymbol, token, lot, tick = items[:4]
    if not tradingsymbol or token in (None, ""):
        return None
    return ResolvedSymbol(
        str(tradingsymbol), str(token), int(lot or 1), Decimal(str(tick or "0.05"))
    )


async def resolve_with(resolver: Any, exchange: str, symbol: str) -> ResolvedSymbol | None:
    """Call any resolver (sync or async, tuple/dict/NamedTuple answer)."""
    result = resolver.resolve(exchange, symbol)
    if inspect.isawaitable(result):
        result = await result
    return _coerce(result)


Search = Callable[[str, str], Awaitable[list[dict[str, Any]]]]


class SearchScripResolver:
    """Resolves through ``searchScrip`` (1 request/s) and remembers every answer."""

    def __init__(self, search: Search) -> None:
        self._search = search
        self._cache: dict[tuple[str, str], ResolvedSymbol] = {}
        self._reverse: dict[tuple[str, str], str] = {}  # (exchange, tradingsymbol) -> ours
        self._by_token: dict[tuple[str, str], str] = {}  # (exchange, token) -> ours

    def remember(self, exchange: str, symbol: str, resolved: ResolvedSymbol) -> None:
        key = (exchange.upper(), symbol.upper())
        self._cache[key] = resolved
        self._reverse[(key[0], resolved.tradingsymbol.upper())] = key[1]
        self._by_token[(key[0], resolved.token)] = key[1]

    def cached(self, exchange: str, symbol: str) -> ResolvedSymbol | None:
        return self._cache.get((exchange.upper(), symbol.upper()))

    def symbol_for(self, exchange: str, tradingsymbol: str, token: str | None = None) -> str:
        exchange = exchange.upper()
        if token:
            found = self._by_token.get((exchange, str(token)))
            if found:
                return found
        return self._reverse.get((exchange, tradingsymbol.upper())) or our_symbol(
            exchange, tradingsymbol
        )

    async def resolve(self, exchange: str, symbol: str) -> ResolvedSymbol | None:
        exchange, symbol = exchange.upper(), symbol.upper()
        hit = self._cache.get((exchange, symbol))
        if hit is not None:
            return hit
        wanted = [symbol]
        if exchange in _EQUITY_EXCHANGES and not symbol.endswith(EQUITY_SUFFIX):
            wanted.insert(0, symbol + EQUITY_SUFFIX)
        rows = await self._search(exchange, symbol)
        by_name = {
            str(r.get("tradingsymbol", "")).upper(): r
            for r in rows
            if str(r.get("exchange", exchange)).upper() == exchange
        }
        for name in wanted:
            row = by_name.get(name)
            if row is not None and row.get("symboltoken") not in (None, ""):
                resolved = ResolvedSymbol(str(row["tradingsymbol"]), str(row["symboltoken"]))
                self.remember(exchange, symbol, resolved)
                return resolved
        return None


def not_found(exchange: str, symbol: str) -> BrokerRejected:
    return BrokerRejected(
        f"unknown instrument {exchange}:{symbol} at Angel One",
        ErrorCode.INSTRUMENT_NOT_FOUND,
        symbol=symbol,
        exchange=exchange,
    )
