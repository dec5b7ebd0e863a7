"""Translation between our types and SmartAPI's wire shapes (pure functions, no I/O).

Order tag rule (why: Angel's ``ordertag`` must be shorter than 20 characters, AB4008,
while our order ids are 20: ``o`` + 19 base32 characters, see ``execution.ids``):

* sent:   a 20-character id starting with ``o`` travels as ``id[1:]`` (19 characters);
          any other id shorter than 20 travels as itself; anything longer is refused
          with VALIDATION_ERROR before a request is made;
* read:   a 19-character tag made only of our id alphabet maps back to ``"o" + tag``;
          any other tag is the client order id itself. (A caller-chosen 19-character id
          of that alphabet would be read back with an ``o`` in front: our own ids never
          are such ids, and ``find_order_by_client_id`` compares *tags*, so it is exact.)

Numbers arrive as strings or JSON numbers (``"194.00"``, ``"- 2235.80"``, ``null``):
everything goes through ``protocol.to_decimal``/``to_int`` and becomes ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from trading_backend.brokers.angel_one.protocol import (
    INSUFFICIENT_FUNDS_HINT,
    IST,
    MODIFIABLE_VARIETIES,
    ORDER_STATUS_MAP,
    ORDER_TAG_MAX,
    ORDER_TIME_FORMAT,
    ORDER_TYPE_FROM_ANGEL,
    ORDER_TYPE_TO_ANGEL,
    as_list,
    format_price,
    to_decimal,
    to_int,
)
from trading_backend.brokers.angel_one.resolver import ResolvedSymbol, our_symbol
from trading_backend.brokers.base import BrokerOrderState, BrokerRejected
from trading_backend.domain import (
    Bar,
    BrokerOrder,
    ErrorCode,
    Exchange,
    Fill,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Timeframe,
)
from trading_backend.domain.money import ZERO

__all__ = [
    "ANGEL_EXCHANGES",
    "TIMEFRAME_TO_INTERVAL",
    "balance_from_rms",
    "bar_from_candle",
    "client_id_from_tag",
    "fill_from_trade",
    "modify_body",
    "order_state_from_row",
    "order_tag",
    "place_order_body",
    "position_from_row",
    "quote_to_market_data",
    "variety_for",
]

_ID_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuv")  # execution.ids
ANGEL_EXCHANGES = frozenset({"NSE", "BSE", "NFO", "MCX", "BFO", "CDS"})
TIMEFRAME_TO_INTERVAL: dict[Timeframe, str] = {
    Timeframe.M1: "ONE_MINUTE",
    Timeframe.M3: "THREE_MINUTE",
    Timeframe.M5: "FIVE_MINUTE",
    Timeframe.M15: "FIFTEEN_MINUTE",
    Timeframe.M30: "THIRTY_MINUTE",
    Timeframe.H1: "ONE_HOUR",
    Timeframe.D1: "ONE_DAY",
}
_PRODUCT_FROM_ANGEL = {
    "DELIVERY": ProductType.DELIVERY,
    "CNC": ProductType.DELIVERY,
    "INTRADAY": ProductType.INTRADAY,
    "MIS": ProductType.INTRADAY,
    "BO": ProductType.INTRADAY,
    "CO": ProductType.INTRADAY,
    "MARGIN": ProductType.MARGIN,
    "CARRYFORWARD": ProductType.CARRYFORWARD,
    "NRML": ProductType.CARRYFORWARD,
}

SymbolFor = Callable[[str, str, str | None], str]


def _default_symbol_for(exchange: str, tradingsymbol: str, token: str | None) -> str:
    return our_symbol(exchange, tradingsymbol)


# -- tags ----------------------------------------------------------------------------------
def order_tag(client_order_id: str | None) -> str | None:
    """The ``ordertag`` sent for a client order id (see the module docstring)."""
    if client_order_id is None:
        return None
    if len(client_order_id) == ORDER_TAG_MAX + 1 and client_order_id.startswith("o"):
        return client_order_id[1:]
    if len(client_order_id) <= ORDER_TAG_MAX:
        return client_order_id
    raise BrokerRejected(
        f"client_order_id {client_order_id!r} is too long for an Angel One order tag"
        f" (at most {ORDER_TAG_MAX} characters, or 20 starting with 'o')",
        ErrorCode.VALIDATION_ERROR,
        field="client_order_id",
    )


def client_id_from_tag(tag: Any) -> str | None:
    """Our client order id from an ``ordertag`` (the inverse of ``order_tag``)."""
    if tag is None:
        return None
    text = str(tag).strip()
    if not text:
        return None
    if len(text) == ORDER_TAG_MAX and set(text) <= _ID_ALPHABET:
        return "o" + text
    return text


# -- orders --------------------------------------------------------------------------------
def variety_for(order_type: OrderType | str) -> str:
    """STOPLOSS for stop orders, NORMAL otherwise. We never send AMO: Angel turns an
    order placed outside market hours into one by itself."""
    return "STOPLOSS" if OrderType(order_type) in (OrderType.SL, OrderType.SL_M) else "NORMAL"


def angel_exchange(value: Any) -> str:
    exchange = str(value).upper()
    if exchange not in ANGEL_EXCHANGES:
        raise BrokerRejected(
            f"Angel One does not trade on {exchange}",
            ErrorCode.VALIDATION_ERROR,
            field="exchange",
        )
    return exchange


def place_order_body(order: BrokerOrder, resolved: ResolvedSymbol) -> dict[str, Any]:
    """The placeOrder body for one of our orders (``None`` values are dropped on send)."""
    exchange = angel_exchange(order.exchange)
    order_type = OrderType(order.order_type)
    if resolved.lot_size > 1 and order.quantity % resolved.lot_size:
        raise BrokerRejected(
            f"quantity {order.quantity} of {exchange}:{order.symbol} must be a multiple of"
            f" its lot size {resolved.lot_size}",
            ErrorCode.VALIDATION_ERROR,
            field="quantity",
        )
    price = order.price if isinstance(order.price, Decimal) else None
    trigger = order.trigger_price if isinstance(order.trigger_price, Decimal) else None
    return {
        "variety": variety_for(order_type),
        "tradingsymbol": resolved.tradingsymbol,
        "symboltoken": resolved.token,
        "transactiontype": str(OrderSide(order.side)),
        "exchange": exchange,
        "ordertype": ORDER_TYPE_TO_ANGEL[order_type.value],
        "producttype": str(ProductType(order.product_type)),
        "duration": str(order.validity),
        "price": format_price(price) if order_type in (OrderType.LIMIT, OrderType.SL) else "0",
        "triggerprice": format_price(trigger) if trigger is not None else None,
        "squareoff": "0",
        "stoploss": "0",
        "quantity": str(order.quantity),
        "ordertag": order_tag(order.client_order_id),
    }


def modify_body(
    row: dict[str, Any],
    *,
    quantity: int | None = None,
    price: Decimal | None = None,
    trigger_price: Decimal | None = None,
    order_type: OrderType | None = None,
) -> dict[str, Any]:
    """The modifyOrder body: the order book row's fields with the requested changes.
    The variety is the order book's, except ``AMO`` which modify refuses: sent as NORMAL
    (STOPLOSS for a stop order)."""
    current_type = OrderType(ORDER_TYPE_FROM_ANGEL.get(str(row.get("ordertype")), "LIMIT"))
    new_type = order_type or current_type
    new_price = price if price is not None else _optional_price(row.get("price"))
    new_trigger = (
        trigger_price if trigger_price is not None else _optional_price(row.get("triggerprice"))
    )
    if new_type in (OrderType.MARKET, OrderType.SL_M):
        new_price = None
    if new_type in (OrderType.MARKET, OrderType.LIMIT):
        new_trigger = None
    if new_type in (OrderType.LIMIT, OrderType.SL) and new_price is None:
        raise BrokerRejected(
            f"{new_type} orders need a price", ErrorCode.VALIDATION_ERROR, field="price"
        )
    if new_type in (OrderType.SL, OrderType.SL_M) and new_trigger is None:
        raise BrokerRejected(
            f"{new_type} orders need a trigger_price",
            ErrorCode.VALIDATION_ERROR,
            field="trigger_price",
        )
    variety = str(row.get("variety") or "").upper()
    if variety not in MODIFIABLE_VARIETIES:  # AMO (or missing): refused by modify
        variety = variety_for(new_type)
    return {
        "variety": variety,
        "orderid": str(row.get("orderid")),
        "ordertype": ORDER_TYPE_TO_ANGEL[new_type.value],
        "producttype": row.get("producttype"),
        "duration": row.get("duration") or "DAY",
        "price": format_price(new_price) if new_price is not None else "0",
        "triggerprice": format_price(new_trigger) if new_trigger is not None else None,
        "quantity": str(quantity if quantity is not None else to_int(row.get("quantity"))),
        "tradingsymbol": row.get("tradingsymbol"),
        "symboltoken": None if row.get("symboltoken") is None else str(row["symboltoken"]),
        "exchange": row.get("exchange"),
    }


def cancel_body(row: dict[str, Any]) -> dict[str, Any]:
    """cancelOrder refuses variety ``AMO`` (pitfall 8): sent as NORMAL."""
    variety = str(row.get("variety") or "").upper()
    if variety not in MODIFIABLE_VARIETIES:
        variety = "NORMAL"
    return {"variety": variety, "orderid": str(row.get("orderid"))}


def _optional_price(value: Any) -> Decimal | None:
    price = to_decimal(value)
    return price if price > 0 else None


def parse_order_time(value: Any) -> datetime | None:
    """``20-Oct-2020 13:10:59`` (IST) -> aware UTC; None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value).strip(), ORDER_TIME_FORMAT).replace(tzinfo=IST)
    except ValueError:
        return None


