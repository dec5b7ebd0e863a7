"""The Python API (the seed's multi-user broker manager) on a live runtime."""

from __future__ import annotations

from decimal import Decimal

from tests.helpers import order, user_with_config
from trading_backend.manager import MultiUserBrokerManager
from trading_backend.runtime import Runtime


async def test_trading_through_the_python_api(runtime: Runtime) -> None:
    manager = MultiUserBrokerManager()
    assert await manager.initialize(runtime=runtime) is True
    _, config_id = await user_with_config(runtime, "alice")
    await user_with_config(runtime, "bob", config_id="bobs-config")

    added = await manager.add_user_broker("alice", config_id)  # by username
    assert added.success and added.session_id and added.broker_name == "paper"

    placed = await manager.place_order_for_user("alice", config_id, order(quantity=3))
    assert placed.success, placed.message
    assert placed.data is not None and placed.data["broker_order_id"].startswith("PAPER-")
    assert placed.data["status"] == "FILLED" and placed.execution_time > 0

    ltp = runtime.market.quote("INFY", "NSE").ltp
    resting = await manager.place_order_for_user(
        "alice", config_id, order(symbol="INFY", order_type="LIMIT", price=ltp - 40)
    )
    assert resting.success and resting.data is not None and resting.data["status"] == "OPEN"
    order_id = resting.data["order_id"]
    modified = await manager.modify_order_for_user("alice", order_id, price=float(ltp - 41))
    assert modified.success and modified.data is not None
    assert modified.data["price"] == ltp - 41
    cancelled = await manager.cancel_order_for_user("alice", order_id)
    assert cancelled.success and cancelled.data is not None
    assert cancelled.data["status"] == "CANCELLED"
    again = await manager.cancel_order_for_user("alice", order_id)
    assert not again.success and again.error_code == "ORDER_NOT_CANCELLABLE"

    orders = await manager.get_orders_for_user("alice")
    assert orders.success and orders.data is not None
    assert [o["status"] for o in orders.data["orders"]] == ["CANCELLED", "FILLED"]
    trades = await manager.get_trades_for_user("alice", config_id)
    assert trades.data is not None and sum(t["quantity"] for t in trades.data["trades"]) == 3

    positions = await manager.get_positions_for_user("alice", config_id)
    [tcs] = positions.data["positions"] if positions.data else []
    assert tcs["symbol"] == "TCS" and tcs["quantity"] == 3 and "pnl" in tcs
    balance = await manager.get_balance_for_user("alice", config_id)
    assert balance.success and balance.data is not None
    assert balance.data["total_balance"] < Decimal(1_000_000)  # charges and spread paid
    quote = await manager.get_market_data_for_user("alice", config_id, "TCS", "NSE")
    assert quote.success and quote.data is not None and quote.data["ltp"] > 0

    async with manager.broker_session("alice", config_id) as broker:
        assert len(await broker.get_positions()) == 1

    everything = await manager.get_all_user_balances("alice")
    assert list(everything) == [config_id] and everything[config_id].success

    status = await manager.get_system_status()
    assert status["total_sessions"] == 1 and status["by_broker"] == {
        "paper": {"total": 1, "healthy": 1}
    }
    assert [s.config_id for s in await manager.get_user_brokers("alice")] == [config_id]

    # Errors come back as results with codes, never as exceptions.
    assert (await manager.place_order_for_user("alice", "nope", order())).error_code == (
        "CONFIG_NOT_FOUND"
    )
    stolen = await manager.place_order_for_user("alice", "bobs-config", order())
    assert stolen.error_code == "CONFIG_NOT_FOUND"
    assert (await manager.get_balance_for_user("ghost", config_id)).error_code == "USER_NOT_FOUND"
    poor = await manager.place_order_for_user("alice", config_id, order(quantity=100_000))
    assert not poor.success and poor.error_code == "INSUFFICIENT_FUNDS"
    assert "margin" in poor.message  # the risk engine refused it before any order existed

    removed = await manager.remove_user_broker("alice", config_id)
    assert removed.success
    assert (await manager.remove_user_broker("alice", config_id)).error_code == "SESSION_NOT_FOUND"
    await manager.shutdown()  # does not stop a runtime it did not create
    assert runtime.started
