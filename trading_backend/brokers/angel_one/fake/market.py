"""Market-data routes of the fake: LTP, quote (LTP/OHLC/FULL), candles, searchScrip, margin.

Candles are synthetic but deterministic: each bar's prices are a pure function of (seed,
token, timestamp), so the same request always returns the same bars whatever range it
covers, and the generator never needs history.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from trading_backend.brokers.angel_one.fake.errors import INVALID_PARAMETERS, FakeAPIError
from trading_backend.brokers.angel_one.fake.instruments import Instrument, round_to_tick
from trading_backend.brokers.angel_one.fake.state import Engine, margin_rate, num
from trading_backend.brokers.angel_one.protocol import (
    CANDLE_INTERVAL_MAX_DAYS,
    CANDLE_TIME_FORMAT,
    IST,
    MARKET_CLOSE_IST,
    MARKET_OPEN_IST,
    ORDER_TIME_FORMAT,
    to_decimal,
    to_int,
)

QUOTE_MODES = ("LTP", "OHLC", "FULL")
MAX_QUOTE_TOKENS = 50
INTERVAL_MINUTES = {
    "ONE_MINUTE": 1,
    "THREE_MINUTE": 3,
    "FIVE_MINUTE": 5,
    "TEN_MINUTE": 10,
    "FIFTEEN_MINUTE": 15,
    "THIRTY_MINUTE": 30,
    "ONE_HOUR": 60,
    "ONE_DAY": 0,
}


def _noise(*parts: object) -> float:
    """Deterministic value in [0, 1) from its inputs."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def ltp_data(engine: Engine, body: Mapping[str, Any]) -> dict[str, Any]:
    inst = engine.instrument(str(body.get("exchange") or ""), str(body.get("symboltoken") or ""))
    if body.get("tradingsymbol") and str(body["tradingsymbol"]) != inst.symbol:
        raise FakeAPIError("AB1009")
    q = engine.quote(inst)
    return {
        "exchange": inst.exchange,
        "tradingsymbol": inst.symbol,
        "symboltoken": inst.token,
        "open": num(q.open),
        "high": num(q.high),
        "low": num(q.low),
        "close": num(q.close),
        "ltp": num(q.ltp),
    }


def _full_fields(engine: Engine, inst: Instrument, seed: int) -> dict[str, Any]:
    q = engine.quote(inst)
    tick = inst.tick
    levels = []
    for side, sign in (("buy", -1), ("sell", 1)):
        rows = []
        for i in range(5):
            price = q.ltp + sign * tick * (i + 1)
            qty = 1 + int(_noise(seed, inst.token, side, i) * 500) * inst.lotsize
            rows.append({"price": num(price), "quantity": qty, "orders": 1 + i})
        levels.append(rows)
    stamp = q.updated.astimezone(IST).strftime(ORDER_TIME_FORMAT)
    change = q.ltp - q.close
    return {
        "lastTradeQty": q.last_qty,
        "exchFeedTime": stamp,
        "exchTradeTime": stamp,
        "netChange": num(change),
        "percentChange": num(change / q.close * 100 if q.close else Decimal(0)),
        "avgPrice": num(q.avg),
        "tradeVolume": q.volume,
        "opnInterest": q.oi,
        "lowerCircuit": num(round_to_tick(q.close * Decimal("0.8"), tick)),
        "upperCircuit": num(round_to_tick(q.close * Decimal("1.2"), tick)),
        "totBuyQuan": sum(r["quantity"] for r in levels[0]),
        "totSellQuan": sum(r["quantity"] for r in levels[1]),
        "52WeekLow": num(round_to_tick(min(q.low, q.close) * Decimal("0.7"), tick)),
        "52WeekHigh": num(round_to_tick(max(q.high, q.close) * Decimal("1.3"), tick)),
        "depth": {"buy": levels[0], "sell": levels[1]},
    }