def order_status(row: dict[str, Any]) -> OrderStatus:
    text = str(row.get("status") or row.get("orderstatus") or "").strip().lower()
    status = ORDER_STATUS_MAP.get(text, OrderStatus.SUBMITTED)
    filled = to_int(row.get("filledshares"))
    quantity = to_int(row.get("quantity"))
    if status is OrderStatus.OPEN and 0 < filled < quantity:
        return OrderStatus.PARTIALLY_FILLED
    return status


def order_state_from_row(
    row: dict[str, Any],
    symbol_for: SymbolFor = _default_symbol_for,
    now: datetime | None = None,
) -> BrokerOrderState:
    """An order book / details / order-update row as a ``BrokerOrderState``."""
    status = order_status(row)
    exchange = str(row.get("exchange") or "").upper()
    text = str(row.get("text") or "").strip()
    error_code = None
    if status is OrderStatus.REJECTED:
        error_code = (
            ErrorCode.INSUFFICIENT_FUNDS.value
            if INSUFFICIENT_FUNDS_HINT in text.lower()
            else ErrorCode.INVALID_ORDER.value
        )
    token = row.get("symboltoken")
    updated = (
        parse_order_time(row.get("updatetime"))
        or parse_order_time(row.get("exchorderupdatetime"))
        or now
        or datetime.now(UTC)
    )
    return BrokerOrderState(
        broker_order_id=str(row.get("orderid") or ""),
        status=status,
        symbol=symbol_for(exchange, str(row.get("tradingsymbol") or ""), _token(token)),
        exchange=exchange,
        side=str(row.get("transactiontype") or "").upper(),
        order_type=OrderType(ORDER_TYPE_FROM_ANGEL.get(str(row.get("ordertype")), "LIMIT")),
        product_type=_product(row.get("producttype")).value,
        quantity=to_int(row.get("quantity")),
        filled_quantity=to_int(row.get("filledshares")),
        average_price=to_decimal(row.get("averageprice")),
        price=_optional_price(row.get("price")),
        trigger_price=_optional_price(row.get("triggerprice")),
        client_order_id=client_id_from_tag(row.get("ordertag")),
        message=text or None,
        error_code=error_code,
        updated_at=updated.astimezone(UTC),
    )


