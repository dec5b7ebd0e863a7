"""Order request validation and the order state machine."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_backend.domain import (
    BrokerOrder,
    IllegalTransition,
    InvalidOrder,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
)
from trading_backend.domain.orders import ALLOWED_TRANSITIONS


def make(**kw: object) -> BrokerOrder:
    base: dict[str, object] = {
        "symbol": "TCS",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "DELIVERY",
        "quantity": 1,
    }
    base.update(kw)
    return BrokerOrder(**base)  # type: ignore[arg-type]


def test_seed_style_order_with_float_price_becomes_exact_decimal() -> None:
    order = BrokerOrder(
        symbol="RELIANCE",
        exchange="NSE",
        side=OrderSide.BUY,
        order_type=OrderType.LIMIT,
        product_type=ProductType.INTRADAY,
        quantity=5,
        price=2500.1,
    )
    assert order.price == Decimal("2500.1")
    assert order.side is OrderSide.BUY


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": -3}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"order_type": "LIMIT"}, "price"),
        ({"order_type": "MARKET", "price": 10}, "price"),
        ({"order_type": "SL", "price": 10}, "trigger_price"),
        ({"order_type": "SL_M"}, "trigger_price"),
        ({"order_type": "LIMIT", "price": -1}, "price"),
        ({"order_type": "SL", "side": "BUY", "price": 100, "trigger_price": 101}, "trigger_price"),
        ({"order_type": "SL", "side": "SELL", "price": 100, "trigger_price": 99}, "trigger_price"),
        ({"side": "HOLD"}, "side"),
        ({"exchange": "NYSE"}, "exchange"),
        ({"symbol": " "}, "symbol"),
        ({"tag": "x" * 21}, "tag"),
    ],
)
def test_invalid_requests_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidOrder) as info:
        make(**kwargs)
    assert info.value.details["field"] == field


def test_sl_m_accepts_exchange_spelling() -> None:
    assert make(order_type="SL-M", trigger_price=100).order_type is OrderType.SL_M


def new_order(quantity: int = 10) -> Order:
    return Order.from_request("o1", "u1", "c1", make(quantity=quantity))


def test_fill_lifecycle_and_average_price() -> None:
    order = new_order(10)
    order.transition(OrderStatus.SUBMITTED)
    order.transition(OrderStatus.OPEN)
    order.apply_fill(4, Decimal("100"))
    assert order.status is OrderStatus.PARTIALLY_FILLED
    order.apply_fill(6, Decimal("110"))
    assert order.status is OrderStatus.FILLED
    assert order.average_price == Decimal("106")
    with pytest.raises(IllegalTransition):
        order.transition(OrderStatus.CANCELLED)


def test_overfill_is_refused() -> None:
    order = new_order(5)
    order.transition(OrderStatus.SUBMITTED)
    with pytest.raises(IllegalTransition):
        order.apply_fill(6, Decimal("1"))
    assert order.filled_quantity == 0


def test_modify_keeps_the_order_valid() -> None:
    order = Order.from_request("o1", "u1", "c1", make(order_type="LIMIT", price=100, quantity=10))
    order.transition(OrderStatus.SUBMITTED)
    order.transition(OrderStatus.OPEN)
    order.apply_fill(3, Decimal("100"))
    with pytest.raises(InvalidOrder):
        order.modify(quantity=3)  # not above what is filled
    order.modify(quantity=8, price=Decimal("101"))
    assert (order.quantity, order.price) == (8, Decimal("101"))
    order.modify(order_type=OrderType.MARKET)
    assert order.price is None


statuses = st.sampled_from(list(OrderStatus))


@given(st.lists(st.one_of(statuses, st.integers(min_value=1, max_value=30)), max_size=40))
def test_no_sequence_reaches_an_illegal_state(steps: list[object]) -> None:
    """Random transitions and fills: every accepted move is in the table, a final order never
    moves again, and the filled quantity never exceeds the quantity."""
    order = new_order(25)
    for step in steps:
        before = order.status
        if isinstance(step, OrderStatus):
            try:
                order.transition(step)
            except IllegalTransition:
                assert step not in ALLOWED_TRANSITIONS[before] or (
                    step is OrderStatus.FILLED and order.filled_quantity != order.quantity
                )
                assert order.status is before
                continue
            assert step in ALLOWED_TRANSITIONS[before]
        else:
            filled_before = order.filled_quantity
            try:
                order.apply_fill(int(step), Decimal("10"))
            except IllegalTransition:
                assert order.filled_quantity == filled_before
                assert order.status is before
                continue
            assert not before.is_final
        assert 0 <= order.filled_quantity <= order.quantity
        assert (order.status is OrderStatus.FILLED) == (
            order.filled_quantity == order.quantity and order.status is OrderStatus.FILLED
        )
        if before.is_final:
            raise AssertionError("a final order moved")