def quote(engine: Engine, body: Mapping[str, Any], seed: int) -> dict[str, Any]:
    mode = str(body.get("mode") or "").upper()
    if mode not in QUOTE_MODES:
        raise FakeAPIError(INVALID_PARAMETERS, "Invalid mode: use LTP, OHLC or FULL")
    tokens = body.get("exchangeTokens")
    if not isinstance(tokens, Mapping) or not tokens:
        raise FakeAPIError(INVALID_PARAMETERS, "exchangeTokens must be a non-empty object")
    pairs: list[tuple[str, str]] = []
    for exchange, values in tokens.items():
        if not isinstance(values, list):
            raise FakeAPIError(INVALID_PARAMETERS, f"exchangeTokens.{exchange} must be a list")
        pairs.extend((str(exchange).upper(), str(v).strip()) for v in values)
    if len(pairs) > MAX_QUOTE_TOKENS:
        raise FakeAPIError(
            INVALID_PARAMETERS, f"Maximum {MAX_QUOTE_TOKENS} tokens are allowed per request"
        )
    fetched: list[dict[str, Any]] = []
    unfetched: list[dict[str, Any]] = []
    for exchange, token in pairs:
        if not token:
            unfetched.append(_unfetched(exchange, token, "AB4018"))
            continue
        inst = engine.instruments.get((exchange, token))
        if inst is None:
            unfetched.append(_unfetched(exchange, token, "AB1018"))
            continue
        q = engine.quote(inst)
        item: dict[str, Any] = {
            "exchange": inst.exchange,
            "tradingSymbol": inst.symbol,
            "symbolToken": inst.token,
            "ltp": num(q.ltp),
        }
        if mode in ("OHLC", "FULL"):
            item.update(open=num(q.open), high=num(q.high), low=num(q.low), close=num(q.close))
        if mode == "FULL":
            item.update(_full_fields(engine, inst, seed))
        fetched.append(item)
    return {"fetched": fetched, "unfetched": unfetched}


def _unfetched(exchange: str, token: str, code: str) -> dict[str, str]:
    message = "Symbol token cannot be empty" if code == "AB4018" else "Failed to get symbol details"
    return {"exchange": exchange, "symbolToken": token, "message": message, "errorCode": code}


def _parse_time(raw: Any, key: str) -> datetime:
    try:
        return datetime.strptime(str(raw).strip(), CANDLE_TIME_FORMAT).replace(tzinfo=IST)
    except ValueError as exc:
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid {key}: expected yyyy-MM-dd HH:mm") from exc


def candles(engine: Engine, body: Mapping[str, Any], seed: int) -> list[list[Any]] | None:
    inst = engine.instrument(str(body.get("exchange") or ""), str(body.get("symboltoken") or ""))
    interval = str(body.get("interval") or "").upper()
    if interval not in CANDLE_INTERVAL_MAX_DAYS:
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid interval {interval!r}")
    start = _parse_time(body.get("fromdate"), "fromdate")
    end = _parse_time(body.get("todate"), "todate")
    if end < start:
        raise FakeAPIError(INVALID_PARAMETERS, "todate is before fromdate")
    max_days = CANDLE_INTERVAL_MAX_DAYS[interval]
    if end - start > timedelta(days=max_days):
        raise FakeAPIError(
            INVALID_PARAMETERS,
            f"Date range exceeds the maximum of {max_days} days for interval {interval}",
        )
    end = min(end, engine.clock().astimezone(IST))
    base = engine.quote(inst).close
    minutes = INTERVAL_MINUTES[interval]
    bars = [_bar(inst, base, seed, ts, minutes) for ts in _slots(start, end, minutes)]
    return bars or None


def _slots(start: datetime, end: datetime, minutes: int) -> list[datetime]:
    slots: list[datetime] = []
    day = start.date()
    while day <= end.date():
        if day.weekday() < 5:
            if minutes == 0:
                ts = datetime.combine(day, time(0, 0), IST)
                if start.date() <= day <= end.date():
                    slots.append(ts)
            else:
                ts = datetime.combine(day, MARKET_OPEN_IST, IST)
                close = datetime.combine(day, MARKET_CLOSE_IST, IST)
                while ts < close:
                    if start <= ts <= end:
                        slots.append(ts)
                    ts += timedelta(minutes=minutes)
        day += timedelta(days=1)
    return slots


