"""``PaperBroker``: the ``Broker`` interface over a simulated exchange account.

Why it exists: every layer above the adapters (execution, risk, strategies, the API) must
be exercisable end to end without a real broker, real money or the internet, and paper
trading must survive a server restart. The broker therefore:

* trades against ``context.market``, a ``SimulatedMarket`` shared by every paper account
  in the process (or a private one seeded from ``settings["seed"]`` when none is given);
* keeps its whole account (``PaperAccount``) in ``context.state_store`` under
  ``paper:<config_id>``, saved after every mutation and loaded by ``authenticate()``;
* re-checks resting orders on every market update through a market listener registered
  by ``authenticate()`` and removed by ``close()``;
* pushes ``OrderUpdate``s (OPEN, then PARTIALLY_FILLED / FILLED with their fills,
  CANCELLED, EXPIRED) to the update handler.

Concurrency: one ``asyncio.Lock`` serialises account mutations and saves. Updates are
queued while the lock is held and delivered after it is released, in order, by a single
drainer — so a handler may call back into the broker (``get_order``, even
``place_order``) without deadlocking, and never sees updates out of order. A handler's
exception is logged, not propagated: the order has taken effect either way. A failed
save is logged too (the next mutation saves the whole state again).
"""

from __future__ import annotations

import asyncio
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
from trading_backend.brokers.paper.exchange import (
    STATE_VERSION,
    PaperAccount,
    _fill_to_dict,
    _order_to_dict,
    _position_to_dict,
)
from trading_backend.brokers.paper.market import Quote, SimulatedMarket
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
                store = self.context.state_store
                if store is not None:
                    saved = await self._load_saved(store)
                    if saved:
                        account.load_state(saved)
                    else:
                        # Pin the opening capital now: later settings changes do not rewrite it.
                        await self._save(account)
                self._account = account
                stale = account.expire_day_orders(datetime.now(UTC))
                if stale:
                    await self._save(account, stale)
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
    async def _load_saved(self, store: Any) -> dict[str, Any] | None:
        head: dict[str, Any] | None = await store.load(self.state_key)
        if not head or head.get("layout") != INCREMENTAL:
            return head  # None, or a whole-account state written by a plain store
        items = await store.load_prefix(self.state_key + ":")
        orders = sorted(
            (v for k, v in items.items() if k.startswith(self.state_key + ":o:")),
            key=lambda v: v["seq"],
        )
        fills = sorted(
            (v for k, v in items.items() if k.startswith(self.state_key + ":f:")),
            key=lambda v: v["seq"],
        )
        state = {k: v for k, v in head.items() if k != "layout"}
        state["orders"] = [o["order"] for o in orders]
        state["fills"] = [f["fill"] for f in fills]
        state["charges_detail"] = {
            f["fill"]["trade_id"]: f["charges_detail"] for f in fills if f.get("charges_detail")
        }
        return state

    async def _save(self, account: PaperAccount, updates: list[OrderUpdate] | None = None) -> None:
        """Persist the account; call with the lock held.

        With a store that supports it (``save_many``/``load_prefix``), only what changed is
        written: a small head (cash, counters, positions) plus one record per order or fill
        touched by ``updates``, in one transaction. The cost of a save then stays flat as
        the day's order book grows, instead of rewriting every order ever placed.
        """
        store = self.context.state_store
        if store is None:
            return
        try:
            if not (hasattr(store, "save_many") and hasattr(store, "load_prefix")):
                await store.save(self.state_key, account.to_state())
                return
            state = account.to_state() if updates is None else None
            head = {
                "layout": INCREMENTAL,
                "version": STATE_VERSION,
                "config_id": account.config_id,
                "initial_capital": str(account.initial_capital),
                "cash": str(account.cash),
                "order_counter": account.order_counter,
                "trade_counter": account.trade_counter,
                "positions": [_position_to_dict(p) for p in account.positions.values()],
            }
            items: dict[str, dict[str, Any]] = {self.state_key: head}
            if state is not None:  # first save: everything
                order_ids = [o["order_id"] for o in state["orders"]]
                fills = list(account.fills)
            else:
                # Orders this change reported, plus every working order: a stop that
                # triggered changes its order without reporting an update.
                order_ids = list(
                    dict.fromkeys(
                        [u.state.broker_order_id for u in updates or []]
                        + [e.order.broker_order_id or "" for e in account.working()]
                    )
                )
                order_ids = [o for o in order_ids if o]
                fills = [f for u in updates or [] for f in u.fills]
            for order_id in order_ids:
                entry = account.entry(order_id)
                items[f"{self.state_key}:o:{order_id}"] = {
                    "seq": _sequence(order_id),
                    "order": _order_to_dict(entry),
                }
            for fill in fills:
                items[f"{self.state_key}:f:{fill.trade_id}"] = {
                    "seq": _sequence(fill.trade_id),
                    "fill": _fill_to_dict(fill),
                    "charges_detail": account.charges_detail.get(fill.trade_id),
                }
            await store.save_many(items)
        except Exception:
            log.exception("paper: saving the account failed", config_id=self.config.config_id)

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
            updates, changed = account.on_quotes(quotes)
            if changed:
                await self._save(account, updates)
            through = self._queue_updates(updates)
        await self._drain(through)

    # -- orders ----------------------------------------------------------------------------
    async def place_order(self, order: BrokerOrder) -> str:
        account = self._require()
        async with self._lock:
            broker_order_id, updates = account.place(order)
            await self._save(account, updates)
            through = self._queue_updates(updates)
        await self._drain(through)
        return broker_order_id

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
            updates = account.modify(
                broker_order_id,
                quantity=quantity,
                price=price,
                trigger_price=trigger_price,
                order_type=order_type,
            )
            await self._save(account, updates)
            through = self._queue_updates(updates)
        await self._drain(through)

    async def cancel_order(self, broker_order_id: str) -> None:
        account = self._require()
        async with self._lock:
            updates = account.cancel(broker_order_id)
            await self._save(account, updates)
            through = self._queue_updates(updates)
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
        async with self._lock:
            updates = account.expire_day_orders(now)
            if updates:
                await self._save(account, updates)
            through = self._queue_updates(updates)
        await self._drain(through)
        return [u.state for u in updates]

    async def get_order(self, broker_order_id: str) -> BrokerOrderState:
        account = self._require()
        return account.order_state(account.entry(broker_order_id))

    async def get_orders(self) -> list[BrokerOrderState]:
        account = self._require()
        return [account.order_state(e) for e in account.orders.values()]

    async def get_trades(self) -> list[Fill]:
        return list(self._require().fills)

    def charges_breakdown(self, trade_id: str) -> dict[str, str] | None:
        """The per-component charges of one paper trade (strings, as saved)."""
        account = self._account
        if account is None:
            return None
        detail = account.charges_detail.get(trade_id)
        return dict(detail) if detail is not None else None

    # -- portfolio and market data ---------------------------------------------------------
    async def get_positions(self) -> list[dict[str, Any]]:
        return self._require().positions_view()

    async def get_balance(self) -> dict[str, Any]:
        return self._require().balance_view()

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


INCREMENTAL = "incremental"


def _sequence(identifier: str) -> int:
    """The counter at the end of ``PAPER-12`` or ``PT-cfg-7``: restores placement order."""
    tail = identifier.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
