"""Market data: instruments, quotes, candles and option chains (shared by every user).

Prices come from the deployment's market (the paper market's simulation today; a broker's
live feed once a real adapter provides it). Any authenticated caller may read them; an
API key needs the ``read`` scope.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from trading_backend.api.deps import RuntimeDep, UserDep
from trading_backend.api.schemas import ErrorOut, numbers
from trading_backend.brokers.base import BrokerNotSupported
from trading_backend.domain import DomainError, ErrorCode, Exchange, InstrumentType, Timeframe

router = APIRouter(prefix="/api/v1/market", tags=["market"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
ExchangeQuery = Annotated[Exchange, Query(description="exchange of the symbol")]
MAX_CANDLES = 5000


class InstrumentOut(BaseModel):
    symbol: str
    exchange: str
    instrument_type: str
    name: str
    lot_size: int
    tick_size: float
    expiry: date | None
    strike: float | None
    underlying: str | None
    tradable: bool


class QuoteOut(BaseModel):
    symbol: str
    exchange: str
    ltp: float
    bid: float
    ask: float
    open: float
    high: float
    low: float
    close: float
    volume: int
    change: float
    change_percent: float
    timestamp: datetime


class CandleOut(BaseModel):
    start: datetime
    end: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int


class CandlesOut(BaseModel):
    symbol: str
    exchange: str
    timeframe: str
    candles: list[CandleOut]


class OptionLegOut(BaseModel):
    symbol: str
    ltp: float
    bid: float
    ask: float
    iv: float | None
    delta: float
    gamma: float
    theta: float
    vega: float


class OptionRowOut(BaseModel):
    strike: float
    CE: OptionLegOut | None
    PE: OptionLegOut | None


class OptionChainOut(BaseModel):
    underlying: str
    spot: float
    expiry: date
    expiries: list[date]
    lot_size: int
    rows: list[OptionRowOut]


def _instrument_out(instrument: Any) -> dict[str, Any]:
    return {
        "symbol": instrument.symbol,
        "exchange": instrument.exchange.value,
        "instrument_type": instrument.instrument_type.value,
        "name": instrument.name,
        "lot_size": instrument.lot_size,
        "tick_size": float(instrument.tick_size),
        "expiry": instrument.expiry,
        "strike": float(instrument.strike) if instrument.strike is not None else None,
        "underlying": instrument.underlying,
        "tradable": instrument.tradable,
    }


@router.get("/instruments", response_model=list[InstrumentOut])
async def instruments(
    _: UserDep,
    runtime: RuntimeDep,
    exchange: Annotated[Exchange | None, Query()] = None,
    instrument_type: Annotated[InstrumentType | None, Query()] = None,
    underlying: Annotated[str | None, Query(max_length=32)] = None,
    q: Annotated[str | None, Query(max_length=64, description="symbol or name contains")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    """The instrument registry (the paper market's universe)."""
    found = []
    needle = q.upper() if q else None
    for instrument in runtime.market_view.instruments():
        if exchange is not None and instrument.exchange is not exchange:
            continue
        if instrument_type is not None and instrument.instrument_type is not instrument_type:
            continue
        if underlying is not None and instrument.underlying != underlying.upper():
            continue
        if needle and needle not in instrument.symbol and needle not in instrument.name.upper():
            continue
        found.append(_instrument_out(instrument))
        if len(found) >= limit:
            break
    return found


def _known(runtime: Any, symbol: str, exchange: Exchange) -> None:
    if runtime.market_view.get_instrument(symbol.upper(), exchange) is None:
        raise DomainError(
            f"no instrument {symbol!r} on {exchange.value}", ErrorCode.INSTRUMENT_NOT_FOUND
        )


@router.get("/quote/{symbol}", response_model=QuoteOut, responses=ERRORS)
async def quote(
    symbol: str, _: UserDep, runtime: RuntimeDep, exchange: ExchangeQuery = Exchange.NSE
) -> dict[str, Any]:
    _known(runtime, symbol, exchange)
    market = runtime.market_view
    ensure = getattr(market, "ensure", None)
    if ensure is not None:  # a live market prices an unwatched instrument on demand
        await ensure(symbol.upper(), exchange)
    try:
        q = market.quote(symbol.upper(), exchange)
    except KeyError:
        raise DomainError(
            f"no price for {exchange.value}:{symbol.upper()} from the market-data source yet",
            ErrorCode.BROKER_UNAVAILABLE,
        ) from None
    return numbers(
        {
            "symbol": q.symbol,
            "exchange": q.exchange.value,
            "ltp": q.ltp,
            "bid": q.bid,
            "ask": q.ask,
            "open": q.open,
            "high": q.high,
            "low": q.low,
            "close": q.close,
            "volume": q.volume,
            "change": q.change,
            "change_percent": q.change_percent,
            "timestamp": q.timestamp,
        }
    )


@router.get("/candles/{symbol}", response_model=CandlesOut, responses=ERRORS)
async def candles(
    symbol: str,
    _: UserDep,
    runtime: RuntimeDep,
    exchange: ExchangeQuery = Exchange.NSE,
    timeframe: Annotated[Timeframe, Query(description="bar size")] = Timeframe.D1,
    start: Annotated[
        datetime | None, Query(description="first bar start (ISO-8601; default: enough for limit)")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="bars starting before this (default now)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_CANDLES, description="at most the newest N")] = 500,
) -> dict[str, Any]:
    """Completed historical bars, oldest first, aligned to the exchange session. Fetched
    from the broker the first time and served from the database afterwards."""
    _known(runtime, symbol, exchange)
    name = symbol.upper()
    for label, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise DomainError(
                f"{label} needs a UTC offset (e.g. 2026-11-25T09:15:00+05:30)",
                ErrorCode.VALIDATION_ERROR,
            )
    until = end or datetime.now(UTC)
    if start is None:
        widen = 1 if exchange is Exchange.CRYPTO else 6  # nights and weekends
        start = until - timeframe.duration * limit * widen - timedelta(days=4)
    if start >= until:
        raise DomainError("start must be before end", ErrorCode.VALIDATION_ERROR)
    bars = await runtime.candles.get(
        runtime.settings.market_data_source,
        runtime.history_source,
        name,
        exchange,
        timeframe,
        start,
        until,
    )
    return numbers(
        {
            "symbol": name,
            "exchange": exchange.value,
            "timeframe": timeframe.value,
            "candles": [
                {
                    "start": b.start,
                    "end": b.end,
                    "open": b.open,
                    "high": b.high,
                    "low": b.low,
                    "close": b.close,
                    "volume": b.volume,
                }
                for b in bars[-limit:]
            ],
        }
    )


def _leg(leg: Any) -> dict[str, Any]:
    return {
        "symbol": leg.symbol,
        "ltp": leg.ltp,
        "bid": leg.bid,
        "ask": leg.ask,
        "iv": leg.iv,
        "delta": leg.delta,
        "gamma": leg.gamma,
        "theta": leg.theta,
        "vega": leg.vega,
    }


@router.get("/option-chain/{underlying}", response_model=OptionChainOut, responses=ERRORS)
async def option_chain(
    underlying: str,
    _: UserDep,
    runtime: RuntimeDep,
    expiry: Annotated[
        date | None, Query(description="an expiry date (default: the nearest live one)")
    ] = None,
    strikes: Annotated[
        int | None, Query(ge=1, le=200, description="only this many strikes each side of ATM")
    ] = None,
) -> dict[str, Any]:
    """One expiry's chain with each side's price, implied volatility and greeks (per unit
    of the underlying: multiply by ``lot_size`` for a lot). ``theta`` is per calendar
    day, ``vega`` per volatility point."""
    name = underlying.strip().upper()
    if runtime.live_market is not None:
        raise BrokerNotSupported(
            "option chains with greeks are computed for the paper market only "
            f"(MARKET_DATA_SOURCE={runtime.settings.market_data_source}); read the option "
            "contracts' quotes instead",
            underlying=name,
        )
    market = runtime.market
    try:
        expiries = market.expiries(name)
    except KeyError:
        raise DomainError(
            f"no options listed on {name!r}", ErrorCode.INSTRUMENT_NOT_FOUND
        ) from None
    try:
        rows = market.option_chain(name, expiry)
    except KeyError:
        raise DomainError(
            f"{name} has no options expiring {expiry}; listed: "
            + ", ".join(e.isoformat() for e in expiries),
            ErrorCode.INSTRUMENT_NOT_FOUND,
        ) from None
    spot_instrument = next(
        (
            i
            for i in market.instruments()
            if i.symbol == name and i.instrument_type is InstrumentType.INDEX
        ),
        None,
    )
    spot = market.quote(name, spot_instrument.exchange).ltp if spot_instrument else Decimal(0)
    if strikes is not None and rows:
        atm = min(range(len(rows)), key=lambda i: abs(rows[i].strike - spot))
        rows = rows[max(0, atm - strikes) : atm + strikes + 1]
    return numbers(
        {
            "underlying": name,
            "spot": spot,
            "expiry": rows[0].expiry if rows else expiry,
            "expiries": expiries,
            "lot_size": rows[0].ce.lot_size if rows else 0,
            "rows": [{"strike": r.strike, "CE": _leg(r.ce), "PE": _leg(r.pe)} for r in rows],
        }
    )