def _level(inst: Instrument, base: Decimal, seed: int, ts: datetime) -> Decimal:
    t = ts.timestamp() / 60
    wave = 0.03 * math.sin(t / 900) + 0.01 * math.sin(t / 97)
    jitter = (_noise(seed, inst.token, int(t)) - 0.5) * 0.004
    return base * Decimal(str(round(1 + wave + jitter, 6)))


def _bar(inst: Instrument, base: Decimal, seed: int, ts: datetime, minutes: int) -> list[Any]:
    span = timedelta(minutes=minutes or 375)
    o = round_to_tick(_level(inst, base, seed, ts), inst.tick)
    c = round_to_tick(_level(inst, base, seed, ts + span), inst.tick)
    wiggle = base * Decimal("0.002")
    h = round_to_tick(max(o, c) + wiggle * Decimal(str(round(_noise(seed, ts, "h"), 4))), inst.tick)
    low = round_to_tick(
        min(o, c) - wiggle * Decimal(str(round(_noise(seed, ts, "l"), 4))), inst.tick
    )
    volume = 0 if inst.is_index else 100 + int(_noise(seed, inst.token, ts, "v") * 100_000)
    return [ts.isoformat(), num(o), num(h), num(low), num(c), volume]


def search_scrip(engine: Engine, body: Mapping[str, Any]) -> list[dict[str, str]] | None:
    exchange = str(body.get("exchange") or "").upper()
    text = str(body.get("searchscrip") or "").strip().upper()
    if not exchange or not text:
        raise FakeAPIError(INVALID_PARAMETERS, "exchange and searchscrip are required")
    found = [
        {"exchange": i.exchange, "tradingsymbol": i.symbol, "symboltoken": i.token}
        for i in engine.instruments.values()
        if i.exchange == exchange and text in i.symbol.upper()
    ]
    return found or None


def margin_batch(engine: Engine, body: Mapping[str, Any]) -> dict[str, Any]:
    positions = body.get("positions")
    if not isinstance(positions, list) or not positions:
        raise FakeAPIError(INVALID_PARAMETERS, "positions must be a non-empty list")
    total = premium = Decimal(0)
    breakup: dict[tuple[str, str], Decimal] = {}
    options: list[dict[str, Any]] = []
    for item in positions:
        if not isinstance(item, Mapping):
            raise FakeAPIError(INVALID_PARAMETERS, "each position must be an object")
        inst = engine.instrument(str(item.get("exchange") or ""), str(item.get("token") or ""))
        qty = to_int(item.get("qty"))
        price = to_decimal(item.get("price")) or engine.quote(inst).ltp
        product = str(item.get("productType") or "INTRADAY").upper()
        is_buy = str(item.get("tradeType") or "BUY").upper() == "BUY"
        need = price * qty * margin_rate(inst, product, is_buy)
        total += need
        key = (inst.exchange, product)
        breakup[key] = breakup.get(key, Decimal(0)) + need
        if inst.option_type and is_buy:
            premium += price * qty
            options.append(
                {
                    "exchange": inst.exchange,
                    "symbolName": inst.name,
                    "token": inst.token,
                    "lotQty": qty,
                    "optionPremium": num(price * qty),
                }
            )
    return {
        "totalMarginRequired": num(total),
        "marginComponents": {
            "netPremium": num(premium),
            "spanMargin": num(total - premium),
            "marginBenefit": 0,
            "deliveryMargin": 0,
            "nonNFOMargin": 0,
            "totOptionsPremium": num(premium),
        },
        "marginBreakup": [
            {"exchange": e, "productType": p, "totalMarginRequired": num(v)}
            for (e, p), v in breakup.items()
        ],
        "optionsBuy": {"totOptionsPremium": num(premium), "optionDetails": options},
    }
