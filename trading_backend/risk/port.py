"""The risk port every order passes through before it is persisted and queued."""

from __future__ import annotations

from typing import Protocol

from trading_backend.domain import BrokerOrder, DomainError, ErrorCode


class RiskRejected(DomainError):
    code = ErrorCode.RISK_REJECTED


class RiskCheck(Protocol):
    async def check(self, user_id: str, config_id: str, order: BrokerOrder) -> None:
        """Raise ``RiskRejected`` to refuse the order; return to accept it."""
        ...


class PassThroughRisk:
    """Accepts every well-formed order (the real engine replaces this)."""

    async def check(self, user_id: str, config_id: str, order: BrokerOrder) -> None:
        return None
