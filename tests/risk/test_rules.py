"""One test per rule: accepted at the limit, rejected just beyond it, and the rejection
names the rule, the limit and the order's value."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.risk.helpers import (
    NOW,
    OFF,
    Ids,
    entity,
    make_engine,
    order,
    submitted,
)
from trading_backend.domain import BrokerOrder, ErrorCode, OrderStatus
from trading_backend.risk import (
    DEFAULT_RULES,
    InsufficientFunds,
    RiskEngine,
    RiskLimits,
    RiskRejected,
    TradingState,
)


def limits(**changes: Any) -> RiskLimits:
    return dataclasses.replace(OFF, **changes)


def rejected(
    engine: RiskEngine,
    request: BrokerOrder,
    *,
    now: datetime = NOW,
    user: str = "u1",
    config: str = "c1",
    order_id: str = "rejected",
    **kw: Any,
) -> RiskRejected:
    with pytest.raises(RiskRejected) as caught:
        engine.check_and_reserve(user, config, order_id, request, now=now, **kw)
    assert engine.open_order(order_id) is None  # nothing reserved
    return caught.value


class Placer:
    """Accepts orders with fresh ids."""

    def __init__(self, engine: RiskEngine, user: str = "u1", config: str = "c1") -> None:
        self.engine, self.user, self.config, self.ids = engine, user, config, Ids()

    def __call__(self, request: BrokerOrder, *, now: datetime = NOW, **kw: Any) -> str:
        order_id = f"{self.config}-{self.ids()}"
        self.engine.check_and_reserve(self.user, self.config, order_id, request, now=now, **kw)
        return order_id


def assert_details(
    error: RiskRejected,
    rule: str,
    limit: object,
    value: object,
    code: ErrorCode = ErrorCode.RISK_REJECTED,
) -> None:
    assert error.code is code
    assert error.details["rule"] == rule
    assert error.details["limit"] == limit
    assert error.details["value"] == value


def test_rules_run_cheap_structural_ones_first() -> None:
    names = [rule.name for rule in DEFAULT_RULES]
    assert names[:5] == [
        "instrument_exists_and_tradable",
        "lot_size_multiple",
        "tick_size",
        "freeze_quantity",
        "max_order_quantity",
    ]
    assert names[-3:] == ["max_open_positions", "symbol_exposure", "gross_exposure"]
    # Funds right after the price checks: "not enough money" beats "over a limit".
    assert names.index("funds") == names.index("price_band") + 1
    assert len(set(names)) == len(names) == 17


def test_instrument_exists_and_tradable() -> None:
    engine = make_engine(OFF)
    Placer(engine)(order("BUY", 1, "3000"))
    error = rejected(engine, order("BUY", 1, "10", symbol="NOSUCH"))
    assert_details(
        error,
        "instrument_exists_and_tradable",
        "a known instrument",
        "NSE:NOSUCH",
        ErrorCode.INSTRUMENT_NOT_FOUND,
    )
    assert "unknown instrument NSE:NOSUCH" in error.message
    error = rejected(engine, order("BUY", 1, "26000", symbol="NIFTY"))
    assert_details(error, "instrument_exists_and_tradable", "a tradable instrument", "INDEX")
    assert "cannot be traded" in error.message
    error = rejected(engine, order("BUY", 65, "25000", symbol="NIFTY26OCTFUT", exchange="NFO"))
    assert_details(
        error, "instrument_exists_and_tradable", "expiry on or after 2026-11-25", "2026-10-27"
    )


def test_lot_size_multiple() -> None:
    engine = make_engine(OFF)
    place = Placer(engine)
    place(order("BUY", 65, "26100", symbol="NIFTY26DECFUT", exchange="NFO"))
    place(order("BUY", 130, "26100", symbol="NIFTY26DECFUT", exchange="NFO"))
    error = rejected(engine, order("BUY", 66, "26100", symbol="NIFTY26DECFUT", exchange="NFO"))
    assert_details(error, "lot_size_multiple", 65, 66)
    assert "not a multiple of the lot size 65" in error.message


def test_tick_size_for_price_and_trigger() -> None:
    engine = make_engine(OFF)
    place = Placer(engine)
    place(order("BUY", 1, "3000.05"))
    error = rejected(engine, order("BUY", 1, "3000.03"))
    assert_details(error, "tick_size", Decimal("0.05"), Decimal("3000.03"))
    assert "price 3000.03 is not a multiple of the tick size 0.05" in error.message
    place(order("BUY", 1, "3000.10", order_type="SL", trigger="3000.05"))
    error = rejected(engine, order("BUY", 1, "3000.10", order_type="SL", trigger="2999.99"))
    assert_details(error, "tick_size", Decimal("0.05"), Decimal("2999.99"))
    assert error.message.startswith("trigger_price 2999.99")


def test_freeze_quantity() -> None:
    engine = make_engine(OFF)
    fut = {"symbol": "BANKNIFTY26DECFUT", "exchange": "NFO"}
    Placer(engine)(order("BUY", 600, "58000", **fut))  # 20 lots: exactly the freeze
    error = rejected(engine, order("BUY", 630, "58000", **fut))
    assert_details(error, "freeze_quantity", 600, 630)
    assert "exceeds the exchange freeze quantity 600" in error.message


def test_max_order_quantity() -> None:
    engine = make_engine(limits(max_order_quantity=100))
    Placer(engine)(order("BUY", 100, "3000"))
    error = rejected(engine, order("BUY", 101, "3000"))
    assert_details(error, "max_order_quantity", 100, 101)
    assert "exceeds the maximum order quantity 100" in error.message


def test_session_open() -> None:
    engine = make_engine(OFF)
    place = Placer(engine)
    opening = datetime(2026, 11, 25, 3, 45, tzinfo=UTC)  # 09:15 IST
    place(order("BUY", 1, "3000"), now=opening)
    error = rejected(engine, order("BUY", 1, "3000"), now=opening - timedelta(seconds=1))
    assert_details(
        error, "session_open", "09:15-15:30 IST on trading days", "2026-11-25T09:14:59+05:30"
    )
    assert "NSE is closed at 2026-11-25 09:14 IST" in error.message
    holiday = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
    assert rejected(engine, order("BUY", 1, "3000"), now=holiday).details["rule"] == "session_open"
    saturday_night = datetime(2026, 11, 28, 20, 0, tzinfo=UTC)
    place(order("BUY", 1, "90000", symbol="BTCUSDT", exchange="CRYPTO"), now=saturday_night)


def test_trading_state() -> None:
    engine = make_engine(OFF)
    place = Placer(engine)
    place(order("BUY", 1, "3000"))
    engine.set_state("global", TradingState.HALTED, "kill switch")
    error = rejected(engine, order("BUY", 2, "3000"))
    assert_details(error, "trading_state", "HALTED", "opens risk")
    assert error.details["scope"] == "global"
    assert "trading is halted for global (kill switch)" in error.message
    engine.set_state("global", TradingState.ACTIVE)
    place(order("BUY", 2, "3000"))


def test_last_price() -> None:
    engine = make_engine(OFF, prices=False)
    place = Placer(engine)
    place(order("BUY", 1, "3000"))  # a LIMIT order carries its own price
    place(order("BUY", 1, order_type="SL_M", trigger="3000"))  # valued at its trigger
    error = rejected(engine, order("BUY", 1))
    assert_details(error, "last_price", "a last price", None)
    assert "no last price for NSE:TCS" in error.message
    engine.on_price("TCS", "NSE", Decimal("3000"), NOW)
    place(order("BUY", 1))


def test_price_band() -> None:
    engine = make_engine(limits(price_band_pct=Decimal("5")))  # TCS last 3000
    place = Placer(engine)
    place(order("BUY", 1, "3150"))
    place(order("SELL", 1, "2850"))
    place(order("BUY", 1, "3150", order_type="SL", trigger="3100"))
    error = rejected(engine, order("BUY", 1, "3150.05"))
    assert_details(error, "price_band", Decimal("5"), Decimal("5.00"))
    error = rejected(engine, order("SELL", 1, "2700"))
    assert_details(error, "price_band", Decimal("5"), Decimal("10.00"))
    assert "price 2700 is 10.00% from the last price 3000 of NSE:TCS" in error.message
    place(order("BUY", 1))  # MARKET orders have no price to band
    unpriced = make_engine(limits(price_band_pct=Decimal("5")), prices=False)
    error = rejected(unpriced, order("BUY", 1, "3000"))
    assert error.details["rule"] == "price_band"
    assert "no last price" in error.message


def test_max_order_value() -> None:
    engine = make_engine(limits(max_order_value=Decimal("300000")))
    place = Placer(engine)
    place(order("BUY", 100, "3000"))
    place(order("BUY", 100))  # MARKET: valued at the last price, 3000
    place(order("BUY", 100, order_type="SL_M", trigger="3000"))  # at its trigger
    error = rejected(engine, order("BUY", 100, "3000.05"))
    assert_details(error, "max_order_value", Decimal("300000"), Decimal("300005.00"))
    assert "order value 300005.00 exceeds the maximum order value 300000" in error.message


def test_duplicate() -> None:
    engine = make_engine(limits(duplicate_window_seconds=2.0))
    place = Placer(engine)
    first = place(order("BUY", 10, "3000"))
    error = rejected(engine, order("BUY", 10, "3000"), now=NOW + timedelta(seconds=1.5))
    assert_details(error, "duplicate", 2.0, 1.5)
    assert f"(order {first})" in error.message
    place(order("BUY", 10, "3000"), now=NOW + timedelta(seconds=1.5), intentional=True)
    place(order("BUY", 10, "3000.05"), now=NOW + timedelta(seconds=1.5))  # another price
    place(order("SELL", 10, "3000"), now=NOW + timedelta(seconds=1.5))  # another side
    place(order("BUY", 10, "3000", product="INTRADAY"), now=NOW + timedelta(seconds=3.5))
    # Another user may place the very same order.
    Placer(engine, "u2", "c2")(order("BUY", 10, "3000.05"), now=NOW + timedelta(seconds=1.6))


def test_order_rate_per_user_and_per_account() -> None:
    engine = make_engine(limits(order_rate_per_second=10))
    place = Placer(engine)
    for n in range(10):
        place(order("BUY", n + 1, "3000"), now=NOW + timedelta(milliseconds=50 * n))
    error = rejected(engine, order("BUY", 20, "3000"), now=NOW + timedelta(milliseconds=999))
    assert_details(error, "order_rate", 10, 11)
    assert error.details["scope"] == "user"
    # The window slides: a second after the first order there is room again.
    place(order("BUY", 21, "3000"), now=NOW + timedelta(seconds=1))
    # The user's other account shares the user's rate...
    other = Placer(engine, "u1", "c9")
    error = rejected(engine, order("BUY", 30, "3000"), config="c9", now=NOW + timedelta(seconds=1))
    assert error.details["rule"] == "order_rate"
    # ...and an account with its own, tighter limit is held to it as well.
    engine.set_limits("u1", "c9", limits(order_rate_per_second=2))
    later = NOW + timedelta(seconds=5)
    other(order("BUY", 1, "3000"), now=later)
    other(order("BUY", 2, "3000"), now=later)
    error = rejected(engine, order("BUY", 3, "3000"), config="c9", now=later)
    assert_details(error, "order_rate", 2, 3)
    assert error.details["scope"] == "account"


def test_max_open_orders() -> None:
    engine = make_engine(limits(max_open_orders=2))
    place = Placer(engine)
    first = place(order("BUY", 1, "3000"))
    place(order("BUY", 2, "3000"))
    error = rejected(engine, order("BUY", 3, "3000"))
    assert_details(error, "max_open_orders", 2, 3)
    assert "3 open orders would exceed the user's maximum of 2" in error.message
    cancelled = submitted(entity(first, "u1", "c1", order("BUY", 1, "3000")))
    cancelled.transition(OrderStatus.CANCELLED)
    engine.on_order(cancelled, now=NOW)
    place(order("BUY", 3, "3000"))


def test_max_open_positions_counts_only_new_instruments() -> None:
    engine = make_engine(limits(max_open_positions=2))
    place = Placer(engine)
    place(order("BUY", 1, "3000"))
    place(order("BUY", 1, "1500", symbol="INFY"))
    error = rejected(engine, order("BUY", 1, "900", symbol="SBIN"))
    assert_details(error, "max_open_positions", 2, 3)
    assert "a new position would make 3" in error.message
    place(order("BUY", 2, "3000"))  # TCS is already one of the two


def test_symbol_exposure_allows_reducing_orders() -> None:
    engine = make_engine(limits(max_symbol_exposure=Decimal("300000")))
    place = Placer(engine)
    buy = place(order("BUY", 100, "3000"))  # exactly the limit
    error = rejected(engine, order("BUY", 1, "3000"))
    assert_details(error, "symbol_exposure", Decimal("300000"), Decimal("303000"))
    assert "exposure in NSE:TCS would be 303000" in error.message
    filled = submitted(entity(buy, "u1", "c1", order("BUY", 100, "3000")))
    filled.apply_fill(100, Decimal("3000"))
    engine.on_order(filled, now=NOW)
    # The price rises: the position alone is now above the limit...
    engine.on_price("TCS", "NSE", Decimal("3300"), NOW)
    assert rejected(engine, order("BUY", 1)).details["rule"] == "symbol_exposure"
    # ...but selling (reducing) is always allowed, even all of it.
    place(order("SELL", 40))
    place(order("SELL", 60))
    # A sell that would flip the position raises the worst case and is refused.
    error = rejected(engine, order("SELL", 200))
    assert error.details["rule"] == "symbol_exposure"


def test_gross_exposure() -> None:
    engine = make_engine(limits(max_gross_exposure=Decimal("450000")))
    place = Placer(engine)
    place(order("BUY", 100, "3000"))
    place(order("BUY", 100, "1500", symbol="INFY"))  # 300000 + 150000: at the limit
    error = rejected(engine, order("BUY", 1, "1500", symbol="INFY"))
    assert_details(error, "gross_exposure", Decimal("450000"), Decimal("451500"))
    assert "gross exposure would be 451500" in error.message
    place(order("SELL", 50, "3000"))  # lowers nothing, raises nothing: allowed


def test_funds() -> None:
    engine = make_engine(OFF)
    place = Placer(engine)
    place(order("BUY", 1000, "3000"))  # not checked before funds are fed
    engine.set_funds("c1", Decimal("3090000"))
    place(order("BUY", 30, "3000"))  # 90000 of the 90000 left: at the limit
    with pytest.raises(InsufficientFunds) as caught:
        engine.check_and_reserve("u1", "c1", "x", order("BUY", 1, "2999.95"), now=NOW)
    error = caught.value
    assert isinstance(error, RiskRejected)
    assert error.code is ErrorCode.INSUFFICIENT_FUNDS
    assert error.details["rule"] == "funds"
    assert error.details["limit"] == Decimal("0")
    assert error.details["value"] == Decimal("3000")  # reserved at the last price
    assert "needs 3000 of margin; 0 is free" in error.message
    # A short sale opens a position: it needs margin as well.
    assert rejected(engine, order("SELL", 1, "3000")).code is ErrorCode.INSUFFICIENT_FUNDS


def test_funds_margin_by_product_and_reducing_orders_need_none() -> None:
    engine = make_engine(OFF)
    engine.set_funds("c1", Decimal("60000"))
    place = Placer(engine)
    bought = place(order("BUY", 100, "3000", product="INTRADAY"))  # 300000 at 20%
    error = rejected(engine, order("BUY", 1, "3000", product="MARGIN"))
    assert error.code is ErrorCode.INSUFFICIENT_FUNDS
    assert error.details["value"] == Decimal("600.0")
    filled = submitted(entity(bought, "u1", "c1", order("BUY", 100, "3000", product="INTRADAY")))
    filled.apply_fill(100, Decimal("3000"))
    engine.on_order(filled, now=NOW)
    place(order("SELL", 100, "3000", product="INTRADAY"))  # closing needs no margin


def test_a_rejection_is_the_first_violated_rule() -> None:
    engine = make_engine(limits(max_order_quantity=1, max_order_value=Decimal(1)))
    error = rejected(engine, order("BUY", 2, "3000.03"))
    assert error.details["rule"] == "tick_size"  # before max_order_quantity and value


def test_same_order_id_twice_is_a_conflict() -> None:
    engine = make_engine(OFF)
    engine.check_and_reserve("u1", "c1", "same", order("BUY", 1, "3000"), now=NOW)
    with pytest.raises(Exception) as caught:
        engine.check_and_reserve("u1", "c1", "same", order("BUY", 1, "3000"), now=NOW)
    assert getattr(caught.value, "code", None) is ErrorCode.CONFLICT
