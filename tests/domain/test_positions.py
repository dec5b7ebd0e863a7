"""Average-cost positions: the position is the sum of its fills."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from trading_backend.domain import Exchange, Fill, OrderSide, Position, ProductType


def fill(side: OrderSide, qty: int, price: str, n: int = 0, charges: str = "0") -> Fill:
    return Fill(
        trade_id=f"t{n}",
        broker_order_id="b",
        symbol="TCS",
        exchange=Exchange.NSE,
        side=side,
        product_type=ProductType.INTRADAY,
        quantity=qty,
        price=Decimal(price),
        charges=Decimal(charges),
    )


def test_round_trip_realises_pnl() -> None:
    pos = Position("TCS", Exchange.NSE, ProductType.INTRADAY)
    pos.apply(fill(OrderSide.BUY, 10, "100"))
    pos.apply(fill(OrderSide.BUY, 10, "110"))
    assert pos.average_price == Decimal("105")
    pos.apply(fill(OrderSide.SELL, 5, "120", charges="2.5"))
    assert pos.realised_pnl == Decimal("75")
    assert pos.quantity == 15
    assert pos.unrealised_pnl(Decimal("100")) == Decimal("-75")
    assert pos.total_pnl(Decimal("105")) == Decimal("72.5")


def test_flip_through_zero_opens_at_fill_price() -> None:
    pos = Position("TCS", Exchange.NSE, ProductType.INTRADAY)
    pos.apply(fill(OrderSide.BUY, 10, "100"))
    pos.apply(fill(OrderSide.SELL, 15, "90"))
    assert pos.quantity == -5
    assert pos.realised_pnl == Decimal("-100")
    assert pos.average_price == Decimal("90")


trades = st.lists(
    st.tuples(
        st.sampled_from([OrderSide.BUY, OrderSide.SELL]),
        st.integers(min_value=1, max_value=50),
        st.integers(min_value=1, max_value=100_000),
    ),
    min_size=1,
    max_size=40,
)


@given(trades, st.integers(min_value=1, max_value=100_000))
def test_position_is_the_sum_of_its_fills(seq: list[tuple[OrderSide, int, int]], mark: int) -> None:
    """Quantity equals the signed sum of fills, and realised + unrealised P&L equals the
    cash flow of all fills marked at the last price (nothing lost or double-counted)."""
    pos = Position("TCS", Exchange.NSE, ProductType.INTRADAY)
    cash = Decimal(0)
    for i, (side, qty, paise) in enumerate(seq):
        price = Decimal(paise) / 100
        pos.apply(fill(side, qty, str(price), i))
        cash -= side.sign * qty * price
    last = Decimal(mark) / 100
    assert pos.quantity == sum(side.sign * qty for side, qty, _ in seq)
    equity = cash + pos.quantity * last
    assert abs((pos.realised_pnl + pos.unrealised_pnl(last)) - equity) < Decimal("1e-12")
