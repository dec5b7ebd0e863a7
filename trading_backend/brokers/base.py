"""The one interface every broker adapter implements, and the types it speaks.

Adapters translate between a broker's wire protocol and these types; nothing above
this layer knows which broker it talks to. ``BrokerOrder`` is re-exported here because
the seed's examples import it from ``brokers.base``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    ErrorCode,
    Fill,
    OrderStatus,
    OrderType,
    Timeframe,
)
from trading_backend.domain.money import ZERO

__all__ = [
    "Broker",
    "BrokerAuthError",
    "BrokerConfigData",
    "BrokerContext",
    "BrokerError",
    "BrokerName",
    "BrokerNotSupported",
    "BrokerOrder",
    "BrokerOrderState",
    "BrokerRejected",
    "BrokerTimeout",
    "BrokerUnavailable",
    "InsufficientFunds",
    "LockedStateView",
    "LockingStateStore",
    "OrderUpdate",
    "OrderUpdateHandler",
    "StateStore",
]


class BrokerName(str):
    """A broker's registry name. A ``str`` with ``.value`` so code written for an enum works,
    while outside packages can add brokers with names we never heard of."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str(self)

    PAPER: ClassVar[BrokerName]
    ANGEL_ONE: ClassVar[BrokerName]
    ZERODHA: ClassVar[BrokerName]
    UPSTOX: ClassVar[BrokerName]
    CCXT: ClassVar[BrokerName]


BrokerName.PAPER = BrokerName("paper")
BrokerName.ANGEL_ONE = BrokerName("angel_one")
BrokerName.ZERODHA = BrokerName("zerodha")
BrokerName.UPSTOX = BrokerName("upstox")
BrokerName.CCXT = BrokerName("ccxt")


class BrokerError(DomainError):
    """A failure reported by (or on the way to) a broker."""

    code = ErrorCode.SYSTEM_ERROR


class BrokerAuthError(BrokerError):
    code = ErrorCode.AUTH_ERROR


class InsufficientFunds(BrokerError):
    code = ErrorCode.INSUFFICIENT_FUNDS


class BrokerRejected(BrokerError):
    """The broker refused the request (bad symbol, bad price, not modifiable...)."""

    code = ErrorCode.INVALID_ORDER


class BrokerNotSupported(BrokerError):
    """The broker does not offer this feature (e.g. historical candles): asking again will
    not help, so it is a client error (422), not an outage."""

    code = ErrorCode.BROKER_NOT_SUPPORTED


class BrokerUnavailable(BrokerError):
    """The broker could not be reached; the request certainly did not take effect."""

    code = ErrorCode.BROKER_UNAVAILABLE


class BrokerTimeout(BrokerError):
    """The request may or may not have taken effect: reconcile, never resend."""

    code = ErrorCode.TIMEOUT


@dataclass(frozen=True, slots=True)
class BrokerConfigData:
    """Everything an adapter needs to open a session for one user's account."""

    config_id: str
    user_id: str
    broker: str
    name: str = ""
    credentials: dict[str, str] = field(default_factory=dict)  # decrypted, never logged
    settings: dict[str, Any] = field(default_factory=dict)


class StateStore(Protocol):
    """Durable key-value storage an adapter may use (the paper exchange keeps its book here)."""

    async def load(self, key: str) -> dict[str, Any] | None: ...

    async def save(self, key: str, state: dict[str, Any]) -> None: ...


# -- paper-mp (issue #7) --
class LockedStateView(Protocol):
    """What ``LockingStateStore.locked(key)`` yields: ``state`` (the key's value read
    under the lock, ``None`` if absent), reads of other keys in the same transaction, and
    ``stage`` for writes applied together when the block ends without an exception."""

    state: dict[str, Any] | None

    def stage(self, items: dict[str, dict[str, Any]]) -> None: ...

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]: ...


class LockingStateStore(StateStore, Protocol):
    """A store several processes can share: ``locked(key)`` holds the key exclusively for
    a read-decide-write block (``storage.state_store.DatabaseStateStore``)."""

    def locked(self, key: str) -> AbstractAsyncContextManager[LockedStateView]: ...

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]: ...

    async def save_many(self, items: dict[str, dict[str, Any]]) -> None: ...


# -- end paper-mp


@dataclass(slots=True)
class BrokerContext:
    """Process-wide services handed to adapters (shared market, state storage)."""

    market: Any = None
    state_store: StateStore | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BrokerOrderState:
    """An order as the broker sees it: the source of truth when reconciling."""

    broker_order_id: str
    status: OrderStatus
    symbol: str
    exchange: str
    side: str
    order_type: OrderType
    product_type: str
    quantity: int
    filled_quantity: int = 0
    average_price: Decimal = ZERO
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    client_order_id: str | None = None
    message: str | None = None
    error_code: str | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class OrderUpdate:
    """Pushed by an adapter whenever an order changes at the broker."""

    config_id: str
    state: BrokerOrderState
    fills: list[Fill] = field(default_factory=list)  # new executions carried by this update


OrderUpdateHandler = Callable[[OrderUpdate], Awaitable[None]]

# -- shared sessions (issue #7) --
# ``gate(renew)``: run ``renew`` (a login or token refresh) under the cross-process lock,
# unless another process has stored fresher tokens meanwhile (then those are restored
# instead); the tokens are stored afterwards. See ``brokers/session_store.py``.
SessionGate = Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]
# -- end shared sessions


