"""One paper account shared by several processes (issue #7's workers).

Each ``Instance`` is what one process has: its own engine (connection pool), its own
``SimulatedMarket`` (so its own prices) and its own ``PaperBroker`` for the same config.
They share only the database, like separate worker processes do. Runs on SQLite (where
the single writer serialises the instances) and on PostgreSQL (row locks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest

from tests.paper.paper_helpers import TODAY, Recorder
from trading_backend.brokers.base import BrokerConfigData, BrokerContext, BrokerOrder
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket, persistence
from trading_backend.brokers.paper.universe import default_universe
from trading_backend.domain import Exchange, OrderSide, OrderStatus, Position, ProductType
from trading_backend.domain.money import round_money
from trading_backend.settings import Settings
from trading_backend.storage.database import create_engine, session_factory, upgrade_database
from trading_backend.storage.state_store import DatabaseStateStore

CAPITAL = Decimal("100000000")
SYMBOLS = ("SBIN", "INFY", "TCS")


@dataclass
class Instance:
    """One simulated process: market, store and broker for the shared account."""

    market: SimulatedMarket
    store: DatabaseStateStore
    broker: PaperBroker
    recorder: Recorder


Factory = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def instances(settings: Settings) -> AsyncIterator[Factory]:
    engines = []
    brokers: list[PaperBroker] = []
    url = settings.effective_database_url
    migrated = False

    async def make(config_id: str = "shared", *, seed: int = 1) -> Instance:
        nonlocal migrated
        engine = create_engine(url)
        engines.append(engine)
        if not migrated:
            await upgrade_database(engine)
            migrated = True
        market = SimulatedMarket(seed=seed, instruments=default_universe(TODAY))
        for symbol in SYMBOLS:  # deep books: a MARKET order fills whole at once
            await market.set_price(symbol, "NSE", "1000", volume=10_000_000)
        store = DatabaseStateStore(session_factory(engine))
        config = BrokerConfigData(
            config_id=config_id,
            user_id="user-mp",
            broker="paper",
            settings={"initial_capital": str(CAPITAL)},
        )
        broker = PaperBroker(
            config,
            BrokerContext(market=market, state_store=store, extras={"paper_sync_seconds": 0}),
        )
        recorder = Recorder()
        broker.set_order_update_handler(recorder)
        assert await broker.authenticate()
        brokers.append(broker)
        return Instance(market, store, broker, recorder)

    yield make
    for broker in brokers:
        await broker.close()
    for engine in engines:
        await engine.dispose()


def market_order(i: int) -> BrokerOrder:
    return BrokerOrder(
        symbol=SYMBOLS[i % len(SYMBOLS)],
        exchange="NSE",
        side="BUY" if i % 3 else "SELL",
        order_type="MARKET",
        product_type="INTRADAY",
        quantity=1 + i % 7,
        client_order_id=f"mp-{i}",
    )


def limit_order(client_order_id: str, price: str, side: str = "BUY") -> BrokerOrder:
    return BrokerOrder(
        symbol="SBIN",
        exchange="NSE",
        side=side,
        order_type="LIMIT",
        product_type="INTRADAY",
        quantity=10,
        price=Decimal(price),
        client_order_id=client_order_id,
    )


async def test_concurrent_orders_from_three_processes_are_each_booked_once(
    instances: Factory,
) -> None:
    group = [await instances(seed=seed) for seed in (1, 2, 3)]
    jobs = [group[i % 3].broker.place_order(market_order(i)) for i in range(200)]
    ids = await asyncio.gather(*jobs)
    assert len(set(ids)) == 200  # no two orders got the same broker id

    # A fourth process loading the account from the database sees exactly those orders.
    fresh = (await instances(seed=4)).broker
    orders = await fresh.get_orders()
    assert sorted(o.broker_order_id for o in orders) == sorted(ids)
    assert sorted(o.client_order_id or "" for o in orders) == sorted(f"mp-{i}" for i in range(200))
    fills = await fresh.get_trades()
    assert len({f.trade_id for f in fills}) == len(fills)
    for state in orders:
        assert state.status is OrderStatus.FILLED
        booked = sum(f.quantity for f in fills if f.broker_order_id == state.broker_order_id)
        assert booked == state.filled_quantity == state.quantity

    # Cash and positions are exactly what the fills add up to (replayed independently).
    replay: dict[tuple[str, str], Position] = {}
    for fill in fills:
        key = (fill.symbol, fill.product_type.value)
        position = replay.setdefault(key, Position(fill.symbol, Exchange.NSE, ProductType.INTRADAY))
        position.apply(fill)
    realised = sum((p.realised_pnl for p in replay.values()), Decimal(0))
    charges = sum((f.charges for f in fills), Decimal(0))
    balance = await fresh.get_balance()
    assert fresh._account is not None
    assert fresh._account.cash == CAPITAL + realised - charges
    assert balance["charges"] == round_money(charges)
    held = {(p["symbol"], p["product_type"]): p["quantity"] for p in await fresh.get_positions()}
    assert held == {k: p.quantity for k, p in replay.items()}
    for symbol in SYMBOLS:
        signed = sum(
            f.quantity * (1 if f.side is OrderSide.BUY else -1) for f in fills if f.symbol == symbol
        )
        assert held[(symbol, "INTRADAY")] == signed

    # Each process emitted the updates of its own orders, and only those.
    for index, instance in enumerate(group):
        mine = {ids[i] for i in range(200) if i % 3 == index}
        emitted = {u.state.broker_order_id for u in instance.recorder.updates}
        assert emitted == mine
        fill_updates = [f.trade_id for u in instance.recorder.updates for f in u.fills]
        assert len(fill_updates) == len(set(fill_updates)) == len(mine)


async def test_a_resting_order_crossed_in_both_markets_fills_once(instances: Factory) -> None:
    a, b = await instances(seed=1), await instances(seed=2)
    resting = await a.broker.place_order(limit_order("rest-1", "990"))
    await b.broker.sync()  # both copies now hold the order as working
    assert (await b.broker.get_order(resting)).status is OrderStatus.OPEN

    # Both processes' markets cross the limit at once: each tries to fill it.
    await asyncio.gather(
        a.market.set_price("SBIN", "NSE", "985", volume=10_000_000),
        b.market.set_price("SBIN", "NSE", "986", volume=10_000_000),
    )
    await a.broker.sync()
    await b.broker.sync()
    for broker in (a.broker, b.broker):
        state = await broker.get_order(resting)
        assert state.status is OrderStatus.FILLED and state.filled_quantity == 10
        trades = [t for t in await broker.get_trades() if t.broker_order_id == resting]
        assert len(trades) == 1 and trades[0].quantity == 10
        (position,) = await broker.get_positions()
        assert position["quantity"] == 10
    fill_updates = [u for x in (a, b) for u in x.recorder.for_order(resting) if u.fills]
    assert len(fill_updates) == 1  # emitted once, by the process that filled it


async def test_one_process_cancels_an_order_another_placed(instances: Factory) -> None:
    a, b = await instances(seed=1), await instances(seed=2)
    placed = await b.broker.place_order(limit_order("far-1", "900"))
    await a.broker.cancel_order(placed)  # A never saw the order: it catches up first
    assert a.recorder.statuses(placed) == ["CANCELLED"]
    assert b.recorder.statuses(placed) == ["OPEN"]
    if b.store.shared:  # PostgreSQL: order reads catch up by themselves
        assert (await b.broker.get_order(placed)).status is OrderStatus.CANCELLED
    await b.broker.sync()
    assert (await b.broker.get_order(placed)).status is OrderStatus.CANCELLED
    with pytest.raises(Exception, match="cannot be cancelled"):
        await b.broker.cancel_order(placed)


async def test_a_repeated_placement_from_another_process_is_not_placed_again(
    instances: Factory,
) -> None:
    a, b = await instances(seed=1), await instances(seed=2)
    first = await a.broker.place_order(limit_order("once-1", "900"))
    again = await b.broker.place_order(limit_order("once-1", "900"))
    assert again == first
    found = await b.broker.find_order_by_client_id("once-1")
    assert found is not None and found.broker_order_id == first
    assert [o.client_order_id for o in await b.broker.get_orders()] == ["once-1"]
    assert b.recorder.updates == []  # nothing happened at the broker, nothing to report


async def test_a_copy_beyond_the_change_log_reloads_everything(
    instances: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persistence, "CHANGELOG_LENGTH", 3)
    a, b = await instances(seed=1), await instances(seed=2)
    await a.broker.place_order(limit_order("lag-0", "900"))
    await b.broker.sync()
    for i in range(1, 6):  # five revisions B has not seen; the log keeps three
        await a.broker.place_order(limit_order(f"lag-{i}", "900"))
    await b.broker.place_order(limit_order("lag-6", "900"))
    orders = await b.broker.get_orders()
    assert [o.client_order_id for o in orders] == [f"lag-{i}" for i in range(7)]
    assert [o.broker_order_id for o in orders] == [f"PAPER-{i}" for i in range(1, 8)]
    # And A, two revisions behind (inside the log), catches up on just those.
    await a.broker.cancel_order("PAPER-7")
    assert [o.status for o in await a.broker.get_orders()][-1] is OrderStatus.CANCELLED
    assert len(await a.broker.get_orders()) == 7
