"""Keeping a ``PaperAccount`` in a ``StateStore``, safe when several processes share it.

Why: in production (issue #7) several worker processes hold the same paper account, each
with its own ``PaperAccount`` in memory. Saving "my copy" after a change would let one
process overwrite another's orders and cash. So every change is a read-decide-write
block under the store's lock on the account's head row (``store.locked(key)``):

1. lock the head (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite's single writer);
2. catch up: if the head's ``revision`` differs from the one this copy reflects, another
   process changed the account. The head carries a short change log (which orders and
   fills each revision wrote), so only those records are re-read; a copy too far behind
   reloads everything;
3. apply the change to the up-to-date copy (place, modify, cancel, a tick's fills,
   expiry); a rejection raises before anything changes and writes nothing;
4. write the head (revision + 1, cash, counters, positions, change log) and the changed
   order and fill records, and commit. Only then are the change's updates emitted, by
   this process alone: another process learns of the change by catching up, silently.

In one process the revision always matches, so the cost over a plain save is the locking
read of one small row. A failure after the copy changed (the commit, the connection)
forgets the revision, so the next block reloads the whole account from the store.

Layout (unchanged from the single-process one, plus ``revision`` and ``changes``):
``paper:<config_id>`` the head; ``paper:<config_id>:o:<order_id>`` one per order;
``paper:<config_id>:f:<trade_id>`` one per fill with its charges breakdown.

Stores without ``locked`` still work, without the cross-process guarantee: with
``save_many``/``load_prefix`` the same layout is used (the lock is this process's own),
with only ``load``/``save`` the whole account is one value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import structlog

from trading_backend.brokers.base import (
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    OrderUpdate,
    StateStore,
)
from trading_backend.brokers.paper.exchange import (
    STATE_VERSION,
    PaperAccount,
    _fill_to_dict,
    _order_to_dict,
    _position_to_dict,
)

__all__ = ["CHANGELOG_LENGTH", "INCREMENTAL", "AccountPersistence", "Change"]

log = structlog.get_logger(__name__)

INCREMENTAL = "incremental"
CHANGELOG_LENGTH = 128  # revisions a lagging copy can catch up on without a full reload

Change = Callable[[PaperAccount], list[OrderUpdate]]


class _LocalView:
    """``locked`` for a store without it: the same calls, no cross-process lock."""

    def __init__(self, store: Any, state: dict[str, Any] | None) -> None:
        self._store = store
        self.state = state
        self.staged: dict[str, dict[str, Any]] = {}

    def stage(self, items: dict[str, dict[str, Any]]) -> None:
        self.staged.update(items)

    async def load_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        if hasattr(self._store, "load_many"):
            found: dict[str, dict[str, Any]] = await self._store.load_many(keys)
            return found
        loaded = {key: await self._store.load(key) for key in keys}
        return {k: v for k, v in loaded.items() if v is not None}

    async def load_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = await self._store.load_prefix(prefix)
        return found


class AccountPersistence:
    """Loads, changes and saves one paper account through a store (module docstring)."""

    def __init__(self, store: StateStore | None, key: str) -> None:
        self.store = store
        self.key = key
        self.revision: int | None = None  # the head revision the copy reflects; None: unknown
        self.incremental = hasattr(store, "save_many") and hasattr(store, "load_prefix")
        self.locking = self.incremental and hasattr(store, "locked")
        # Whether other processes may change the account, so reads must catch up first.
        # SQLite is one process (and shares one connection: a read inside another
        # session's transaction would wait for it forever), so there reads stay local.
        self.shared = self.locking and bool(getattr(store, "shared", False))

    # -- changes -------------------------------------------------------------------------
    async def mutate(self, account: PaperAccount, change: Change) -> list[OrderUpdate]:
        """Apply ``change`` atomically (see the module docstring); returns its updates,
        which the caller emits. Rejections (``BrokerError`` from ``change``) propagate as
        they are; a storage failure becomes ``BrokerTimeout`` (the change may or may not
        be committed: reconcile, never resend)."""
        if self.store is None:
            updates = change(account)
            account.take_dirty()
            return updates
        if not self.incremental:
            return await self._mutate_whole(account, change)
        rejected = False
        revision = self.revision
        try:
            async with self._locked() as view:
                head = view.state
                rewrite = not head or head.get("layout") != INCREMENTAL
                if head:
                    self._catch_up(account, head, await self._changed_records(view, head))
                try:
                    updates = change(account)
                except BrokerError:
                    rejected = True
                    raise
                dirty = account.take_dirty()
                if dirty or rewrite:
                    previous = int(head.get("revision", 0)) if head else 0
                    revision = previous + 1
                    view.stage(self._records(account, head, revision, dirty, updates, rewrite))
                else:
                    revision = self.revision
        except BaseException as exc:
            if not rejected:
                self.revision = None  # the copy may be ahead of the store: reload next time
                if isinstance(exc, Exception) and not isinstance(exc, BrokerError):
                    log.exception("paper: account storage failed", key=self.key)
                    raise BrokerTimeout(
                        "the paper account could not be saved; the change may not have"
                        " taken effect: reconcile before retrying",
                        config_id=account.config_id,
                    ) from exc
            raise
        self.revision = revision
        return updates

    async def _mutate_whole(self, account: PaperAccount, change: Change) -> list[OrderUpdate]:
        """A store with only ``load``/``save``: one process, the whole account as a value."""
        assert self.store is not None
        created = False
        if self.revision is None:
            saved = await self.store.load(self.key)
            if saved:
                account.load_state(saved)
            created = not saved
            self.revision = 0
        updates = change(account)
        if account.take_dirty() or created:
            try:
                await self.store.save(self.key, account.to_state())
            except Exception:  # the next change saves the whole account again
                log.exception("paper: saving the account failed", key=self.key)
        return updates

    # -- reads ---------------------------------------------------------------------------
    async def refresh(self, account: PaperAccount, *, force: bool = False) -> None:
        """Catch up with other processes' changes before a read that must be exact (a
        worker reconciling an order another worker placed). A no-op unless the store is
        shared (or ``force``): one head read when nothing changed."""
        if not (self.shared or (force and self.incremental)):
            return
        assert self.store is not None
        try:
            head = await self.store.load(self.key)
            if not head or (
                head.get("layout") == INCREMENTAL and int(head.get("revision", 0)) == self.revision
            ):
                return
            async with self._locked() as view:  # a consistent snapshot; writes nothing
                if view.state:
                    records = await self._changed_records(view, view.state)
                    self._catch_up(account, view.state, records)
        except BrokerError:
            self.revision = None
            raise
        except Exception as exc:
            self.revision = None
            log.exception("paper: reading the account failed", key=self.key)
            raise BrokerUnavailable(
                "the paper account's storage is unavailable", config_id=account.config_id
            ) from exc

    # -- plumbing ------------------------------------------------------------------------
    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[Any]:
        store: Any = self.store
        if self.locking:
            async with store.locked(self.key) as view:
                yield view
            return
        view = _LocalView(store, await store.load(self.key) or None)
        yield view
        if view.staged:
            await store.save_many(view.staged)

    async def _changed_records(self, view: Any, head: dict[str, Any]) -> _Records | None:
        """What catching up to ``head`` needs: ``None`` when already in step, else the
        records to read (all of them when the change log does not reach back far enough)."""
        if head.get("layout") != INCREMENTAL:
            return _Records(full_state=head)
        revision = int(head.get("revision", 0))
        if revision == self.revision:
            return None
        since = _changes_since(head, self.revision)
        if since is None:
            items = await view.load_prefix(self.key + ":")
            return _Records(full_state=_assemble(self.key, head, items))
        order_ids, trade_ids = since
        keys = [f"{self.key}:o:{o}" for o in order_ids] + [f"{self.key}:f:{t}" for t in trade_ids]
        items = await view.load_many(keys) if keys else {}
        return _Records(head=head, items=items, order_ids=order_ids, trade_ids=trade_ids)

    def _catch_up(
        self, account: PaperAccount, head: dict[str, Any], records: _Records | None
    ) -> None:
        if records is None:
            return
        if records.full_state is not None:
            account.load_state(records.full_state)
        else:
            orders = [records.items[k]["order"] for k in records.order_keys(self.key)]
            fills = [records.items[k] for k in records.fill_keys(self.key)]
            account.merge_state(
                records.head,
                orders,
                [f["fill"] for f in fills],
                {
                    f["fill"]["trade_id"]: f["charges_detail"]
                    for f in fills
                    if f.get("charges_detail")
                },
            )
        self.revision = int(head.get("revision", 0)) if head.get("layout") == INCREMENTAL else None

    def _records(
        self,
        account: PaperAccount,
        head: dict[str, Any] | None,
        revision: int,
        dirty: set[str],
        updates: list[OrderUpdate],
        rewrite: bool,
    ) -> dict[str, dict[str, Any]]:
        """The head and the records this revision writes (everything on a rewrite)."""
        if rewrite:
            order_ids = list(account.orders)
            fills = list(account.fills)
            changes: list[Any] = []  # nobody can catch up across a rewrite: reload
        else:
            order_ids = sorted(dirty | {u.state.broker_order_id for u in updates}, key=_sequence)
            fills = [f for u in updates for f in u.fills]
            changes = list((head or {}).get("changes", []))
            changes.append([revision, order_ids, [f.trade_id for f in fills]])
            changes = changes[-CHANGELOG_LENGTH:]
        items: dict[str, dict[str, Any]] = {
            self.key: {
                "layout": INCREMENTAL,
                "version": STATE_VERSION,
                "revision": revision,
                "changes": changes,
                "config_id": account.config_id,
                "initial_capital": str(account.initial_capital),
                "cash": str(account.cash),
                "order_counter": account.order_counter,
                "trade_counter": account.trade_counter,
                "positions": [_position_to_dict(p) for p in account.positions.values()],
            }
        }
        for order_id in order_ids:
            items[f"{self.key}:o:{order_id}"] = {
                "seq": _sequence(order_id),
                "order": _order_to_dict(account.entry(order_id)),
            }
        for fill in fills:
            items[f"{self.key}:f:{fill.trade_id}"] = {
                "seq": _sequence(fill.trade_id),
                "fill": _fill_to_dict(fill),
                "charges_detail": account.charges_detail.get(fill.trade_id),
            }
        return items


class _Records:
    """What one catch-up read: a whole state, or the head plus the changed records."""

    def __init__(
        self,
        *,
        full_state: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        items: dict[str, dict[str, Any]] | None = None,
        order_ids: list[str] | None = None,
        trade_ids: list[str] | None = None,
    ) -> None:
        self.full_state = full_state
        self.head: dict[str, Any] = head or {}
        self.items = items or {}
        self.order_ids = order_ids or []
        self.trade_ids = trade_ids or []

    def order_keys(self, key: str) -> list[str]:
        keys = [f"{key}:o:{o}" for o in self.order_ids]
        return [k for k in keys if k in self.items]

    def fill_keys(self, key: str) -> list[str]:
        keys = [f"{key}:f:{t}" for t in self.trade_ids]
        return [k for k in keys if k in self.items]


def _changes_since(head: dict[str, Any], known: int | None) -> tuple[list[str], list[str]] | None:
    """The order and trade ids written after revision ``known``, in placement order, or
    ``None`` when the change log does not cover every revision since."""
    if known is None:
        return None
    revision = int(head.get("revision", 0))
    wanted = range(known + 1, revision + 1)
    log_entries = {int(entry[0]): entry for entry in head.get("changes", [])}
    if known > revision or any(r not in log_entries for r in wanted):
        return None
    order_ids: dict[str, None] = {}
    trade_ids: dict[str, None] = {}
    for r in wanted:
        order_ids.update(dict.fromkeys(log_entries[r][1]))
        trade_ids.update(dict.fromkeys(log_entries[r][2]))
    return sorted(order_ids, key=_sequence), sorted(trade_ids, key=_sequence)


def _assemble(key: str, head: dict[str, Any], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A whole-account state (``PaperAccount.load_state``) from the head and every record."""
    orders = sorted(
        (v for k, v in items.items() if k.startswith(key + ":o:")), key=lambda v: v["seq"]
    )
    fills = sorted(
        (v for k, v in items.items() if k.startswith(key + ":f:")), key=lambda v: v["seq"]
    )
    state = {k: v for k, v in head.items() if k not in ("layout", "revision", "changes")}
    state["orders"] = [o["order"] for o in orders]
    state["fills"] = [f["fill"] for f in fills]
    state["charges_detail"] = {
        f["fill"]["trade_id"]: f["charges_detail"] for f in fills if f.get("charges_detail")
    }
    return state


def _sequence(identifier: str) -> int:
    """The counter at the end of ``PAPER-12`` or ``PT-cfg-7``: restores placement order."""
    tail = identifier.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
