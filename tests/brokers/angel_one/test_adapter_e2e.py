"""End to end through our own stack: a user with an angel_one broker config pointing at
the fake, orders through the order service (risk, queue, worker, recorder), a restart
with open orders that filled meanwhile: reconciled, and nothing ever placed twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.brokers.angel_one.support import CLIENT_CODE, SBIN
from tests.brokers.angel_one.test_adapter_support import credentials, fake_settings, tick_round
from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.domain import BrokerOrder, Exchange, OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.storage.models import TradeRow


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


async def wait_status(rt: Runtime, user_id: str, order_id: str, status: OrderStatus) -> None:
    """Wait for an order to reach ``status`` through the order feed (no sleeping)."""
    reached = asyncio.Event()

    def listener(order: object) -> None:
        if (
            getattr(order, "order_id", None) == order_id
            and getattr(order, "status", None) is status
        ):
            reached.set()

    rt.recorder.add_listener(listener)
    try:
        if (await rt.orders.get(user_id, order_id)).status is status:
            return
        await asyncio.wait_for(reached.wait(), 15)
    finally:
        rt.recorder.remove_listener(listener)


async def test_orders_through_the_stack_and_restart_reconciles(
    settings: Settings, angel_fake: RunningFake
) -> None:
    fake = angel_fake.fake
    first = Runtime(settings)
    await first.start(worker=True, market=False, health_monitor=False)
    user = await first.accounts.create_user("ravi", "correct-horse-battery")
    config = await first.accounts.create_config(
        user.id,
        "angel_one",
        "ravi angel",
        credentials=credentials(),
        settings=fake_settings(angel_fake, timeout=2.0),
    )
    config_id = config["config_id"]
    # Our risk engine prices orders from the runtime's market: make Angel's price agree.
    fake.set_price(*SBIN, first.market.quote("SBIN", Exchange.NSE).ltp)
    assert set(config["credentials"]) == {"api_key", "client_code", "pin", "totp_secret"}
    assert "1234" not in str(config["credentials"]["pin"])  # masked

    market = await first.orders.place(
        user.id,
        config_id,
        BrokerOrder("SBIN", "NSE", "BUY", "MARKET", "INTRADAY", 2),
        wait=10,
    )
    order_id = market.order.order_id
    await wait_status(first, user.id, order_id, OrderStatus.FILLED)
    done = await first.orders.get(user.id, order_id)
    assert (done.filled_quantity, done.broker_order_id is not None) == (2, True)

    price = tick_round(fake.ltp(*SBIN) * Decimal("0.98"))
    resting = await first.orders.place(
        user.id,
        config_id,
        BrokerOrder("SBIN", "NSE", "BUY", "LIMIT", "INTRADAY", 3, price=price),
        wait=10,
    )
    resting_id = resting.order.order_id
    await wait_status(first, user.id, resting_id, OrderStatus.OPEN)
    await first.stop()

    # While we are down, the market crosses the limit: the order fills at Angel.
    fake.set_price(*SBIN, price - Decimal("1"))
    assert [o.status for o in fake.orders(CLIENT_CODE)] == ["complete", "complete"]

    second = Runtime(settings)
    await second.start(worker=True, market=False, health_monitor=False)  # reconcile_all
    try:
        reconciled = await second.orders.get(user.id, resting_id)
        assert reconciled.status is OrderStatus.FILLED
        assert reconciled.filled_quantity == 3
        async with second.db() as db:
            trades = (
                await db.scalars(select(TradeRow).where(TradeRow.config_id == config_id))
            ).all()
        by_order: dict[str, int] = {}
        for trade in trades:
            by_order[trade.order_id] = by_order.get(trade.order_id, 0) + trade.quantity
        assert by_order == {order_id: 2, resting_id: 3}
        assert len({t.trade_id for t in trades}) == len(trades)
        # Nothing was placed twice.
        assert len(fake.calls("place_order")) == 2
        assert len(fake.orders(CLIENT_CODE)) == 2
    finally:
        await second.stop()


async def test_unknown_fate_order_is_reconciled_as_never_arrived(
    settings: Settings, angel_fake: RunningFake
) -> None:
    fake = angel_fake.fake
    rt = Runtime(settings)
    await rt.start(worker=True, market=False, health_monitor=False)
    try:
        user = await rt.accounts.create_user("meera", "correct-horse-battery")
        config = await rt.accounts.create_config(
            user.id,
            "angel_one",
            "meera angel",
            credentials=credentials(),
            settings=fake_settings(angel_fake, timeout=0.5, order_updates="off"),
        )
        # Open the session first, so the fault hits placeOrder and nothing else.
        await rt.sessions.open(user.id, config["config_id"])
        fake.faults.timeout(route="place_order", hold=5)
        result = await rt.orders.place(
            user.id,
            config["config_id"],
            BrokerOrder("SBIN", "NSE", "BUY", "MARKET", "INTRADAY", 1),
            wait=10,
        )
        order = await rt.orders.get(user.id, result.order.order_id)
        assert order.status is OrderStatus.REJECTED
        assert "never arrived" in (order.message or "")
        assert len(fake.calls("place_order")) == 1
        assert fake.orders(CLIENT_CODE) == []
    finally:
        await rt.stop()