def _token(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _product(value: Any) -> ProductType:
    return _PRODUCT_FROM_ANGEL.get(str(value or "").upper(), ProductType.INTRADAY)


# -- trades, positions, funds ------------------------------------------------------------
def fill_from_trade(
    row: dict[str, Any],
    today: date,
    symbol_for: SymbolFor = _default_symbol_for,
    client_ids: dict[str, str] | None = None,
) -> Fill:
    """A trade book row as a ``Fill``. ``filltime`` is a time of day (IST) of ``today``
    (the trade book holds the current day only). ``trade_id`` is ``<orderid>-<fillid>``:
    stable across reads and unique across days (exchange fill ids restart)."""
    order_id = str(row.get("orderid") or "")
    fill_id = str(row.get("fillid") or "")
    exchange = str(row.get("exchange") or "").upper()
    stamp = _fill_time(row.get("filltime"), today)
    return Fill(
        trade_id=f"{order_id}-{fill_id}",
        broker_order_id=order_id,
        symbol=symbol_for(
            exchange, str(row.get("tradingsymbol") or ""), _token(row.get("symboltoken"))
        ),
        exchange=Exchange(exchange),
        side=OrderSide(str(row.get("transactiontype") or "").upper()),
        product_type=_product(row.get("producttype")),
        quantity=to_int(row.get("fillsize")),
        price=to_decimal(row.get("fillprice")),
        timestamp=stamp,
        client_order_id=(client_ids or {}).get(order_id),
    )


def _fill_time(value: Any, today: date) -> datetime:
    text = str(value or "").strip()
    for fmt in ("%H:%M:%S", ORDER_TIME_FORMAT):
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if fmt == "%H:%M:%S":
            parsed = datetime.combine(today, parsed.time())
        return parsed.replace(tzinfo=IST).astimezone(UTC)
    return datetime.combine(today, time(0, 0), IST).astimezone(UTC)


def position_from_row(
    row: dict[str, Any], symbol_for: SymbolFor = _default_symbol_for
) -> dict[str, Any]:
    """A getPosition row as our position dict (the shape ``Broker.get_positions`` documents)."""
    exchange = str(row.get("exchange") or "").upper()
    quantity = to_int(row.get("netqty"))
    if quantity > 0:
        average = to_decimal(row.get("buyavgprice")) or to_decimal(row.get("avgnetprice"))
    elif quantity < 0:
        average = to_decimal(row.get("sellavgprice")) or to_decimal(row.get("avgnetprice"))
    else:
        average = to_decimal(row.get("avgnetprice"))
    realised = to_decimal(row.get("realised"))
    unrealised = to_decimal(row.get("unrealised"))
    pnl = to_decimal(row.get("pnl"), realised + unrealised)
    return {
        "symbol": symbol_for(
            exchange, str(row.get("tradingsymbol") or ""), _token(row.get("symboltoken"))
        ),
        "exchange": exchange,
        "product_type": _product(row.get("producttype")).value,
        "quantity": quantity,
        "average_price": average,
        "last_price": to_decimal(row.get("ltp")),
        "pnl": pnl,
        "realised_pnl": realised,
        "unrealised_pnl": unrealised,
        "buy_quantity": to_int(row.get("buyqty")),
        "sell_quantity": to_int(row.get("sellqty")),
        "buy_value": to_decimal(row.get("buyamount")),
        "sell_value": to_decimal(row.get("sellamount")),
        "tradingsymbol": row.get("tradingsymbol"),
        "symboltoken": _token(row.get("symboltoken")),
        "net_value": to_decimal(row.get("netvalue")),
        "carry_forward_buy_quantity": to_int(row.get("cfbuyqty")),
        "carry_forward_sell_quantity": to_int(row.get("cfsellqty")),
    }


def balance_from_rms(data: dict[str, Any] | None) -> dict[str, Any]:
    """getRMS as our balance dict. ``net`` is Angel's margin still available for new
    orders (our ``available_cash``/``buying_power``); ``utiliseddebits`` what is blocked;
    ``availablecash`` the cash ledger."""
    rms = data or {}
    cash = to_decimal(rms.get("availablecash"))
    net = to_decimal(rms.get("net"), cash)
    used = to_decimal(rms.get("utiliseddebits"))
    realised = to_decimal(rms.get("m2mrealized"))
    unrealised = to_decimal(rms.get("m2munrealized"))
    return {
        "available_cash": net,
        "buying_power": to_decimal(rms.get("availablelimitmargin"), net) or net,
        "used_margin": used,
        "total_balance": cash + unrealised,
        "realised_pnl": realised,
        "unrealised_pnl": unrealised,
        "charges": ZERO,
        "currency": "INR",
        "cash": cash,
        "collateral": to_decimal(rms.get("collateral")),
        "intraday_payin": to_decimal(rms.get("availableintradaypayin")),
    }


def holding_from_row(
    row: dict[str, Any], symbol_for: SymbolFor = _default_symbol_for
) -> dict[str, Any]:
    exchange = str(row.get("exchange") or "").upper()
    return {
        "symbol": symbol_for(
            exchange, str(row.get("tradingsymbol") or ""), _token(row.get("symboltoken"))
        ),
        "exchange": exchange,
        "isin": row.get("isin"),
        "quantity": to_int(row.get("quantity")),
        "t1_quantity": to_int(row.get("t1quantity")),
        "average_price": to_decimal(row.get("averageprice")),
        "last_price": to_decimal(row.get("ltp")),
        "close": to_decimal(row.get("close")),
        "pnl": to_decimal(row.get("profitandloss")),
        "pnl_percent": to_decimal(row.get("pnlpercentage")),
        "product_type": str(row.get("product") or "DELIVERY"),
    }


# -- market data ---------------------------------------------------------------------------
def quote_to_market_data(
    item: dict[str, Any], symbol: str, now: datetime | None = None
) -> dict[str, Any]:
    """A ``market/v1/quote`` FULL item as our market-data dict (``Broker.get_market_data``)."""
    depth = item.get("depth") if isinstance(item.get("depth"), dict) else {}
    buys = as_list(depth.get("buy")) if depth else []
    sells = as_list(depth.get("sell")) if depth else []
    stamp = parse_order_time(item.get("exchFeedTime")) or now or datetime.now(UTC)
    ltp = to_decimal(item.get("ltp"))
    close = to_decimal(item.get("close"))
    change = to_decimal(item.get("netChange"), ltp - close if close else ZERO)
    return {
        "symbol": symbol,
        "exchange": str(item.get("exchange") or "").upper(),
        "ltp": ltp,
        "change": change,
        "change_percent": to_decimal(item.get("percentChange")),
        "open": to_decimal(item.get("open")),
        "high": to_decimal(item.get("high")),
        "low": to_decimal(item.get("low")),
        "close": close,
        "volume": to_int(item.get("tradeVolume")),
        "bid": to_decimal(buys[0].get("price")) if buys else None,
        "ask": to_decimal(sells[0].get("price")) if sells else None,
        "timestamp": stamp.astimezone(UTC).isoformat(),
        "token": str(item.get("symbolToken") or ""),
        "tradingsymbol": item.get("tradingSymbol"),
    }


def bar_from_candle(
    row: list[Any], symbol: str, exchange: Exchange, timeframe: Timeframe
) -> Bar | None:
    """``[timestamp, o, h, l, c, v]`` as a ``Bar`` aligned to our windows, or None for a
    row outside the exchange's sessions."""
    from trading_backend.marketdata.bars import bar_window

    if not isinstance(row, list | tuple) or len(row) < 6:
        return None
    try:
        stamp = datetime.fromisoformat(str(row[0]))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=IST)
    probe = stamp
    if timeframe is Timeframe.D1:  # daily candles are stamped 00:00 IST
        probe = datetime.combine(stamp.astimezone(IST).date(), time(12, 0), IST)
    window = bar_window(exchange, timeframe, probe.astimezone(UTC))
    if window is None:
        start = stamp.astimezone(UTC)
        window = (start, start + timeframe.duration)
    return Bar(
        symbol=symbol,
        exchange=exchange,
        timeframe=timeframe,
        start=window[0],
        end=window[1],
        open=to_decimal(row[1]),
        high=to_decimal(row[2]),
        low=to_decimal(row[3]),
        close=to_decimal(row[4]),
        volume=to_int(row[5]),
    )


def candle_chunks(start: datetime, end: datetime, max_days: int) -> list[tuple[datetime, datetime]]:
    """Split ``[start, end)`` into spans of at most ``max_days`` days."""
    spans: list[tuple[datetime, datetime]] = []
    step = timedelta(days=max_days)
    cursor = start
    while cursor < end:
        stop = min(cursor + step, end)
        spans.append((cursor, stop))
        cursor = stop
    return spans
