"""The paper account survives a restart through the StateStore."""

from __future__ import annotations

import json

import pytest

from tests.paper.paper_helpers import BrokerFactory, JsonMemoryStore, Recorder, d
from trading_backend.brokers.base import (
    BrokerConfigData,
    BrokerContext,
    BrokerError,
    BrokerOrder,
)
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket
from trading_backend.domain import OrderStatus


def order(**kw: object) -> BrokerOrder:
    values: dict[str, object] = {
        "symbol": "SBIN",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "DELIVERY",
        "quantity": 10,
    }
    values.update(kw)
    return BrokerOrder(**values)  # type: ignore[arg-type]


async def test_restart_restores_the_account_and_open_orders_still_fill(
    make_broker: BrokerFactory, market: SimulatedMarket, store: JsonMemoryStore
) -> None:
    await market.set_price("SBIN", "NSE", "950", volume=10_000)
    first = await make_broker("acc-p", {"initial_capital": 500_000})
    await first.place_order(order(quantity=20, client_order_id="c1"))
    await first.place_order(order(side="SELL", quantity=5))
    await first.place_order(order(side="SELL", product_type="INTRADAY", quantity=7))
    resting = await first.place_order(
        order(order_type="LIMIT", price="940", quantity=15, client_order_id="c-rest")
    )
    stop = await first.place_order(
        order(side="SELL", order_type="SL", price="900", trigger_price="910", quantity=5)
    )
    before = {
        "positions": await first.get_positions(),
        "balance": await first.get_balance(),
        "orders": [o.to_dict() for o in await first.get_orders()],
        "trades": await first.get_trades(),
    }
    assert "paper:acc-p" in store.data
    json.loads(store.data["paper:acc-p"])  # plain JSON
    await first.close()

    recorder = Recorder()
    second = await make_broker("acc-p", {"initial_capital": 500_000}, handler=recorder)
    assert await second.get_positions() == before["positions"]
    assert await second.get_balance() == before["balance"]
    assert [o.to_dict() for o in await second.get_orders()] == before["orders"]
    assert await second.get_trades() == before["trades"]
    found = await second.find_order_by_client_id("c-rest")
    assert found is not None and found.status is OrderStatus.OPEN

    # The resting orders still work after the restart, and trade ids keep counting.
    await market.set_price("SBIN", "NSE", "939.95", volume=10_000)
    state = await second.get_order(resting)
    assert state.status is OrderStatus.FILLED and state.average_price == d("940.00")
    await market.set_price("SBIN", "NSE", "905", volume=10_000)
    assert (await second.get_order(stop)).status is OrderStatus.FILLED
    trade_ids = [t.trade_id for t in await second.get_trades()]
    assert len(trade_ids) == len(set(trade_ids)) == 5
    assert [u.state.broker_order_id for u in recorder.updates if u.fills] == [resting, stop]
    (delivery, intraday) = sorted(await second.get_positions(), key=lambda p: p["product_type"])
    assert delivery["quantity"] == 20 + 15 - 5 - 5 and intraday["quantity"] == -7

    # A third incarnation sees the fills made by the second.
    balance = await second.get_balance()
    await second.close()
    third = await make_broker("acc-p", {"initial_capital": 500_000})
    assert (await third.get_order(resting)).status is OrderStatus.FILLED
    assert await third.get_balance() == balance


async def test_without_a_store_state_is_in_memory_only(
    make_broker: BrokerFactory, market: SimulatedMarket, store: JsonMemoryStore
) -> None:
    broker = await make_broker("mem", use_store=False)
    await broker.place_order(order())
    assert store.data == {}
    fresh = await make_broker("mem", use_store=False)
    assert await fresh.get_orders() == []


async def test_saved_initial_capital_wins_over_changed_settings(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    first = await make_broker("cap", {"initial_capital": 200_000})
    await first.close()
    second = await make_broker("cap", {"initial_capital": 900_000})
    assert (await second.get_balance())["initial_capital"] == d("200000")


async def test_unreadable_state_is_an_error(market: SimulatedMarket) -> None:
    store = JsonMemoryStore()
    await store.save("paper:bad", {"version": 99})
    broker = PaperBroker(
        BrokerConfigData("bad", "u", "paper"), BrokerContext(market=market, state_store=store)
    )
    with pytest.raises(BrokerError, match="unreadable"):
        await broker.authenticate()