class Broker(abc.ABC):
    """One authenticated session with one broker account.

    Implementations must be safe to call concurrently from one event loop. Methods raise
    ``BrokerError`` subclasses; ``BrokerTimeout`` from ``place_order`` means the order's fate
    is unknown and the caller must reconcile (``find_order_by_client_id``), never resend.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: BrokerConfigData, context: BrokerContext | None = None) -> None:
        self.config = config
        self.context = context or BrokerContext()
        self._update_handler: OrderUpdateHandler | None = None

    def set_order_update_handler(self, handler: OrderUpdateHandler | None) -> None:
        self._update_handler = handler

    async def _emit(self, update: OrderUpdate) -> None:
        if self._update_handler is not None:
            await self._update_handler(update)

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> None:
        """Raise ``BrokerRejected`` (or ``ValueError``) for settings this adapter cannot use,
        so a bad config fails when it is created rather than at its first session."""
        return None

    # -- session -------------------------------------------------------------------------
    @abc.abstractmethod
    async def authenticate(self) -> bool:
        """Log in (or restore a session). Raises ``BrokerAuthError`` on bad credentials."""

    @abc.abstractmethod
    async def is_session_valid(self) -> bool:
        """Cheap health check: False when the session expired and needs ``authenticate``."""

    async def logout(self) -> None:  # noqa: B027 - optional for brokers without sessions
        """End the broker session."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release network resources and background tasks."""

    # -- shared sessions (issue #7) --
    def export_session(self) -> dict[str, Any] | None:
        """The session's tokens and their expiry (JSON-able), so another process can use
        the session without logging in again (brokers limit logins). Stored encrypted by
        ``BrokerSessionManager``; never log it. None (the default): nothing to share."""
        return None

    def restore_session(self, data: dict[str, Any]) -> bool:
        """Adopt tokens exported by ``export_session`` (maybe in another process) if they
        are still valid for this account; False leaves the session as it was. After True,
        ``authenticate()`` must use the restored session rather than log in again."""
        return False

    def session_account(self) -> str:
        """The broker-side account this session logs in to: logins are serialised across
        processes per (broker, account). Default: the config id."""
        return self.config.config_id

    def set_session_gate(self, gate: SessionGate | None) -> bool:
        """Route every later login/token refresh through ``gate`` (see ``SessionGate``).
        Returns whether the adapter does; if not, ``BrokerSessionManager`` serialises its
        ``authenticate()`` calls itself."""
        return False

    # -- end shared sessions

    # -- orders --------------------------------------------------------------------------
    @abc.abstractmethod
    async def place_order(self, order: BrokerOrder) -> str:
        """Place an order; returns the broker's order id. ``order.client_order_id`` is sent
        as the broker-side tag so the order can be found again after a timeout."""

    @abc.abstractmethod
    async def modify_order(
        self,
        broker_order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
    ) -> None: ...

    @abc.abstractmethod
    async def cancel_order(self, broker_order_id: str) -> None: ...

    @abc.abstractmethod
    async def get_order(self, broker_order_id: str) -> BrokerOrderState: ...

    @abc.abstractmethod
    async def get_orders(self) -> list[BrokerOrderState]: ...

    async def find_order_by_client_id(self, client_order_id: str) -> BrokerOrderState | None:
        for state in await self.get_orders():
            if state.client_order_id == client_order_id:
                return state
        return None

    @abc.abstractmethod
    async def get_trades(self) -> list[Fill]: ...

    async def expire_day_orders(self, now: datetime | None = None) -> list[BrokerOrderState]:
        """Called at each exchange session close. Real exchanges expire DAY orders
        themselves (we learn it from updates and reconciliation), so the default does
        nothing; simulated brokers expire theirs here."""
        return []

    # -- portfolio and market data ---------------------------------------------------------
    @abc.abstractmethod
    async def get_positions(self) -> list[dict[str, Any]]:
        """Net positions: ``[{symbol, exchange, product_type, quantity, average_price,
        last_price, pnl, realised_pnl, unrealised_pnl, ...}]``."""

    @abc.abstractmethod
    async def get_balance(self) -> dict[str, Any]:
        """``{available_cash, buying_power, used_margin, total_balance, ...}``."""

    @abc.abstractmethod
    async def get_market_data(self, symbol: str, exchange: str) -> dict[str, Any]:
        """``{symbol, exchange, ltp, change, change_percent, open, high, low, close, volume,
        bid, ask, timestamp}``."""

    async def get_historical_candles(
        self,
        symbol: str,
        exchange: str,
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        """Complete bars of ``timeframe`` starting in ``[start, end)`` (UTC), oldest first,
        aligned to the windows of ``trading_backend.marketdata.bars``.

        Callers should go through ``marketdata.candles.CandleService``, which caches the
        answer in the database so each bar is fetched once. Adapters may refuse ranges
        larger than their broker allows (``BrokerRejected`` with ``VALIDATION_ERROR``).
        The default raises ``BrokerNotSupported``: a broker without a history API.
        """
        raise BrokerNotSupported(
            f"broker {self.name or type(self).__name__!r} does not provide historical candles",
            broker=self.name or type(self).__name__,
        )
