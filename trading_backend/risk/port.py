"""The risk port every order passes through before it is persisted and queued."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from trading_backend.domain import BrokerOrder, DomainError, ErrorCode, Order


class RiskRejected(DomainError):
    code = ErrorCode.RISK_REJECTED


class RiskCheck(Protocol):
    def guard(self, user_id: str) -> AbstractAsyncContextManager[None]:
        """Held by the order path from the check until the order (or modification) is
        stored: in a cluster, the user's orders are checked one at a time across every
        process, each against the database's picture of the user's working orders and
        positions. A no-op in one process, where the check reserves synchronously."""
        ...

    async def check(
        self,
        user_id: str,
        config_id: str,
        order: BrokerOrder,
        *,
        order_id: str,
        intentional: bool = False,
        square_off: bool = False,
    ) -> None:
        """Raise ``RiskRejected`` to refuse the order; return to accept it, with its
        exposure and funds reserved under ``order_id``. ``intentional``: not a duplicate
        even if it looks like one; ``square_off``: closes a position (allowed in any
        trading state)."""
        ...

    def release(self, order_id: str) -> None:
        """Undo the reservation of an accepted order that was not persisted after all."""
        ...

    async def check_modify(self, current: Order, modified: Order) -> None:
        """Raise ``RiskRejected`` if ``modified`` (a working order's new terms) would not be
        accepted as an order now; its reservation follows the order's next update."""
        ...


class PassThroughRisk:
    """Accepts every well-formed order (tests of the order path without limits)."""

    def guard(self, user_id: str) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def check(
        self,
        user_id: str,
        config_id: str,
        order: BrokerOrder,
        *,
        order_id: str,
        intentional: bool = False,
        square_off: bool = False,
    ) -> None:
        return None

    def release(self, order_id: str) -> None:
        return None

    async def check_modify(self, current: Order, modified: Order) -> None:
        return None
