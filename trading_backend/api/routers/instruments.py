"""Instrument search over brokers' instrument masters (the ``instruments`` table).

``GET /api/v1/instruments/search?q=&exchange=&type=&limit=&broker=`` finds instruments by
symbol, name, broker symbol (``SBIN-EQ``) or exact token, best matches first (see
``InstrumentStore.search``). Any authenticated caller may search; an API key needs the
``read`` scope.

When the broker's table is empty (nobody ran ``trading-backend instruments load`` yet,
the embedded demo), the paper universe is searched instead with the same ranking, and
the answer says so (``source: "paper"``): the endpoint stays useful out of the box
without pretending paper instruments carry the broker's tokens (their ``token`` is "").
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from trading_backend.api.deps import RuntimeDep, UserDep
from trading_backend.api.schemas import ErrorOut
from trading_backend.domain import Exchange, Instrument, InstrumentType
from trading_backend.marketdata.instruments import ANGEL_ONE, rank_instruments

router = APIRouter(prefix="/api/v1/instruments", tags=["instruments"])
ERRORS: dict[int | str, dict[str, Any]] = {422: {"model": ErrorOut}}
MAX_LIMIT = 100


class InstrumentHit(BaseModel):
    symbol: str
    exchange: str
    instrument_type: str
    name: str
    token: str
    broker_symbol: str
    lot_size: int
    tick_size: float
    expiry: date | None
    strike: float | None
    underlying: str | None
    tradable: bool


class InstrumentSearchOut(BaseModel):
    broker: str
    source: Literal["table", "paper"]
    count: int
    results: list[InstrumentHit]


def _hit(instrument: Instrument) -> dict[str, Any]:
    return {
        "symbol": instrument.symbol,
        "exchange": instrument.exchange.value,
        "instrument_type": instrument.instrument_type.value,
        "name": instrument.name,
        "token": instrument.token,
        "broker_symbol": instrument.broker_symbol or instrument.symbol,
        "lot_size": instrument.lot_size,
        "tick_size": float(instrument.tick_size),
        "expiry": instrument.expiry,
        "strike": float(instrument.strike) if instrument.strike is not None else None,
        "underlying": instrument.underlying,
        "tradable": instrument.tradable,
    }


@router.get("/search", response_model=InstrumentSearchOut, responses=ERRORS)
async def search(
    _: UserDep,
    runtime: RuntimeDep,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"\S",
            description="symbol, name or broker symbol (any case, prefix or part), or a token",
        ),
    ],
    exchange: Annotated[Exchange | None, Query(description="only this exchange")] = None,
    instrument_type: Annotated[
        InstrumentType | None, Query(alias="type", description="EQ, INDEX, FUT, CE or PE")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    broker: Annotated[
        str, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="whose instrument master")
    ] = ANGEL_ONE,
) -> dict[str, Any]:
    """Best matches first: exact symbol, exact token or broker symbol, symbol prefix,
    name, then any part; equities before indices, futures and options."""
    store = runtime.instruments
    found = await store.search(
        q, broker=broker, exchange=exchange, instrument_type=instrument_type, limit=limit
    )
    source: Literal["table", "paper"] = "table"
    if not found and await store.count(broker) == 0:
        source = "paper"
        found = rank_instruments(
            runtime.market.instruments(),
            q,
            exchange=exchange,
            instrument_type=instrument_type,
            limit=limit,
        )
    return {
        "broker": broker,
        "source": source,
        "count": len(found),
        "results": [_hit(instrument) for instrument in found],
    }
