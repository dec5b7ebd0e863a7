"""The seed's Python API: a multi-user broker manager whose every call returns a
``BrokerOperationResult`` instead of raising, so scripts can branch on ``error_code``.

    from trading_backend.core.multi_user_broker_manager import multi_user_broker_manager
    await multi_user_broker_manager.initialize()

It is a thin facade over the runtime's services; orders go through the same order path
(risk, persistence, queue, worker) as the REST API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from trading_backend.brokers.base import Broker, BrokerError, BrokerOrder
from trading_backend.brokers.sessions import BrokerSession
from trading_backend.domain import DomainError, ErrorCode, OrderStatus, OrderType
from trading_backend.domain.money import to_decimal
from trading_backend.execution.order_service import OrderResult
from trading_backend.execution.views import order_to_dict, trade_to_dict
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings, get_settings
from trading_backend.storage.repositories import UserScopedReader, order_from_row

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class BrokerOperationResult:
    success: bool
    message: str = ""
    data: dict[str, Any] | None = None
    error_code: str | None = None
    execution_time: float = 0.0
    user_id: str | None = None
    broker_name: str = "unknown"
    config_id: str | None = None
    session_id: str | None = None


class MultiUserBrokerManager:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime
        self._owns_runtime = False

    # -- lifecycle -------------------------------------------------------------------------
    async def initialize(
        self, runtime: Runtime | None = None, settings: Settings | None = None
    ) -> bool:
        """Attach to a running runtime, or build and start an embedded one from settings."""
        try:
            if runtime is not None:
                self.runtime = runtime
            if self.runtime is None:
                self.runtime = Runtime(settings or get_settings())
                self._owns_runtime = True
            if not self.runtime.started:
                await self.runtime.start()
            return True
        except Exception:
            log.exception("manager_initialize_failed")
            return False

    async def shutdown(self) -> None:
        if self.runtime is not None and self._owns_runtime:
            await self.runtime.stop()
            self.runtime = None
            self._owns_runtime = False

    def _rt(self) -> Runtime:
        if self.runtime is None:
            raise DomainError(
                "manager not initialised: await multi_user_broker_manager.initialize()",
                ErrorCode.SYSTEM_ERROR,
            )
        return self.runtime

    async def _user_id(self, user: str) -> str:
        info = await self._rt().accounts.resolve_user(user)
        if info is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
        return info.id

    async def _run(
        self,
        user: str,
        config_id: str | None,
        operation: Any,
        success_message: str,
    ) -> BrokerOperationResult:
        """Run ``operation(user_id) -> (data, session)`` and wrap the outcome."""
        started = time.perf_counter()
        result = BrokerOperationResult(success=False, user_id=user, config_id=config_id)
        try:
            user_id = await self._user_id(user)
            result.user_id = user_id
            data, session = await operation(user_id)
            result.success = True
            result.message = success_message
            result.data = data
            if session is not None:
                result.broker_name = session.broker_name.value
                result.session_id = session.session_id
        except _Failed as failed:
            result.message = failed.message
            result.error_code = failed.code
            result.data = failed.data
            if failed.session is not None:
                result.broker_name = failed.session.broker_name.value
                result.session_id = failed.session.session_id
        except DomainError as exc:
            result.message = exc.message
            result.error_code = exc.code.value
        except Exception as exc:
            log.exception("manager_operation_failed")
            result.message = f"system error: {type(exc).__name__}"
            result.error_code = ErrorCode.SYSTEM_ERROR.value
        result.execution_time = time.perf_counter() - started
        return result

    async def _session(self, user_id: str, config_id: str) -> BrokerSession:
        return await self._rt().sessions.open(user_id, config_id)

    # -- sessions -------------------------------------------------------------------------
    async def add_user_broker(self, user_id: str, config_id: str) -> BrokerOperationResult:
        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession]:
            session = await self._session(uid, config_id)
            return session.to_dict(), session

        return await self._run(user_id, config_id, op, "broker session ready")

    async def remove_user_broker(self, user_id: str, config_id: str) -> BrokerOperationResult:
        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession]:
            session = await self._rt().sessions.close(uid, config_id)
            return {"session_id": session.session_id, "config_id": config_id}, session

        return await self._run(user_id, config_id, op, "broker session removed")

    async def get_user_brokers(self, user_id: str) -> list[BrokerSession]:
        try:
            uid = await self._user_id(user_id)
        except DomainError:
            return []
        return self._rt().sessions.sessions(uid)

    async def get_system_status(self) -> dict[str, Any]:
        rt = self._rt()
        return rt.sessions.system_status(rt.background_tasks)

    @asynccontextmanager
    async def broker_session(self, user_id: str, config_id: str) -> AsyncIterator[Broker]:
        """Direct broker access with session validation and activity/error tracking."""
        uid = await self._user_id(user_id)
        session = await self._session(uid, config_id)
        try:
            yield session.broker
        except BrokerError as exc:
            self._rt().sessions.record_error(session, exc)
            raise
        finally:
            session.touch()

    # -- trading --------------------------------------------------------------------------
    async def place_order_for_user(
        self,
        user_id: str,
        broker_config_id: str,
        order: BrokerOrder,
        wait: float | None = None,
    ) -> BrokerOperationResult:
        rt = self._rt()

        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession | None]:
            result = await rt.orders.place(
                uid,
                broker_config_id,
                order,
                wait=rt.settings.order_wait_seconds if wait is None else wait,
            )
            data = order_to_dict(result.order)
            session = rt.sessions.find(uid, broker_config_id)
            if result.order.status is OrderStatus.REJECTED:
                raise _Failed(
                    result.order.error_code or ErrorCode.INVALID_ORDER.value,
                    result.order.message or "order rejected",
                    data,
                    session,
                )
            return data, session

        return await self._run(user_id, broker_config_id, op, "order placed")

    async def modify_order_for_user(
        self,
        user_id: str,
        order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | float | None = None,
        trigger_price: Decimal | float | None = None,
        order_type: OrderType | str | None = None,
        wait: float | None = None,
    ) -> BrokerOperationResult:
        rt = self._rt()

        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession | None]:
            result = await rt.orders.modify(
                uid,
                order_id,
                quantity=quantity,
                price=None if price is None else to_decimal(price, "price"),
                trigger_price=None if trigger_price is None else to_decimal(trigger_price),
                order_type=None if order_type is None else OrderType(order_type),
                wait=rt.settings.order_wait_seconds if wait is None else wait,
            )
            return self._order_outcome(uid, result)

        return await self._run(user_id, None, op, "order modified")

    async def cancel_order_for_user(
        self, user_id: str, order_id: str, wait: float | None = None
    ) -> BrokerOperationResult:
        rt = self._rt()

        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession | None]:
            result = await rt.orders.cancel(
                uid, order_id, wait=rt.settings.order_wait_seconds if wait is None else wait
            )
            return self._order_outcome(uid, result)

        return await self._run(user_id, None, op, "order cancelled")

    def _order_outcome(
        self, uid: str, result: OrderResult
    ) -> tuple[dict[str, Any], BrokerSession | None]:
        data = order_to_dict(result.order)
        session = self._rt().sessions.find(uid, result.order.config_id)
        if result.outcome is not None and not result.outcome.ok:
            raise _Failed(
                result.outcome.error_code or ErrorCode.SYSTEM_ERROR.value,
                result.outcome.message or "request refused",
                data,
                session,
            )
        return data, session

    async def get_orders_for_user(
        self, user_id: str, config_id: str | None = None, status: str | None = None
    ) -> BrokerOperationResult:
        """The order book (newest first) from our records, every state change included."""
        rt = self._rt()

        async def op(uid: str) -> tuple[dict[str, Any], None]:
            async with rt.db() as session:
                rows = await UserScopedReader(session, uid).orders(config_id, status)
                return {"orders": [order_to_dict(order_from_row(r)) for r in rows]}, None

        return await self._run(user_id, config_id, op, "orders")

    async def get_trades_for_user(
        self, user_id: str, config_id: str | None = None
    ) -> BrokerOperationResult:
        rt = self._rt()

        async def op(uid: str) -> tuple[dict[str, Any], None]:
            async with rt.db() as session:
                rows = await UserScopedReader(session, uid).trades(config_id)
                return {"trades": [trade_to_dict(r) for r in rows]}, None

        return await self._run(user_id, config_id, op, "trades")

    async def get_positions_for_user(self, user_id: str, config_id: str) -> BrokerOperationResult:
        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession]:
            session = await self._session(uid, config_id)
            return {"positions": await session.broker.get_positions()}, session

        return await self._run(user_id, config_id, op, "positions")

    async def get_balance_for_user(self, user_id: str, config_id: str) -> BrokerOperationResult:
        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession]:
            session = await self._session(uid, config_id)
            return await session.broker.get_balance(), session

        return await self._run(user_id, config_id, op, "balance")

    async def get_market_data_for_user(
        self, user_id: str, config_id: str, symbol: str, exchange: str = "NSE"
    ) -> BrokerOperationResult:
        async def op(uid: str) -> tuple[dict[str, Any], BrokerSession]:
            session = await self._session(uid, config_id)
            return await session.broker.get_market_data(symbol, exchange), session

        return await self._run(user_id, config_id, op, "market data")

    async def _config_ids(self, user_id: str) -> tuple[str, list[str]]:
        uid = await self._user_id(user_id)
        configs = await self._rt().accounts.list_configs(uid)
        return uid, [c["config_id"] for c in configs]

    async def get_all_user_positions(self, user_id: str) -> dict[str, BrokerOperationResult]:
        try:
            uid, config_ids = await self._config_ids(user_id)
        except DomainError:
            return {}
        return {cid: await self.get_positions_for_user(uid, cid) for cid in config_ids}

    async def get_all_user_balances(self, user_id: str) -> dict[str, BrokerOperationResult]:
        try:
            uid, config_ids = await self._config_ids(user_id)
        except DomainError:
            return {}
        return {cid: await self.get_balance_for_user(uid, cid) for cid in config_ids}


class _Failed(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        data: dict[str, Any] | None,
        session: BrokerSession | None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.session = session


multi_user_broker_manager = MultiUserBrokerManager()


async def add_user_broker(user_id: str, config_id: str) -> BrokerOperationResult:
    return await multi_user_broker_manager.add_user_broker(user_id, config_id)


async def remove_user_broker(user_id: str, config_id: str) -> BrokerOperationResult:
    return await multi_user_broker_manager.remove_user_broker(user_id, config_id)


async def place_order_for_user(
    user_id: str, broker_config_id: str, order: BrokerOrder
) -> BrokerOperationResult:
    return await multi_user_broker_manager.place_order_for_user(user_id, broker_config_id, order)


async def get_positions_for_user(user_id: str, config_id: str) -> BrokerOperationResult:
    return await multi_user_broker_manager.get_positions_for_user(user_id, config_id)


async def get_balance_for_user(user_id: str, config_id: str) -> BrokerOperationResult:
    return await multi_user_broker_manager.get_balance_for_user(user_id, config_id)


async def get_all_user_positions(user_id: str) -> dict[str, BrokerOperationResult]:
    return await multi_user_broker_manager.get_all_user_positions(user_id)


async def get_all_user_balances(user_id: str) -> dict[str, BrokerOperationResult]:
    return await multi_user_broker_manager.get_all_user_balances(user_id)


async def get_market_data_for_user(
    user_id: str, config_id: str, symbol: str, exchange: str = "NSE"
) -> BrokerOperationResult:
    return await multi_user_broker_manager.get_market_data_for_user(
        user_id, config_id, symbol, exchange
    )


async def modify_order_for_user(
    user_id: str, order_id: str, **changes: Any
) -> BrokerOperationResult:
    return await multi_user_broker_manager.modify_order_for_user(user_id, order_id, **changes)


async def cancel_order_for_user(user_id: str, order_id: str) -> BrokerOperationResult:
    return await multi_user_broker_manager.cancel_order_for_user(user_id, order_id)


async def get_orders_for_user(
    user_id: str, config_id: str | None = None, status: str | None = None
) -> BrokerOperationResult:
    return await multi_user_broker_manager.get_orders_for_user(user_id, config_id, status)


async def get_trades_for_user(user_id: str, config_id: str | None = None) -> BrokerOperationResult:
    return await multi_user_broker_manager.get_trades_for_user(user_id, config_id)
