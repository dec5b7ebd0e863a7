"""Property test: random orders and price moves never break the account's books.

Invariants checked after every action:
* total balance (cash + unrealised) == initial capital + realised − charges + unrealised,
  and the cash ledger == initial capital + realised − charges (to 1e-12: average costs
  may be non-terminating decimals);
* no order's filled quantity exceeds its quantity, and its fills add up to it;
* every position's quantity is the signed sum of its fills, and replaying the fills
  reproduces its average price, realised P&L and charges;
* DELIVERY positions are never short; trade ids are unique;
* the saved state restores an identical account.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paper.paper_helpers import NIFTY_FUT, TODAY, JsonMemoryStore
from trading_backend.brokers.base import (
    BrokerConfigData,
    BrokerContext,
    BrokerOrder,
    BrokerRejected,
    InsufficientFunds,
)
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket
from trading_backend.brokers.paper.universe import default_universe
from trading_backend.domain import OrderStatus, OrderType, Position, ProductType
from trading_backend.domain.money import ZERO

SYMBOLS = [("RELIANCE", "NSE"), ("SBIN", "NSE"), (NIFTY_FUT, "NFO")]
EPSILON = Decimal("1e-12")
KEYS = {"NSE:RELIANCE", "NSE:SBIN", "NSE:NIFTY", f"NFO:{NIFTY_FUT}"}

order_action = st.fixed_dictionaries(
    {
        "kind": st.just("order"),
        "symbol": st.integers(0, len(SYMBOLS) - 1),
        "side": st.sampled_from(["BUY", "SELL"]),
        "order_type": st.sampled_from(["MARKET", "LIMIT", "SL", "SL_M"]),
        "product": st.integers(0, 2),
        "lots": st.integers(1, 40),
        "offset": st.integers(-30, 30),
        "gap": st.integers(0, 10),
        "ioc": st.booleans(),
    }
)
move_action = st.fixed_dictionaries(
    {
        "kind": st.just("move"),
        "symbol": st.integers(0, len(SYMBOLS) - 1),
        "bps": st.integers(-300, 300),
        "volume": st.integers(0, 3000),
    }
)
step_action = st.fixed_dictionaries({"kind": st.just("step")})
cancel_action = st.fixed_dictionaries({"kind": st.just("cancel"), "index": st.integers(0, 80)})
modify_action = st.fixed_dictionaries(
    {"kind": st.just("modify"), "index": st.integers(0, 80), "offset": st.integers(-20, 20)}
)
expire_action = st.fixed_dictionaries({"kind": st.just("expire")})
# Repetition weights the mix: mostly orders and price moves, rarely the session close.
actions = st.lists(
    st.one_of(
        *[order_action] * 4,
        *[move_action] * 3,
        *[step_action] * 2,
        cancel_action,
        modify_action,
        expire_action,
    ),
    min_size=20,
    max_size=80,
)


def build_order(market: SimulatedMarket, a: dict[str, Any]) -> BrokerOrder:
    symbol, exchange = SYMBOLS[a["symbol"]]
    instrument = market.get_instrument(symbol, exchange)
    assert instrument is not None
    tick = instrument.tick_size
    ltp = market.quote(symbol, exchange).ltp
    level = max(ltp + a["offset"] * tick, tick)
    products = (
        ["INTRADAY", "CARRYFORWARD", "INTRADAY"]
        if instrument.is_derivative
        else ["DELIVERY", "INTRADAY", "MARGIN"]
    )
    kind = a["order_type"]
    price = trigger = None
    if kind == "LIMIT":
        price = level
    elif kind in ("SL", "SL_M"):
        trigger = level
        if kind == "SL":
            step = a["gap"] * tick
            price = level + step if a["side"] == "BUY" else max(level - step, tick)
    return BrokerOrder(
        symbol=symbol,
        exchange=exchange,
        side=a["side"],
        order_type=kind,
        product_type=products[a["product"]],
        quantity=a["lots"] * (instrument.lot_size if instrument.is_derivative else 5),
        price=price,
        trigger_price=trigger,
        validity="IOC" if a["ioc"] and kind in ("MARKET", "LIMIT") else "DAY",
    )


async def check(broker: PaperBroker) -> None:
    account = broker._account
    assert account is not None
    fills_by_order: dict[str, int] = defaultdict(int)
    notional_by_order: dict[str, Decimal] = defaultdict(lambda: ZERO)
    signed: dict[tuple[str, str, str], int] = defaultdict(int)
    replay: dict[tuple[str, str, str], Position] = {}
    for fill in account.fills:
        fills_by_order[fill.broker_order_id] += fill.quantity
        notional_by_order[fill.broker_order_id] += fill.price * fill.quantity
        key = (fill.exchange.value, fill.symbol, fill.product_type.value)
        signed[key] += fill.quantity * fill.side.sign
        replay.setdefault(key, Position(fill.symbol, fill.exchange, fill.product_type)).apply(fill)
    assert len({f.trade_id for f in account.fills}) == len(account.fills)

    for entry in account.orders.values():
        order = entry.order
        assert 0 <= order.filled_quantity <= order.quantity
        assert fills_by_order[order.order_id] == order.filled_quantity
        assert (order.status is OrderStatus.FILLED) == (order.filled_quantity == order.quantity)
        if order.filled_quantity:
            expected = notional_by_order[order.order_id] / order.filled_quantity
            assert abs(order.average_price - expected) < Decimal("1e-12")

    working = [oid for oid, e in account.orders.items() if e.order.status.is_working]
    assert [e.order.order_id for e in account.working()] == working
    assert set(account.positions) == set(replay)
    for key, position in account.positions.items():
        assert position.quantity == signed[key]
        assert position.average_price == replay[key].average_price
        assert position.realised_pnl == replay[key].realised_pnl
        assert position.charges == replay[key].charges
        if position.product_type is ProductType.DELIVERY:
            assert position.quantity >= 0

    realised = sum((p.realised_pnl for p in replay.values()), ZERO)
    charges = sum((f.charges for f in account.fills), ZERO)
    totals = account.totals()
    initial = account.initial_capital
    # Average costs can be non-terminating decimals, so sums computed in a different order
    # may differ in the 28th significant digit: far below a paisa.
    assert abs(totals["cash"] - (initial + realised - charges)) < EPSILON
    assert (
        abs(totals["total_balance"] - (initial + realised + totals["unrealised_pnl"] - charges))
        < EPSILON
    )
    assert totals["realised_pnl"] == realised and totals["charges"] == charges

    balance = await broker.get_balance()
    lhs = balance["total_balance"]
    rhs = initial + balance["realised_pnl"] + balance["unrealised_pnl"] - balance["charges"]
    assert abs(lhs - rhs) <= Decimal("0.03")  # each figure is rounded to the paisa
    assert balance["available_cash"] + balance["used_margin"] - balance["cash"] in (
        Decimal("-0.01"),
        ZERO,
        Decimal("0.01"),
    )
    for row in await broker.get_positions():
        assert abs(row["pnl"] - (row["realised_pnl"] + row["unrealised_pnl"] - row["charges"])) <= (
            Decimal("0.03")
        )


async def scenario(steps: list[dict[str, Any]]) -> None:
    specs = [s for s in default_universe(TODAY) if s.key in KEYS]
    market = SimulatedMarket(seed=9, instruments=specs)
    store = JsonMemoryStore()
    config = BrokerConfigData("prop", "u", "paper", settings={"initial_capital": 2_000_000})
    broker = PaperBroker(config, BrokerContext(market=market, state_store=store))
    await broker.authenticate()
    placed: list[str] = []
    for a in steps:
        kind = a["kind"]
        try:
            if kind == "order":
                placed.append(await broker.place_order(build_order(market, a)))
            elif kind == "move":
                symbol, exchange = SYMBOLS[a["symbol"]]
                if exchange == "NFO":
                    symbol, exchange = "NIFTY", "NSE"
                ltp = market.quote(symbol, exchange).ltp
                price = ltp * (1 + Decimal(a["bps"]) / 10000)
                await market.set_price(symbol, exchange, price, volume=a["volume"])
            elif kind == "step":
                await market.step()
            elif kind == "cancel" and placed:
                await broker.cancel_order(placed[a["index"] % len(placed)])
            elif kind == "modify" and placed:
                oid = placed[a["index"] % len(placed)]
                state = await broker.get_order(oid)
                if state.order_type in (OrderType.LIMIT, OrderType.SL) and state.price:
                    tick = Decimal("0.05")
                    new_price = max(state.price + a["offset"] * tick, tick)
                    await broker.modify_order(oid, price=new_price)
            elif kind == "expire":
                await broker.expire_day_orders()
        except (BrokerRejected, InsufficientFunds):
            pass
        await check(broker)

    restored = PaperBroker(config, BrokerContext(market=market, state_store=store))
    await restored.authenticate()
    assert await restored.get_balance() == await broker.get_balance()
    assert await restored.get_positions() == await broker.get_positions()
    assert [o.to_dict() for o in await restored.get_orders()] == [
        o.to_dict() for o in await broker.get_orders()
    ]
    await restored.close()
    await broker.close()


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_trading_keeps_the_books_consistent(steps: list[dict[str, Any]]) -> None:
    asyncio.run(scenario(steps))
