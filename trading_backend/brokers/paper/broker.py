"""``PaperBroker``: the ``Broker`` interface over a simulated exchange account.

Why it exists: every layer above the adapters (execution, risk, strategies, the API) must
be exercisable end to end without a real broker, real money or the internet, and paper
trading must survive a server restart. The broker therefore:

* trades against ``context.market``, a ``SimulatedMarket`` shared by every paper account
  in the process (or a private one seeded from ``settings["seed"]`` when none is given);
* keeps its whole account (``PaperAccount``) in ``context.state_store`` under
  ``paper:<config_id>``, loaded by ``authenticate()`` and changed only inside the store's
  lock (``persistence.AccountPersistence``), so several processes (issue #7's workers)
  can share one account: each change first catches up with the others' changes, and an
  order is filled, cancelled or placed once whichever process acts;
* re-checks resting orders on every market update through a market listener registered
  by ``authenticate()`` and removed by ``close()``;
* pushes ``OrderUpdate``s (OPEN, then PARTIALLY_FILLED / FILLED with their fills,
  CANCELLED, EXPIRED) to the update handler.

Several processes: each has its own ``SimulatedMarket``, so prices differ between
processes (acceptable for a paper market) and a tick fills resting orders at the price
of the process whose market ticked. Ticks of every process check the account's resting
orders; the lock and the revision make the second one see an order the first filled.
An update is emitted only by the process that made the change. On a shared store
(PostgreSQL) reads (orders, trades, positions, balance) catch up first (one small read
when nothing changed), and ticks re-read the account every ``paper_sync_seconds`` (a
``BrokerContext.extras`` entry, default 1) to see orders other processes placed. On
SQLite (one process) reads never touch the database: the copy is the account, and the
engine's one connection may be held by the caller (the risk check reads the balance
inside the order service's transaction). ``sync()`` catches up on any store.

Concurrency: one ``asyncio.Lock`` serialises account mutations and saves. Updates are
queued while the lock is held and delivered after it is released, in order, by a single
drainer — so a handler may call back into the broker (``get_order``, even
``place_order``) without deadlocking, and never sees updates out of order. A handler's
exception is logged, not propagated: the order has taken effect either way. A failed
save raises ``BrokerTimeout`` (the change may or may not be committed; the next change
reloads the account from the store).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import structlog

from trading_backend.brokers.base import (
    Broker,
    BrokerAuthError,
    BrokerConfigData,
    BrokerContext,
    BrokerOrder,
    BrokerOrderState,
    BrokerRejected,
    OrderUpdate,
)
from trading_backend.brokers.paper.exchange import PaperAccount
from trading_backend.brokers.paper.market import Quote, SimulatedMarket
from trading_backend.brokers.paper.persistence import AccountPersistence, Change
from trading_backend.brokers.paper.settings import KNOWN_KEYS, PaperSettings
from trading_backend.domain import Bar, ErrorCode, Fill, OrderType, Timeframe

__all__ = ["PaperBroker"]

log = structlog.get_logger(__name__)


class PaperBroker(Broker):
    """A simulated broker account; see the module docstring."""

    name: ClassVar[str] = "paper"

    def __init__(self, config: BrokerConfigData, context: BrokerContext | None = None) -> None:
        super().__init__(config, context)
        self.settings = PaperSettings.from_mapping(config.settings)
        unknown = sorted(set(config.settings or {}) - KNOWN_KEYS)
        if unknown:
            log.warning(
                "paper: ignoring unknown settings", config_id=config.config_id, keys=unknown
            )
        market = self.context.market
        if market is None:
            market = SimulatedMarket(seed=self.settings.seed)
        elif not isinstance(market, SimulatedMarket):
            raise TypeError("context.market must be a SimulatedMarket for the paper broker")
        self.market: SimulatedMarket = market
        self._lock = asyncio.Lock()
        self._account: PaperAccount | None = None
        self._session_valid = False
        self._listening = False
        self._outbox: deque[OrderUpdate] = deque()
        self._draining = False
        self._drainer: asyncio.Task[object] | None = None
        self._queued = 0  # updates ever queued
        self._delivered = 0  # updates ever handed to the handler
        self._delivery = asyncio.Condition()
        self._store = AccountPersistence(self.context.state_store, self.state_key)
        self.sync_seconds = float(self.context.extras.get("paper_sync_seconds", 1.0))
        self._synced_at = time.monotonic()

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> None:
        """Reject a bad paper config when it is created (``BrokerRejected``, VALIDATION_ERROR)."""
        PaperSettings.from_mapping(settings)

    @property
    def state_key(self) -> str:
        return f"paper:{self.config.config_id}"

    # -- session ---------------------------------------------------------------------------
    async def authenticate(self) -> bool:
        """Always succeeds (credentials are ignored); loads the saved account the first time."""
        async with self._lock:
            if self._account is None:
                account = PaperAccount(
                    self.config.config_id, self.config.user_id, self.settings, self.market
                )
                # Loads the saved account, or saves the new one (pinning the opening
                # capital: later settings changes do not rewrite it); expires stale orders.
                now = datetime.now(UTC)
                stale = await self._store.mutate(account, lambda a: a.expire_day_orders(now))
                self._synced_at = time.monotonic()
                self._account = account
                self._queue_updates(stale)
            if not self._listening:
                self.market.add_listener(self._on_quotes)
                self._listening = True
            self._session_valid = True
        return True

    async def is_session_valid(self) -> bool:
        return self._session_valid

    async def logout(self) -> None:
        """End the session. Like a real exchange, resting orders keep working (and filling)
        until ``close()`` detaches the account from the market."""
        self._session_valid = False

    async def close(self) -> None:
        self._session_valid = False
        if self._listening:
            self.market.remove_listener(self._on_quotes)
            self._listening = False
        await self._drain()

    def _require(self) -> PaperAccount:
        if self._account is None or not self._session_valid:
            raise BrokerAuthError(
                f"paper account {self.config.config_id} has no session: call authenticate()"
            )
        return self._account

    # -- plumbing --------------------------------------------------------------------------
    async def _change(self, account: PaperAccount, change: Change) -> int:
        """Apply ``change`` through the store (lock held); returns the update count the
        caller must see delivered."""
        updates = await self._store.mutate(account, change)
        self._synced_at = time.monotonic()
        return self._queue_updates(updates)

    async def sync(self) -> None:
        """Catch up with changes other processes (or other instances) made to this account,
        whatever the store: tests and tools call it before reading balance or positions."""
        account = self._account
        if account is None:
            return
        async with self._lock:
            await self._store.refresh(account, force=True)
            self._synced_at = time.monotonic()

    async def _fresh(self) -> PaperAccount:
        """The account caught up with other processes' changes (on a shared store)."""
        account = self._require()
        if self._store.shared:
            async with self._lock:
                await self._store.refresh(account)
                self._synced_at = time.monotonic()
        return account

    def _queue_updates(self, updates: list[OrderUpdate]) -> int:
        """Queue updates (lock held); returns the count the caller must see delivered."""
        self._outbox.extend(updates)
        self._queued += len(updates)
        return self._queued

    async def _drain(self, through: int | None = None) -> None:
        """Deliver queued updates in order, by one sender at a time.

        With ``through``, also wait until every update up to that count has been delivered,
        even by another sender: so when ``place_order`` returns, the caller has already
        received the updates it caused (a MARKET order's fills), whatever else is running.
        A handler calling back into the broker is not made to wait for itself.
        """
        if not self._draining:
            self._draining = True
            self._drainer = asyncio.current_task()
            try:
                while self._outbox:
                    update = self._outbox.popleft()
                    try:
                        await self._emit(update)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception(
                            "paper: order update handler failed",
                            config_id=self.config.config_id,
                            broker_order_id=update.state.broker_order_id,
                        )
                    self._delivered += 1
                    async with self._delivery:
                        self._delivery.notify_all()
            finally:
                self._draining = False
                self._drainer = None
        if through is None or asyncio.current_task() is self._drainer:
            return
        async with self._delivery:
            await self._delivery.wait_for(lambda: self._delivered >= through or not self._draining)
        if self._delivered < through and self._outbox:
            await self._drain(through)

    async def _on_quotes(self, quotes: list[Quote]) -> None:
        account = self._account
        if account is None:
            return
        async with self._lock:
            try:
                if self._store.shared and time.monotonic() - self._synced_at >= self.sync_seconds:
                    # Orders other processes placed rest here too: see them now and then.
                    await self._store.refresh(account)
                    self._synced_at = time.monotonic()
                if not account.would_change(quotes):
                    return  # the common tick: no transaction at all
                through = await self._change(account, lambda a: a.on_quotes(quotes)[0])
            except Exception:
                log.exception(
                    "paper: applying a market update failed", config_id=self.config.config_id
                )
                return
        await self._drain(through)

    # -- orders ----------------------------------------------------------------------------
    async def place_order(self, order: BrokerOrder) -> str:
        account = self._require()
        placed: list[str] = []

        def place(a: PaperAccount) -> list[OrderUpdate]:
            broker_order_id, updates = a.place(order)
            placed.append(broker_order_id)
            return updates

        async with self._lock:
            through = await self._change(account, place)
        await self._drain(through)
        return placed[-1]

    async def modify_order(
        self,
        broker_order_id: str,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
    ) -> None:
        account = self._require()
        async with self._lock:
            through = await self._change(
                account,
                lambda a: a.modify(
                    broker_order_id,
                    quantity=quantity,
                    price=price,
                    trigger_price=trigger_price,
                    order_type=order_type,
                ),
            )
        await self._drain(through)

    async def cancel_order(self, broker_order_id: str) -> None:
        account = self._require()
        async with self._lock:
            through = await self._change(account, lambda a: a.cancel(broker_order_id))
        await self._drain(through)

    async def expire_day_orders(self, now: datetime | None = None) -> list[BrokerOrderState]:
        """Move working DAY orders to EXPIRED: all of them, or with ``now`` those placed
        before their exchange's latest session close (the runtime calls this at each close,
        and ``authenticate`` catches up after a restart).

        Works without a valid session (a logged-out account's orders expire too), but
        needs the account loaded by an earlier ``authenticate()``.
        """
        account = self._account
        if account is None:
            raise BrokerAuthError(
                f"paper account {self.config.config_id} was never loaded: call authenticate()"
            )
        expired: list[OrderUpdate] = []

        def expire(a: PaperAccount) -> list[OrderUpdate]:
            expired.extend(a.expire_day_orders(now))
            return expired

        async with self._lock:
            through = await self._change(account, expire)
        await self._drain(through)
        return [u.state for u in expired]

    async def get_order(self, broker_order_id: str) -> BrokerOrderState:
        account = await self._fresh()
        return account.order_state(account.entry(broker_order_id))

    async def get_orders(self) -> list[BrokerOrderState]:
        account = await self._fresh()
        return [account.order_state(e) for e in account.orders.values()]

    async def find_order_by_client_id(self, client_order_id: str) -> BrokerOrderState | None:
        account = await self._fresh()
        entry = account.by_client_id(client_order_id)
        return account.order_state(entry) if entry is not None else None

    async def get_trades(self) -> list[Fill]:
        return list((await self._fresh()).fills)

    def charges_breakdown(self, trade_id: str) -> dict[str, str] | None:
        """The per-component charges of one paper trade (strings, as saved)."""
        account = self._account
        if account is None:
            return None
        detail = account.charges_detail.get(trade_id)
        return dict(detail) if detail is not None else None

    # -- portfolio and market data ---------------------------------------------------------
    async def get_positions(self) -> list[dict[str, Any]]:
        return (await self._fresh()).positions_view()

    async def get_balance(self) -> dict[str, Any]:
        return (await self._fresh()).balance_view()

    async def get_market_data(self, symbol: str, exchange: str) -> dict[str, Any]:
        return self._require().market_data(symbol, exchange)

    async def get_historical_candles(
        self,
        symbol: str,
        exchange: str,
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        """The market's synthetic history (``brokers.paper.history``): the same request
        always gives the same bars. Needs no session, like a real broker's public data.
        Generated in a thread: decades of daily bars take a second of numpy work."""
        try:
            return await asyncio.to_thread(
                self.market.historical_bars, symbol, exchange, timeframe, start, end
            )
        except KeyError:
            raise BrokerRejected(
                f"unknown instrument {exchange}:{symbol}",
                ErrorCode.INSTRUMENT_NOT_FOUND,
                symbol=symbol,
                exchange=str(exchange),
            ) from None
        except ValueError as exc:
            raise BrokerRejected(str(exc), ErrorCode.VALIDATION_ERROR) from None
