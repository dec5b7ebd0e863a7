"""The pure fill model: triggers, prices, slippage, participation, IOC, lots."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_backend.brokers.paper.fill_model import (
    FillModel,
    FillRequest,
    ceil_to_tick,
    floor_to_tick,
)
from trading_backend.domain import OrderSide, OrderType, Validity

D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL


@dataclass(frozen=True)
class Q:
    ltp: Decimal
    bid: Decimal
    ask: Decimal
    tick_volume: int = 1000


def quote(ltp: str, volume: int = 1000) -> Q:
    price = D(ltp)
    return Q(price, price - D("0.05"), price + D("0.05"), volume)


def req(side: OrderSide, kind: OrderType, qty: int = 10, **kw: object) -> FillRequest:
    return FillRequest(side=side, order_type=kind, remaining_quantity=qty, **kw)  # type: ignore[arg-type]


def test_market_fills_at_the_touch() -> None:
    model = FillModel()
    buy = model.evaluate(req(BUY, OrderType.MARKET), quote("100"))
    sell = model.evaluate(req(SELL, OrderType.MARKET), quote("100"))
    assert (buy.quantity, buy.price) == (10, D("100.05"))
    assert (sell.quantity, sell.price) == (10, D("99.95"))


def test_market_slippage_is_adverse_and_on_tick() -> None:
    model = FillModel(slippage_bps=D("10"))
    # 100.05 * 1.001 = 100.15005 -> up to 100.20 ; 99.95 * 0.999 = 99.85005 -> down to 99.85
    assert model.evaluate(req(BUY, OrderType.MARKET), quote("100")).price == D("100.20")
    assert model.evaluate(req(SELL, OrderType.MARKET), quote("100")).price == D("99.85")


def test_limit_buy_and_sell() -> None:
    model = FillModel(slippage_bps=D("50"))  # limits ignore slippage
    assert not model.evaluate(req(BUY, OrderType.LIMIT, limit_price=D("100")), quote("100")).fills
    hit = model.evaluate(req(BUY, OrderType.LIMIT, limit_price=D("100")), quote("99.95"))
    assert hit.price == D("100.00")
    better = model.evaluate(req(BUY, OrderType.LIMIT, limit_price=D("101")), quote("99"))
    assert better.price == D("99.05")  # min(limit, ask)
    assert not model.evaluate(req(SELL, OrderType.LIMIT, limit_price=D("100")), quote("100")).fills
    assert model.evaluate(
        req(SELL, OrderType.LIMIT, limit_price=D("100")), quote("100.05")
    ).price == D("100.00")
    assert model.evaluate(req(SELL, OrderType.LIMIT, limit_price=D("99")), quote("101")).price == D(
        "100.95"
    )  # max(limit, bid)


def test_stop_limit_triggers_then_acts_as_limit() -> None:
    model = FillModel()
    stop = req(BUY, OrderType.SL, limit_price=D("105"), trigger_price=D("104"))
    waiting = model.evaluate(stop, quote("103.95"))
    assert not waiting.triggered and not waiting.fills
    fired = model.evaluate(stop, quote("104"))
    assert fired.triggered and fired.price == D("104.05")
    # Triggered on a gap beyond the limit: waits as a limit order.
    gapped = model.evaluate(stop, quote("106"))
    assert gapped.triggered and not gapped.fills
    later = req(BUY, OrderType.SL, limit_price=D("105"), trigger_price=D("104"), triggered=True)
    assert model.evaluate(later, quote("103")).price == D("103.05")  # no longer needs the trigger
    sell_stop = req(SELL, OrderType.SL, limit_price=D("95"), trigger_price=D("96"))
    assert not model.evaluate(sell_stop, quote("96.05")).triggered
    assert model.evaluate(sell_stop, quote("96")).price == D("95.95")


def test_stop_market_triggers_then_acts_as_market() -> None:
    model = FillModel(slippage_bps=D("10"))
    stop = req(SELL, OrderType.SL_M, trigger_price=D("96"))
    assert not model.evaluate(stop, quote("96.05")).fills
    fired = model.evaluate(stop, quote("90"))
    assert fired.triggered and fired.price == floor_to_tick(D("89.95") * D("0.999"), D("0.05"))


def test_participation_caps_fills_and_ioc_cancels_the_rest() -> None:
    model = FillModel(participation=D("0.1"))
    partial = model.evaluate(req(BUY, OrderType.MARKET, qty=500), quote("100", volume=1000))
    assert partial.quantity == 100 and not partial.cancel_remaining
    ioc = model.evaluate(
        req(BUY, OrderType.MARKET, qty=500, validity=Validity.IOC), quote("100", volume=1000)
    )
    assert ioc.quantity == 100 and ioc.cancel_remaining
    missed = model.evaluate(
        req(BUY, OrderType.LIMIT, limit_price=D("90"), validity=Validity.IOC), quote("100")
    )
    assert not missed.fills and missed.cancel_remaining
    assert model.evaluate(req(BUY, OrderType.MARKET, qty=5), quote("100", volume=3)).quantity == 1
    assert not model.evaluate(req(BUY, OrderType.MARKET), quote("100", volume=0)).fills


def test_derivative_partial_fills_are_whole_lots() -> None:
    model = FillModel(participation=D("0.25"))
    lots = req(BUY, OrderType.MARKET, qty=750, lot_size=75)
    assert model.evaluate(lots, quote("26000", volume=1000)).quantity == 225  # 250 -> 3 lots
    assert model.evaluate(lots, quote("26000", volume=10)).quantity == 75  # at least a lot
    assert model.evaluate(lots, quote("26000", volume=100000)).quantity == 750


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        FillModel(participation=D("0"))
    with pytest.raises(ValueError):
        FillModel(slippage_bps=D("-1"))
    with pytest.raises(ValueError):
        FillModel().evaluate(req(BUY, OrderType.LIMIT), quote("100"))


def test_tick_rounding_helpers() -> None:
    assert ceil_to_tick(D("100.01"), D("0.05")) == D("100.05")
    assert floor_to_tick(D("100.04"), D("0.05")) == D("100.00")
    assert ceil_to_tick(D("100.05"), D("0.05")) == D("100.05")


@given(
    side=st.sampled_from([BUY, SELL]),
    kind=st.sampled_from(list(OrderType)),
    qty_lots=st.integers(1, 50),
    lot=st.sampled_from([1, 35, 75]),
    ltp_ticks=st.integers(20, 100000),
    offset=st.integers(-40, 40),
    volume=st.integers(0, 100000),
    participation=st.decimals(D("0.01"), D("1"), places=2),
    slippage=st.integers(0, 100),
)
def test_fill_decisions_are_always_sane(
    side: OrderSide,
    kind: OrderType,
    qty_lots: int,
    lot: int,
    ltp_ticks: int,
    offset: int,
    volume: int,
    participation: Decimal,
    slippage: int,
) -> None:
    tick = D("0.05")
    ltp = ltp_ticks * tick
    level = max(ltp + offset * tick, tick)
    model = FillModel(slippage_bps=D(slippage), participation=participation)
    request = FillRequest(
        side=side,
        order_type=kind,
        remaining_quantity=qty_lots * lot,
        limit_price=level if kind in (OrderType.LIMIT, OrderType.SL) else None,
        trigger_price=level if kind in (OrderType.SL, OrderType.SL_M) else None,
        lot_size=lot,
        tick_size=tick,
    )
    q = Q(ltp, ltp - tick, ltp + tick, volume)
    decision = model.evaluate(request, q)
    assert 0 <= decision.quantity <= request.remaining_quantity
    assert decision.quantity % lot == 0
    if decision.fills:
        assert decision.price is not None and decision.price % tick == 0
        if request.limit_price is not None:
            if side is BUY:
                assert decision.price <= request.limit_price
            else:
                assert decision.price >= request.limit_price
        if side is BUY:
            assert decision.price >= q.ask
        else:
            assert decision.price <= q.bid
