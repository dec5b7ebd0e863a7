"""Pure translations between our types and SmartAPI shapes (no server)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from trading_backend.brokers.angel_one import mapping
from trading_backend.brokers.angel_one.resolver import ResolvedSymbol, SearchScripResolver
from trading_backend.brokers.base import BrokerRejected
from trading_backend.domain import (
    BrokerOrder,
    ErrorCode,
    Exchange,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Timeframe,
)
from trading_backend.execution.ids import new_order_id

SBIN = ResolvedSymbol("SBIN-EQ", "3045")


def test_tag_rule_round_trips_our_ids() -> None:
    order_id = new_order_id()
    assert len(order_id) == 20 and order_id.startswith("o")
    tag = mapping.order_tag(order_id)
    assert tag == order_id[1:] and len(tag) == 19
    assert mapping.client_id_from_tag(tag) == order_id
    assert mapping.order_tag("my-own-id") == "my-own-id"
    assert mapping.client_id_from_tag("my-own-id") == "my-own-id"
    assert mapping.order_tag(None) is None
    with pytest.raises(BrokerRejected) as info:
        mapping.order_tag("x" * 20)
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_place_body_limit_and_stop_orders() -> None:
    limit = BrokerOrder(
        "SBIN", "NSE", "BUY", "LIMIT", "INTRADAY", 5, price="812.5", client_order_id="o" + "a" * 19
    )
    body = mapping.place_order_body(limit, SBIN)
    assert body == {
        "variety": "NORMAL",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "transactiontype": "BUY",
        "exchange": "NSE",
        "ordertype": "LIMIT",
        "producttype": "INTRADAY",
        "duration": "DAY",
        "price": "812.5",
        "triggerprice": None,
        "squareoff": "0",
        "stoploss": "0",
        "quantity": "5",
        "ordertag": "a" * 19,
    }
    stop = BrokerOrder("SBIN", "NSE", "SELL", "SL_M", "DELIVERY", 1, trigger_price="790")
    body = mapping.place_order_body(stop, SBIN)
    assert (body["variety"], body["ordertype"], body["price"], body["triggerprice"]) == (
        "STOPLOSS",
        "STOPLOSS_MARKET",
        "0",
        "790",
    )
    assert body["ordertag"] is None


def test_lot_size_and_exchange_are_checked_before_sending() -> None:
    future = ResolvedSymbol("NIFTY26NOVFUT", "57000", lot_size=75)
    with pytest.raises(BrokerRejected) as info:
        mapping.place_order_body(
            BrokerOrder("NIFTY26NOVFUT", "NFO", "BUY", "MARKET", "CARRYFORWARD", 10), future
        )
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    with pytest.raises(BrokerRejected):
        mapping.place_order_body(BrokerOrder("BTC", "CRYPTO", "BUY", "MARKET", "DELIVERY", 1), SBIN)


def test_modify_and_cancel_never_send_amo() -> None:
    row = {
        "variety": "AMO",
        "orderid": "261130000000007",
        "ordertype": "LIMIT",
        "producttype": "DELIVERY",
        "duration": "DAY",
        "price": "800.00",
        "triggerprice": "0",
        "quantity": "3",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "exchange": "NSE",
    }
    body = mapping.modify_body(row, price=Decimal("801"))
    assert body["variety"] == "NORMAL"
    assert (body["price"], body["quantity"], body["ordertype"]) == ("801", "3", "LIMIT")
    assert mapping.cancel_body(row) == {"variety": "NORMAL", "orderid": "261130000000007"}
    assert mapping.cancel_body({**row, "variety": "STOPLOSS"})["variety"] == "STOPLOSS"


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "orderid": "261130000000001",
        "ordertag": "0123456789abcdefghi",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": "3045",
        "exchange": "NSE",
        "transactiontype": "BUY",
        "ordertype": "LIMIT",
        "producttype": "INTRADAY",
        "price": "800.00",
        "triggerprice": "0",
        "quantity": "10",
        "filledshares": "0",
        "averageprice": "0",
        "status": "open",
        "text": "",
        "updatetime": "30-Nov-2026 10:15:00",
    }
    row.update(kw)
    return row


def test_order_row_statuses() -> None:
    state = mapping.order_state_from_row(_row())
    assert state.status is OrderStatus.OPEN
    assert state.symbol == "SBIN" and state.client_order_id == "o0123456789abcdefghi"
    assert state.price == Decimal("800.00") and state.trigger_price is None
    assert state.updated_at == datetime(2026, 11, 30, 4, 45, tzinfo=UTC)
    partial = mapping.order_state_from_row(_row(filledshares="4", averageprice="799.5"))
    assert partial.status is OrderStatus.PARTIALLY_FILLED
    assert (partial.filled_quantity, partial.average_price) == (4, Decimal("799.5"))
    assert (
        mapping.order_state_from_row(_row(status="complete", filledshares="10")).status
        is OrderStatus.FILLED
    )
    assert mapping.order_state_from_row(_row(status="trigger pending")).status is OrderStatus.OPEN
    assert mapping.order_state_from_row(_row(status="open pending")).status is OrderStatus.SUBMITTED
    cancelled = mapping.order_state_from_row(_row(status="cancelled"))
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.error_code is None


def test_rejection_text_with_insufficient_funds() -> None:
    text = "Your order has been rejected due to Insufficient Funds. Available funds - Rs. 10"
    state = mapping.order_state_from_row(_row(status="rejected", text=text))
    assert state.status is OrderStatus.REJECTED
    assert state.error_code == ErrorCode.INSUFFICIENT_FUNDS.value
    assert state.message == text
    other = mapping.order_state_from_row(_row(status="rejected", text="price out of band"))
    assert other.error_code == ErrorCode.INVALID_ORDER.value


def test_trade_row_to_fill() -> None:
    fill = mapping.fill_from_trade(
        {
            "orderid": "261130000000001",
            "fillid": "50000001",
            "exchange": "NSE",
            "tradingsymbol": "SBIN-EQ",
            "transactiontype": "SELL",
            "producttype": "DELIVERY",
            "fillprice": "812.45",
            "fillsize": "7",
            "filltime": "13:27:53",
        },
        date(2026, 11, 30),
        client_ids={"261130000000001": "oabc"},
    )
    assert fill.trade_id == "261130000000001-50000001"
    assert (fill.symbol, fill.exchange, fill.side, fill.product_type) == (
        "SBIN",
        Exchange.NSE,
        OrderSide.SELL,
        ProductType.DELIVERY,
    )
    assert (fill.quantity, fill.price) == (7, Decimal("812.45"))
    assert fill.timestamp == datetime(2026, 11, 30, 7, 57, 53, tzinfo=UTC)
    assert fill.client_order_id == "oabc"


def test_position_and_rms_numbers_as_strings() -> None:
    position = mapping.position_from_row(
        {
            "exchange": "NSE",
            "tradingsymbol": "SBIN-EQ",
            "producttype": "INTRADAY",
            "netqty": "-5",
            "sellavgprice": "812.00",
            "buyavgprice": "0",
            "ltp": "810",
            "netvalue": "- 2235.80",
            "realised": "1.50",
            "unrealised": "10.00",
            "pnl": "11.50",
        }
    )
    assert position["quantity"] == -5 and position["average_price"] == Decimal("812.00")
    assert position["net_value"] == Decimal("-2235.80")
    assert (position["realised_pnl"], position["unrealised_pnl"], position["pnl"]) == (
        Decimal("1.50"),
        Decimal("10.00"),
        Decimal("11.50"),
    )
    balance = mapping.balance_from_rms(
        {
            "net": "9000.00",
            "availablecash": "10000.00",
            "utiliseddebits": "1000.00",
            "m2munrealized": None,
        }
    )
    assert balance["available_cash"] == Decimal("9000.00")
    assert balance["used_margin"] == Decimal("1000.00")
    assert balance["cash"] == Decimal("10000.00")


def test_candle_rows_align_to_our_windows() -> None:
    bar = mapping.bar_from_candle(
        ["2026-11-25T09:15:00+05:30", 800, 805.5, 799, 804, 1200],
        "SBIN",
        Exchange.NSE,
        Timeframe.H1,
    )
    assert bar is not None
    assert bar.start == datetime(2026, 11, 25, 3, 45, tzinfo=UTC)
    assert bar.end == datetime(2026, 11, 25, 4, 45, tzinfo=UTC)
    assert (bar.open, bar.high, bar.close, bar.volume) == (
        Decimal(800),
        Decimal("805.5"),
        Decimal(804),
        1200,
    )
    daily = mapping.bar_from_candle(
        ["2026-11-25T00:00:00+05:30", 800, 805, 799, 804, 0], "SBIN", Exchange.NSE, Timeframe.D1
    )
    assert daily is not None and daily.start == datetime(2026, 11, 25, 3, 45, tzinfo=UTC)
    spans = mapping.candle_chunks(
        datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), 30
    )
    assert len(spans) == 2 and spans[0][1] == spans[1][0]


async def test_search_resolver_maps_equities_to_eq_series_and_caches() -> None:
    calls: list[tuple[str, str]] = []

    async def search(exchange: str, query: str) -> list[dict[str, object]]:
        calls.append((exchange, query))
        return [
            {"exchange": "NSE", "tradingsymbol": "SBIN-BE", "symboltoken": "4884"},
            {"exchange": "NSE", "tradingsymbol": "SBIN-EQ", "symboltoken": "3045"},
        ]

    resolver = SearchScripResolver(search)
    assert await resolver.resolve("NSE", "sbin") == ResolvedSymbol("SBIN-EQ", "3045")
    assert await resolver.resolve("NSE", "SBIN") == ResolvedSymbol("SBIN-EQ", "3045")
    assert calls == [("NSE", "SBIN")]
    assert resolver.symbol_for("NSE", "SBIN-EQ", "3045") == "SBIN"
    assert await resolver.resolve("NSE", "NOPE") is None


def test_order_type_round_trip() -> None:
    for ours in OrderType:
        row = _row(ordertype=mapping.ORDER_TYPE_TO_ANGEL[ours.value])
        assert mapping.order_state_from_row(row).order_type is ours
