"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

from trading_backend.domain import BrokerOrder
from trading_backend.runtime import Runtime


async def user_with_config(
    runtime: Runtime, username: str = "alice", config_id: str | None = None, **settings: Any
) -> tuple[str, str]:
    user = await runtime.accounts.create_user(username, "correct-horse-battery")
    config = await runtime.accounts.create_config(
        user.id, "paper", f"{username} paper", config_id=config_id, settings=settings or None
    )
    return user.id, config["config_id"]


def order(**kw: Any) -> BrokerOrder:
    base: dict[str, Any] = {
        "symbol": "TCS",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "DELIVERY",
        "quantity": 1,
    }
    base.update(kw)
    return BrokerOrder(**base)
