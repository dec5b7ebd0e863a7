"""Seed import path. The implementation lives in ``trading_backend.manager``."""

from trading_backend.manager import (
    BrokerOperationResult,
    MultiUserBrokerManager,
    add_user_broker,
    cancel_order_for_user,
    get_all_user_balances,
    get_all_user_positions,
    get_balance_for_user,
    get_market_data_for_user,
    get_orders_for_user,
    get_positions_for_user,
    get_trades_for_user,
    modify_order_for_user,
    multi_user_broker_manager,
    place_order_for_user,
    remove_user_broker,
)

__all__ = [
    "BrokerOperationResult",
    "MultiUserBrokerManager",
    "add_user_broker",
    "cancel_order_for_user",
    "get_all_user_balances",
    "get_all_user_positions",
    "get_balance_for_user",
    "get_market_data_for_user",
    "get_orders_for_user",
    "get_positions_for_user",
    "get_trades_for_user",
    "modify_order_for_user",
    "multi_user_broker_manager",
    "place_order_for_user",
    "remove_user_broker",
]
