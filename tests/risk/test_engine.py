"""The engine's books: reservations, release, the order lifecycle, trading states, loss
limits, start-up loading and usage."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.risk.helpers import NOW, OFF, entity, make_engine, order, submitted
from trading_backend.domain import (
    BrokerOrder,
    DomainError,
    ErrorCode,
    Order,
    OrderStatus,
)
from trading_backend.risk import (
    InsufficientFunds,
    RiskEngine,
    RiskLimits,
    RiskRejected,
    Scope,
    TradingState,
)


def limits(**changes: Any) -> RiskLimits:
    return dataclasses.replace(OFF, **changes)


def place(
    engine: RiskEngine,
    order_id: str,
    request: BrokerOrder,
    *,
    user: str = "u1",
    config: str = "c1",
    now: datetime = NOW,
    **kw: Any,
) -> Order:
    engine.check_and_reserve(user, config, order_id, request, now=now, **kw)
    return submitted(entity(order_id, user, config, request))


def book(engine: RiskEngine, key: str = "NSE:TCS", config: str = "c1") -> dict[str, Any]:
    symbols: dict[str, dict[str, Any]] = engine.usage("u1", config, now=NOW)["symbols"]
    return symbols.get(key, {})


def snapshot(engine: RiskEngine, config: str = "c1") -> dict[str, Any]:
    usage = engine.usage("u1", config, now=NOW)
    return {k: usage[k] for k in ("account", "user", "funds", "symbols", "pnl")}


def fill(engine: RiskEngine, o: Order, quantity: int, price: str, **kw: Any) -> list[Any]:
    o.apply_fill(quantity, Decimal(price))
    kw.setdefault("now", NOW)
    return engine.on_order(o, **kw)


# -- reservations ----------------------------------------------------------------------


def test_a_rejection_reserves_nothing() -> None:
    engine = make_engine(limits(order_rate_per_second=2, duplicate_window_seconds=2.0))
    engine.set_funds("c1", Decimal("50000"))
    place(engine, "a", order("BUY", 10, "3000"))
    before = snapshot(engine)
    # Passes every rule up to funds (the last one), then fails.
    with pytest.raises(InsufficientFunds):
        engine.check_and_reserve("u1", "c1", "b", order("BUY", 10, "2999"), now=NOW)
    assert snapshot(engine) == before
    assert engine.open_order("b") is None
    # Neither the rate slot nor the duplicate fingerprint was taken: the second slot of
    # the second is still free, and the same order is not a duplicate of the rejected one.
    engine.set_funds("c1", Decimal("100000"))
    place(engine, "b", order("BUY", 10, "2999"))


def test_release_undoes_everything() -> None:
    engine = make_engine(limits(order_rate_per_second=1, duplicate_window_seconds=2.0))
    engine.set_funds("c1", Decimal("100000"))
    empty = snapshot(engine)
    place(engine, "a", order("BUY", 10, "3000"))
    assert snapshot(engine) != empty
    assert engine.release("a") is True
    assert snapshot(engine) == empty
    assert engine.release("a") is False  # idempotent
    # The rate slot and the duplicate fingerprint were returned too.
    place(engine, "b", order("BUY", 10, "3000"))


def test_fills_move_quantity_from_the_reservation_to_the_position() -> None:
    engine = make_engine(OFF)
    engine.set_funds("c1", Decimal("100000"))
    o = place(engine, "a", order("BUY", 10, "3000"))
    assert book(engine)["reserved_buy"] == Decimal("30000")
    fill(engine, o, 4, "2990")
    state = book(engine)
    assert state["quantity"] == 4
    assert state["average_price"] == Decimal("2990")
    assert state["open_buy_quantity"] == 6
    assert state["reserved_buy"] == Decimal("18000")
    assert state["exposure"] == Decimal("30000")  # 4 x 3000 (last) + 18000
    funds = engine.usage("u1", "c1", now=NOW)["funds"]
    assert funds["reserved"] == Decimal("18000")
    assert funds["available"] == Decimal("88000")  # the filled part's margin is used
    assert funds["free"] == Decimal("70000")
    # The same update again changes nothing (duplicates are idempotent).
    before = snapshot(engine)
    engine.on_order(o, now=NOW)
    assert snapshot(engine) == before
    # An older update (fewer fills) changes nothing either.
    stale = dataclasses.replace(o, filled_quantity=2, status=OrderStatus.PARTIALLY_FILLED)
    engine.on_order(stale, now=NOW)
    assert snapshot(engine) == before
    fill(engine, o, 6, "3000")
    assert o.status is OrderStatus.FILLED
    state = book(engine)
    assert state["quantity"] == 10
    assert state["open_orders"] == 0 and state["reserved_buy"] == 0
    assert engine.open_order("a") is None
    assert engine.usage("u1", "c1", now=NOW)["account"]["max_open_orders"]["value"] == 0
    after = snapshot(engine)
    engine.on_order(o, now=NOW)  # a repeated final update
    assert snapshot(engine) == after


def test_cancel_releases_what_is_left() -> None:
    engine = make_engine(OFF)
    o = place(engine, "a", order("SELL", 10, "3000", product="INTRADAY"))
    fill(engine, o, 3, "3000")
    o.transition(OrderStatus.CANCELLED)
    engine.on_order(o, now=NOW)
    state = book(engine)
    assert state["quantity"] == -3
    assert state["open_orders"] == 0 and state["reserved_sell"] == 0
    assert state["exposure"] == Decimal("9000")
    engine.on_order(o, now=NOW)
    assert book(engine)["quantity"] == -3


def test_a_modification_moves_the_reservation() -> None:
    engine = make_engine(OFF)
    o = place(engine, "a", order("BUY", 10, "3000"))
    o.modify(quantity=20, price=Decimal("3010"))
    engine.on_order(o, now=NOW)
    assert book(engine)["reserved_buy"] == Decimal("60200")
    assert book(engine)["open_buy_quantity"] == 20
    # Below the last price (3000) an order reserves at the last price.
    o.modify(price=Decimal("2990"))
    engine.on_order(o, now=NOW)
    assert book(engine)["reserved_buy"] == Decimal("60000")


def test_orders_reserve_at_the_larger_of_their_price_and_the_last_price() -> None:
    engine = make_engine(OFF)
    place(engine, "a", order("SELL", 10, "2950"))  # marketable: fills around 3000
    place(engine, "b", order("BUY", 10, "3050"))
    place(engine, "c", order("SELL", 10, order_type="SL_M", trigger="2900"))
    state = book(engine)
    assert state["reserved_sell"] == Decimal("60000")
    assert state["reserved_buy"] == Decimal("30500")


def test_charges_are_cumulative_per_order_and_count_in_the_pnl() -> None:
    engine = make_engine(OFF)
    o = place(engine, "a", order("BUY", 10, "3000"))
    fill(engine, o, 10, "3000", charges=Decimal("20"))
    engine.on_order(o, charges=Decimal("20"), now=NOW)  # the same total again: no change
    assert engine.usage("u1", "c1", now=NOW)["pnl"]["day"] == Decimal("-20")
    engine.on_order(o, charges=Decimal("25"), now=NOW)
    assert engine.usage("u1", "c1", now=NOW)["pnl"]["day"] == Decimal("-25")


def test_unknown_working_orders_are_adopted() -> None:
    engine = make_engine(OFF)
    o = submitted(entity("ext", "u1", "c1", order("BUY", 10, "3000")))
    o.apply_fill(2, Decimal("3000"))
    engine.on_order(o, now=NOW)  # fills before we knew it are in the loaded positions already
    state = book(engine)
    assert state["quantity"] == 0 and state["open_buy_quantity"] == 8
    fill(engine, o, 8, "3000")
    assert book(engine)["quantity"] == 8
    final = submitted(entity("gone", "u1", "c1", order("BUY", 5, "3000")))
    final.transition(OrderStatus.CANCELLED)
    engine.on_order(final, now=NOW)
    assert engine.open_order("gone") is None


def test_an_account_belongs_to_one_user() -> None:
    engine = make_engine(OFF)
    place(engine, "a", order("BUY", 1, "3000"))
    with pytest.raises(DomainError) as caught:
        engine.check_and_reserve("u2", "c1", "b", order("BUY", 1, "3000"), now=NOW)
    assert caught.value.code is ErrorCode.CONFLICT


# -- trading states ----------------------------------------------------------------------


def long_position(engine: RiskEngine, quantity: int = 100, config: str = "c1") -> None:
    o = place(engine, f"{config}-open", order("BUY", quantity, "3000"), config=config)
    fill(engine, o, quantity, "3000")


def test_reducing_accepts_only_reducing_orders() -> None:
    engine = make_engine(OFF)
    long_position(engine)
    engine.set_state(Scope.for_account("c1"), TradingState.REDUCING, "operator")
    place(engine, "r1", order("SELL", 60, "3000"))
    place(engine, "r2", order("SELL", 40, "3000"))  # with r1: exactly the position
    for request, what in [
        (order("SELL", 1, "3000"), "would flip with the working sells"),
        (order("BUY", 1, "3000"), "increases"),
        (order("BUY", 1, "1500", symbol="INFY"), "opens"),
    ]:
        with pytest.raises(RiskRejected) as caught:
            engine.check_and_reserve("u1", "c1", "x", request, now=NOW)
        error = caught.value
        assert error.details["rule"] == "trading_state", what
        assert error.details["limit"] == "REDUCING"
        assert error.details["scope"] == "account:c1"
        assert "reduce-only (operator)" in error.message


def test_reducing_rejects_a_flip() -> None:
    engine = make_engine(OFF)
    long_position(engine)
    engine.set_state("user:u1", TradingState.REDUCING)
    with pytest.raises(RiskRejected):
        engine.check_and_reserve("u1", "c1", "x", order("SELL", 101, "3000"), now=NOW)
    place(engine, "ok", order("SELL", 100, "3000"))


def test_halted_rejects_everything_but_square_off() -> None:
    engine = make_engine(OFF)
    long_position(engine)
    engine.set_state("account:c1", TradingState.HALTED, "daily loss")
    with pytest.raises(RiskRejected) as caught:
        engine.check_and_reserve("u1", "c1", "x", order("SELL", 10, "3000"), now=NOW)
    assert caught.value.details["rule"] == "trading_state"
    assert "trading is halted for account:c1 (daily loss)" in caught.value.message
    place(engine, "sq", order("SELL", 100), square_off=True)
    with pytest.raises(RiskRejected) as caught:
        engine.check_and_reserve(
            "u1", "c1", "y", order("BUY", 1, "1500", symbol="INFY"), now=NOW, square_off=True
        )
    assert "square-off order must reduce" in caught.value.message


def test_the_strictest_scope_wins() -> None:
    engine = make_engine(OFF)
    engine.set_state("user:u1", TradingState.REDUCING, "user reason")
    engine.set_state("account:c1", TradingState.HALTED, "account reason")
    assert engine.effective_state("u1", "c1") == (TradingState.HALTED, Scope("account", "c1"))
    assert engine.state("user:u1").reason == "user reason"
    assert engine.state("account:c1").state is TradingState.HALTED
    assert engine.state("global").state is TradingState.ACTIVE
    # Another account of the same user is only REDUCING.
    assert engine.effective_state("u1", "c2")[0] is TradingState.REDUCING
    usage = engine.usage("u1", "c1", now=NOW)
    assert usage["state"]["effective"] == "HALTED"
    assert usage["state"]["scope"] == "account:c1"
    assert usage["state"]["reason"] == "account reason"
    with pytest.raises(DomainError):
        engine.set_state("planet:earth", TradingState.HALTED)


# -- loss limits -------------------------------------------------------------------------


def test_a_daily_loss_beyond_the_limit_halts_the_user_including_charges() -> None:
    engine = make_engine(limits(daily_loss_limit=Decimal("10000"), square_off_on_breach=True))
    o = place(engine, "a", order("BUY", 100, "3000"))
    assert fill(engine, o, 100, "3000", charges=Decimal("500")) == []
    # 100 x (3000 - 2905) = 9500 unrealised + 500 charges = 10000: at the limit, fine.
    assert engine.on_price("TCS", "NSE", Decimal("2905"), NOW) == []
    breaches = engine.on_price("TCS", "NSE", Decimal("2904.95"), NOW)
    assert len(breaches) == 1
    breach = breaches[0]
    assert breach.scope == Scope.for_user("u1")
    assert breach.rule == "daily_loss_limit"
    assert breach.limit == Decimal("10000")
    assert breach.value == Decimal("10005.00")
    assert breach.new_state is TradingState.HALTED
    assert breach.square_off is True
    assert breach.user_id == "u1" and breach.config_id is None
    assert engine.state("user:u1").state is TradingState.HALTED
    assert "daily loss 10005.00 exceeded the limit 10000" in engine.state("user:u1").reason
    # Reported once, not on every tick.
    assert engine.on_price("TCS", "NSE", Decimal("2800"), NOW) == []
    with pytest.raises(RiskRejected):
        engine.check_and_reserve("u1", "c1", "x", order("SELL", 10), now=NOW)


def test_on_loss_breach_reducing_still_allows_closing() -> None:
    engine = make_engine(
        limits(daily_loss_limit=Decimal("1000"), on_loss_breach=TradingState.REDUCING)
    )
    long_position(engine)
    [breach] = engine.on_price("TCS", "NSE", Decimal("2980"), NOW)
    assert breach.new_state is TradingState.REDUCING and breach.square_off is False
    place(engine, "close", order("SELL", 100))
    with pytest.raises(RiskRejected):
        engine.check_and_reserve("u1", "c1", "x", order("BUY", 1), now=NOW)


def test_realised_losses_and_charges_from_fills_can_breach() -> None:
    engine = make_engine(limits(daily_loss_limit=Decimal("1000")))
    long_position(engine)
    sell = place(engine, "s", order("SELL", 100, "2990"))
    breaches = fill(engine, sell, 100, "2990", charges=Decimal("1"))  # -1000 - 1
    assert [b.rule for b in breaches] == ["daily_loss_limit"]
    assert breaches[0].value == Decimal("1001")


def test_an_account_with_its_own_loss_limit_breaches_alone() -> None:
    engine = make_engine(OFF)
    engine.set_limits("u1", "c1", limits(daily_loss_limit=Decimal("500")))
    long_position(engine, 100, "c1")
    long_position(engine, 100, "c2")
    breaches = engine.on_price("TCS", "NSE", Decimal("2990"), NOW)
    assert [(str(b.scope), b.config_id) for b in breaches] == [("account:c1", "c1")]
    assert engine.effective_state("u1", "c1")[0] is TradingState.HALTED
    assert engine.effective_state("u1", "c2")[0] is TradingState.ACTIVE


def test_days_and_weeks_roll_at_ist_midnight() -> None:
    engine = make_engine(
        limits(daily_loss_limit=Decimal("2500"), weekly_loss_limit=Decimal("2500"))
    )
    long_position(engine)
    assert engine.on_price("TCS", "NSE", Decimal("2990"), NOW) == []  # -1000 today
    thursday = NOW + timedelta(days=1)  # 10:00 IST on Thursday
    assert engine.on_price("TCS", "NSE", Decimal("2980"), thursday) == []
    usage = engine.usage("u1", "c1", now=thursday)
    assert usage["pnl"] == {"day": Decimal("-1000"), "week": Decimal("-2000")}
    # Day -2000 (within 2500), week -3000 (beyond).
    [breach] = engine.on_price("TCS", "NSE", Decimal("2970"), thursday)
    assert breach.rule == "weekly_loss_limit"
    assert breach.value == Decimal("3000")
    monday = datetime(2026, 11, 30, 4, 30, tzinfo=UTC)
    engine.on_price("TCS", "NSE", Decimal("2960"), monday)
    assert engine.usage("u1", "c1", now=monday)["pnl"] == {
        "day": Decimal("-1000"),
        "week": Decimal("-1000"),
    }


# -- start-up ----------------------------------------------------------------------------


def test_loading_positions_orders_and_pnl_at_start_up() -> None:
    engine = make_engine(
        limits(daily_loss_limit=Decimal("5000"), max_symbol_exposure=Decimal("400000"))
    )
    engine.load_position("u1", "c1", "TCS", "NSE", 100, Decimal("2950"), last_price=Decimal("3000"))
    engine.load_pnl("u1", "c1", day=Decimal("-4000"), week=Decimal("-4000"))
    working = submitted(entity("w", "u1", "c1", order("BUY", 20, "3000")))
    working.apply_fill(5, Decimal("3000"))
    engine.load_open_order(working)
    state = book(engine)
    assert state["quantity"] == 100  # the 5 filled are in the loaded position
    assert state["open_buy_quantity"] == 15
    assert state["exposure"] == Decimal("345000")
    usage = engine.usage("u1", "c1", now=NOW)
    assert usage["pnl"]["day"] == Decimal("-4000")
    assert usage["account"]["max_open_orders"]["value"] == 1
    # The loss limit continues from the loaded P&L.
    [breach] = engine.on_price("TCS", "NSE", Decimal("2989.95"), NOW)
    assert breach.value == Decimal("5005.00")
    # Fills after loading count.
    fill(engine, working, 15, "3000")
    assert book(engine)["quantity"] == 115


def test_usage_reports_every_limit_with_its_value() -> None:
    engine = make_engine(RiskLimits(daily_loss_limit=Decimal("20000")))
    engine.set_funds("c1", Decimal("1000000"))
    place(engine, "a", order("BUY", 10, "3000"))
    place(engine, "b", order("BUY", 10, "1500", symbol="INFY", product="INTRADAY"))
    usage = engine.usage("u1", "c1", now=NOW)
    account = usage["account"]
    assert account["max_open_orders"] == {"limit": 50, "value": 2}
    assert account["max_open_positions"] == {"limit": 25, "value": 2}
    assert account["max_symbol_exposure"] == {
        "limit": Decimal("2500000"),
        "value": Decimal("30000"),
        "symbol": "NSE:TCS",
    }
    assert account["max_gross_exposure"] == {
        "limit": Decimal("10000000"),
        "value": Decimal("45000"),
    }
    assert account["daily_loss_limit"] == {"limit": Decimal("20000"), "value": Decimal("0")}
    assert account["order_rate_per_second"] == {"limit": 10, "value": 2}
    assert usage["user"]["max_gross_exposure"]["value"] == Decimal("45000")
    assert usage["funds"] == {
        "available": Decimal("1000000"),
        "reserved": Decimal("33000.0"),
        "free": Decimal("967000.0"),
    }
    assert usage["per_order"]["max_order_value"] == Decimal("1000000")
    assert set(usage["symbols"]) == {"NSE:TCS", "NSE:INFY"}


def test_user_limits_span_accounts_and_account_limits_tighten_them() -> None:
    engine = make_engine(limits(max_gross_exposure=Decimal("100000")))
    place(engine, "a", order("BUY", 20, "3000"), config="c1")  # 60000
    with pytest.raises(RiskRejected) as caught:
        engine.check_and_reserve("u1", "c2", "b", order("BUY", 30, "1500", symbol="INFY"), now=NOW)
    assert caught.value.details["scope"] == "user"  # 60000 + 45000 across accounts
    engine.set_limits("u1", "c2", limits(max_gross_exposure=Decimal("20000")))
    assert engine.limits("u1", "c2").max_gross_exposure == Decimal("20000")
    with pytest.raises(RiskRejected) as caught:
        engine.check_and_reserve("u1", "c2", "c", order("BUY", 20, "1500", symbol="INFY"), now=NOW)
    assert caught.value.details["scope"] == "account"
    place(engine, "d", order("BUY", 10, "1500", symbol="INFY"), config="c2")
    # An account override can never loosen the user's limits.
    engine.set_limits("u1", "c2", limits(max_gross_exposure=Decimal("10000000")))
    assert engine.limits("u1", "c2").max_gross_exposure == Decimal("100000")


def test_prices_touch_only_positions_in_that_instrument() -> None:
    engine = make_engine(OFF)
    long_position(engine)
    infy = place(engine, "i", order("BUY", 10, "1500", symbol="INFY"))
    fill(engine, infy, 10, "1500")
    before = book(engine, "NSE:INFY")
    engine.on_price("TCS", "NSE", Decimal("3100"), NOW)
    assert book(engine, "NSE:INFY") == before
    assert book(engine)["market_value"] == Decimal("310000")
    assert engine.on_price("SBIN", "NSE", Decimal("905"), NOW) == []
    assert engine.last_price("SBIN", "NSE") == Decimal("905")
