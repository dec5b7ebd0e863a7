"""Broker faults on the order path: a lost answer is reconciled, never resent; an expired
session is re-authenticated by the health monitor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.helpers import order, user_with_config
from trading_backend.brokers.base import BrokerOrder, BrokerTimeout
from trading_backend.brokers.paper import PaperBroker
from trading_backend.brokers.registry import BrokerRegistry
from trading_backend.domain import OrderStatus
from trading_backend.runtime import Runtime
from trading_backend.storage.models import OrderEventRow


class LostAnswerBroker(PaperBroker):
    """Places the order, then loses the answer and its pushed updates (a timeout after the
    broker acted, with the update stream down too)."""

    name = "lost_answer"

    async def place_order(self, order: BrokerOrder) -> str:
        handler, self._update_handler = self._update_handler, None
        try:
            await super().place_order(order)
        finally:
            self._update_handler = handler
        raise BrokerTimeout("read timed out")


class NeverArrivedBroker(PaperBroker):
    """Times out before the order reaches the exchange."""

    name = "never_arrived"
    calls = 0

    async def place_order(self, order: BrokerOrder) -> str:
        NeverArrivedBroker.calls += 1
        raise BrokerTimeout("connect timed out")


class CrashingBroker(PaperBroker):
    name = "crashing"

    async def place_order(self, order: BrokerOrder) -> str:
        raise RuntimeError("adapter bug")


@pytest.fixture(autouse=True)
def fault_brokers() -> Iterator[None]:
    for cls in (LostAnswerBroker, NeverArrivedBroker, CrashingBroker):
        BrokerRegistry.register(cls.name, cls)
    yield
    for cls in (LostAnswerBroker, NeverArrivedBroker, CrashingBroker):
        BrokerRegistry._brokers.pop(cls.name, None)


async def config_for(runtime: Runtime, broker: str) -> tuple[str, str]:
    user = await runtime.accounts.create_user(f"u_{broker}", "correct-horse-battery")
    config = await runtime.accounts.create_config(user.id, broker, broker)
    return user.id, config["config_id"]


async def test_lost_answer_is_adopted_from_the_broker(runtime: Runtime) -> None:
    user_id, config_id = await config_for(runtime, "lost_answer")
    result = await runtime.orders.place(user_id, config_id, order(quantity=2), wait=5)
    assert result.order.status is OrderStatus.FILLED
    assert result.order.broker_order_id
    session = await runtime.sessions.open(user_id, config_id)
    assert len(await session.broker.get_orders()) == 1
    assert session.error_count == 1
    async with runtime.db() as db:
        events = (
            await db.scalars(
                select(OrderEventRow.event_type).where(
                    OrderEventRow.order_id == result.order.order_id
                )
            )
        ).all()
    assert "UNKNOWN" in events and "RECONCILED" in events


async def test_order_that_never_arrived_is_rejected_not_resent(runtime: Runtime) -> None:
    NeverArrivedBroker.calls = 0
    user_id, config_id = await config_for(runtime, "never_arrived")
    result = await runtime.orders.place(user_id, config_id, order(), wait=5)
    assert result.order.status is OrderStatus.REJECTED
    assert "not resent" in (result.order.message or "")
    await runtime.worker.drain()
    await runtime.worker.reconcile_all()
    assert NeverArrivedBroker.calls == 1


async def test_adapter_crash_leaves_the_order_unknown_then_reconciled(runtime: Runtime) -> None:
    user_id, config_id = await config_for(runtime, "crashing")
    result = await runtime.orders.place(user_id, config_id, order(), wait=5)
    assert result.order.status is OrderStatus.REJECTED
    assert result.order.error_code == "BROKER_UNAVAILABLE"


async def test_health_monitor_reauthenticates_expired_sessions(runtime: Runtime) -> None:
    user_id, config_id = await user_with_config(runtime)
    session = await runtime.sessions.open(user_id, config_id)
    await session.broker.logout()  # the broker ended the session (token expiry)
    assert not await session.broker.is_session_valid()
    await runtime.sessions.check_health()
    assert session.health_status == "healthy"
    assert await session.broker.is_session_valid()
    status = runtime.sessions.system_status()
    assert status["healthy_sessions"] == 1 and status["by_broker"]["paper"]["healthy"] == 1
    placed = await runtime.orders.place(user_id, config_id, order(), wait=5)
    assert placed.order.status is OrderStatus.FILLED
