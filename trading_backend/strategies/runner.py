"""The strategy runner: runs every started strategy, each on its own queue and task.

Lifecycle of one strategy (``StrategyRow.status``)::

    STOPPED --start_strategy--> RUNNING --stop_strategy--> STOPPED
                                   |
                                   +-- a callback raised --> ERROR (start again to retry)

Each running strategy has an ``asyncio.Queue`` and one task that calls its callbacks one
at a time (start, ticks, bars, order updates, stop), so a strategy never sees two events
at once, and a slow or failing strategy never delays another. Market events come from the
``MarketFeed`` (the callbacks only enqueue), order updates from the ``OrderRecorder``
listener, routed to the strategy that placed the order.

State (``ctx.state``) is checked to be JSON after every callback (a state that is not fails
the strategy at that callback) and written to the database:

* at once, when the callback placed or cancelled an order (so that after a crash the
  strategy never forgets an order it placed, and never places it twice), after
  ``on_order_update`` (it never forgets a fill it recorded) and after ``on_start`` (so
  that a start answers with the state ``on_start`` left);
* otherwise in a batch: a changed state is only marked dirty, and every dirty state is
  written in one transaction at most every ``state_flush_seconds`` by the runner's flusher
  task, by ``flush_states()`` and at the end of ``drain()``. A crash loses at most that
  long of such changes (counters, indicators), never an order;
* always when the strategy stops (user stop or process shutdown, ``stop()`` also writing
  what is still dirty) or fails.

Writes of one strategy's state are serialised by a lock of its own, so a batch that read an
older state never commits after a newer one.

A callback that raises: the strategy goes to ERROR with the error text saved, an ``error``
entry (with the traceback summary) is added to its signal log, a ``strategy.failed`` audit
row is written, a ``strategy_failed`` warning is logged (the alert), and its market
subscriptions are closed. The other strategies go on.

Two ways to stop, deliberately different:

* ``stop_strategy(id)`` is the *user's* stop: ``on_stop`` runs and the status becomes
  STOPPED, so the strategy stays stopped across restarts.
* ``stop()`` is the *process* shutting down: every strategy's ``on_stop`` runs and its state
  is saved, but its status stays RUNNING, so the next ``start()`` (the next process)
  resumes it with its state restored before ``on_start``.

Deployment: one *hosting* runner owns every strategy (``start()`` resumes all RUNNING
rows), so exactly one process may host strategies against a database: ``serve`` (the
default, ``EMBEDDED_STRATEGIES=true``) or ``trading-backend strategies run``. Other
processes (API instances with ``EMBEDDED_STRATEGIES=false``, the CLI) build a runner with
``hosting=False``: their start and stop only change the row, and the hosting runner's
``sync()`` loop (every ``STRATEGY_SYNC_SECONDS``) launches or stops the strategy. Several
hosting runners would each resume every strategy and trade twice; sharding strategies
across runners (with a lease per strategy) is a later production issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.domain import Bar, BrokerOrder, DomainError, ErrorCode, Order
from trading_backend.execution.order_service import OrderService
from trading_backend.execution.recorder import OrderRecorder
from trading_backend.storage.models import StrategyRow, StrategySignalRow, utcnow
from trading_backend.storage.repositories import add_audit
from trading_backend.strategies.base import BaseStrategy, TickView
from trading_backend.strategies.context import RunnerContext, strategy_tag
from trading_backend.strategies.ports import FeedHandle, MarketFeed, MarketReader
from trading_backend.strategies.registry import StrategyRegistry

log = structlog.get_logger(__name__)

RUNNING = "RUNNING"
STOPPED = "STOPPED"
ERROR = "ERROR"

_TRACEBACK_CHARS = 4000

# -- metrics (issue #7): what the strategy runner's process shows (METRICS_PORT)
STRATEGIES_RUNNING = Gauge(
    "trading_backend_strategies_running", "Strategies hosted and running in this process"
)
STRATEGY_ERRORS = Counter(
    "trading_backend_strategy_errors_total",
    "Strategies that failed (a callback or their construction raised) and went to ERROR",
    ["kind"],
)
BARS_DELIVERED = Counter(
    "trading_backend_strategy_bars_delivered_total",
    "Completed bars handed to running strategies (one per strategy and bar)",
)
# -- end metrics


@dataclass(slots=True)
class _Start:
    done: asyncio.Future[str]


@dataclass(slots=True)
class _Stop:
    status: str | None  # STOPPED (user stop) or None (process shutdown: status unchanged)
    audit_user_id: str | None
    done: asyncio.Future[str]


@dataclass(slots=True)
class _Callback:
    kind: str  # tick | bar | order
    payload: TickView | Bar | Order


_Event = _Start | _Stop | _Callback


class _TrackedContext(RunnerContext):
    """The strategy's context, counting the order actions it attempts (``place_order``,
    ``cancel_order``). Counted before the call, so that one that raised (its outcome
    unknown) counts too: the runner writes the state at once after a callback that acted."""

    order_actions: int = 0

    async def place_order(self, order: BrokerOrder) -> Order:
        self.order_actions += 1
        return await super().place_order(order)

    async def cancel_order(self, order_id: str) -> Order:
        self.order_actions += 1
        return await super().cancel_order(order_id)


@dataclass(eq=False)
class _Running:
    id: str
    user_id: str
    config_id: str
    kind: str
    strategy: BaseStrategy
    ctx: _TrackedContext
    saved_state: str  # the state as last written to the database
    unsaved_state: str | None = None  # newer, checked after a callback, not yet written
    order_actions: int = 0  # ctx.order_actions already seen
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    handles: list[FeedHandle] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    final_status: str = ERROR
    pending: int = 0  # events queued and not yet handled
    orders: set[str] = field(default_factory=set)

    def put(self, event: _Event) -> bool:
        if self.closed:
            return False
        self.pending += 1
        self.queue.put_nowait(event)
        return True

    def done_one(self) -> None:
        self.pending -= 1
        self.queue.task_done()


def _dump_state(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, allow_nan=False)


class StrategyRunner:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        registry: StrategyRegistry,
        feed: MarketFeed,
        reader: MarketReader,
        order_service: OrderService,
        recorder: OrderRecorder,
        *,
        order_wait: float = 5.0,
        clock: Callable[[], datetime] | None = None,
        hosting: bool = True,
        state_flush_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self.hosting = hosting
        self.registry = registry
        self.reader = reader
        self._feed = feed
        self._orders = order_service
        self._recorder = recorder
        self._order_wait = order_wait
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._by_tag: dict[str, _Running] = {}
        self._owners: dict[str, str] = {}  # order id -> strategy id
        self._listening = False
        self._state_flush_seconds = state_flush_seconds
        self._dirty: set[_Running] = set()  # states changed and not yet written
        self._dirty_event = asyncio.Event()
        self._flush_lock = asyncio.Lock()  # one batch at a time
        self._flusher: asyncio.Task[None] | None = None

    # -- introspection -----------------------------------------------------------------
    def is_running(self, strategy_id: str) -> bool:
        return strategy_id in self._running

    @property
    def running_ids(self) -> list[str]:
        return sorted(self._running)

    def strategy(self, strategy_id: str) -> BaseStrategy | None:
        """The live strategy object (tests and diagnostics)."""
        running = self._running.get(strategy_id)
        return running.strategy if running is not None else None

    async def drain(self, *strategy_ids: str, flush: bool = True) -> None:
        """Wait until every running strategy (or only those given) has handled every event
        queued so far, and any events those callbacks caused (their own order updates),
        then (unless ``flush=False``) write every dirty state (``flush_states``). Tests use
        it instead of sleeping."""
        while True:
            busy = [
                r
                for r in self._running.values()
                if r.pending and (not strategy_ids or r.id in strategy_ids)
            ]
            if not busy:
                break
            await asyncio.gather(*(r.queue.join() for r in busy))
        if flush:
            await self.flush_states()

    async def flush_states(self) -> int:
        """Write every state changed since it was last written, in one transaction; returns
        how many were written. Also run by the flusher task, ``drain()`` and ``stop()``."""
        async with self._flush_lock:
            self._dirty_event.clear()
            batch = sorted(self._dirty, key=lambda r: r.id)
            if not batch:
                return 0
            async with contextlib.AsyncExitStack() as locks:
                for running in batch:
                    await locks.enter_async_context(running.write_lock)
                # Read under the locks: a state written meanwhile (stop, failure, order
                # path) is no longer unsaved.
                states = [(r, r.unsaved_state) for r in batch if r.unsaved_state is not None]
                try:
                    await self._write_states([(r.id, state) for r, state in states])
                except BaseException:
                    self._dirty_event.set()  # still dirty: the flusher tries again
                    raise
                for running, state in states:
                    running.saved_state = state
                    if running.unsaved_state == state:  # else changed again meanwhile
                        running.unsaved_state = None
                for running in batch:
                    if running.unsaved_state is None:
                        self._dirty.discard(running)
            return len(states)

    async def _flush_periodically(self) -> None:
        """The flusher task: once something is dirty, wait ``state_flush_seconds`` and
        write the batch."""
        while True:
            await self._dirty_event.wait()
            await asyncio.sleep(self._state_flush_seconds)
            try:
                await self.flush_states()
            except Exception:
                log.exception("strategy_state_flush_failed")

    # -- process lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Listen to order updates and resume every strategy whose status is RUNNING."""
        if not self._listening:
            self._recorder.add_listener(self._on_order)
            self._listening = True
        if self._flusher is None:
            self._flusher = asyncio.create_task(
                self._flush_periodically(), name="strategy-state-flusher"
            )
        async with self._db() as session:
            rows = (
                await session.scalars(
                    select(StrategyRow)
                    .where(StrategyRow.status == RUNNING)
                    .order_by(StrategyRow.created_at, StrategyRow.id)
                )
            ).all()
            snapshots = [_snapshot(row) for row in rows]
        for snapshot in snapshots:
            log.info("strategy_resuming", strategy_id=snapshot["id"], kind=snapshot["kind"])
            await self._launch(snapshot)

    async def sync(self) -> None:
        """Converge on the database: launch RUNNING rows that are not running here and
        stop strategies whose row another process (API instance, CLI) stopped or
        deleted. Their ``on_stop`` runs and their state is saved; the row's status is
        left as that process set it."""
        async with self._db() as session:
            rows = (
                await session.scalars(
                    select(StrategyRow)
                    .where(StrategyRow.status == RUNNING)
                    .order_by(StrategyRow.created_at, StrategyRow.id)
                )
            ).all()
            snapshots = [_snapshot(row) for row in rows if row.id not in self._running]
            wanted = {row.id for row in rows}
        for strategy_id, running in list(self._running.items()):
            if strategy_id not in wanted:
                log.info("strategy_stopped_elsewhere", strategy_id=strategy_id)
                await self._request_stop(running, None, None)
        for snapshot in snapshots:
            log.info("strategy_launching", strategy_id=snapshot["id"], kind=snapshot["kind"])
            await self._launch(snapshot)

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        """The hosting loop, after ``start()``: ``sync()`` every ``interval`` seconds
        until ``stop`` is set, then ``stop()`` (strategies stay RUNNING, to resume)."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                if stop.is_set():
                    break
                try:
                    await self.sync()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("strategy_sync_failed")
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Process shutdown: ``on_stop`` for each strategy, state saved, status left RUNNING
        so the next ``start()`` resumes them; then the flusher stops and anything still
        dirty is written."""
        waits = [self._request_stop(r, None, None) for r in list(self._running.values())]
        await asyncio.gather(*waits, return_exceptions=True)
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            async with self._flush_lock:  # never cancelled in the middle of a batch
                flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        try:
            await self.flush_states()
        except Exception:
            log.exception("strategy_state_flush_failed")
        if self._listening:
            self._recorder.remove_listener(self._on_order)
            self._listening = False

    # -- one strategy ------------------------------------------------------------------
    async def start_strategy(self, strategy_id: str, *, audit_user_id: str | None = None) -> str:
        """Mark the strategy RUNNING (with a ``strategy.started`` audit row when
        ``audit_user_id`` is given), run ``on_start`` and subscribe; returns the resulting
        status (RUNNING, or ERROR when loading or ``on_start`` failed). Idempotent."""
        if strategy_id in self._running:
            return RUNNING
        async with self._db() as session, session.begin():
            row = await session.get(StrategyRow, strategy_id)
            if row is None:
                raise DomainError(f"strategy {strategy_id!r} not found", ErrorCode.NOT_FOUND)
            now = utcnow()
            row.status = RUNNING
            row.error = None
            row.started_at = now
            row.stopped_at = None
            row.updated_at = now
            if audit_user_id is not None:
                await add_audit(
                    session,
                    "strategy.started",
                    user_id=audit_user_id,
                    target=strategy_id,
                    data={"kind": row.kind, "config_id": row.config_id},
                )
            snapshot = _snapshot(row)
        if not self.hosting:
            return RUNNING  # the hosting runner's sync() launches it
        return await self._launch(snapshot)

    async def stop_strategy(self, strategy_id: str, *, audit_user_id: str | None = None) -> str:
        """The user's stop: ``on_stop``, unsubscribe, status STOPPED (with a
        ``strategy.stopped`` audit row when ``audit_user_id`` is given). Returns the final
        status (ERROR if ``on_stop`` raised). A strategy not running here is only marked
        STOPPED if its row says RUNNING (ERROR and STOPPED rows are left as they are)."""
        running = self._running.get(strategy_id)
        if running is not None:
            return await self._request_stop(running, STOPPED, audit_user_id)
        async with self._db() as session, session.begin():
            row = await session.get(StrategyRow, strategy_id)
            if row is None:
                return STOPPED
            if row.status == RUNNING:
                row.status = STOPPED
                row.stopped_at = row.updated_at = utcnow()
                if audit_user_id is not None:
                    await add_audit(
                        session, "strategy.stopped", user_id=audit_user_id, target=strategy_id
                    )
            return row.status

    async def _request_stop(
        self, running: _Running, status: str | None, audit_user_id: str | None
    ) -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if not running.put(_Stop(status, audit_user_id, done)):
            return running.final_status
        return await done

    async def _launch(self, snapshot: dict[str, Any]) -> str:
        strategy_id = snapshot["id"]
        if strategy_id in self._running:
            return RUNNING
        state = snapshot["state"] or {}
        try:
            cls = self.registry.get(snapshot["kind"])
            params = cls.Params.model_validate(snapshot["params"] or {})
            ctx = _TrackedContext(
                strategy_id=strategy_id,
                user_id=snapshot["user_id"],
                config_id=snapshot["config_id"],
                db=self._db,
                reader=self.reader,
                order_service=self._orders,
                state=json.loads(_dump_state(state)),
                order_wait=self._order_wait,
                on_order_placed=lambda order: self._own(strategy_id, order),
                clock=self._clock,
            )
            strategy = cls(ctx, params)
        except Exception as exc:  # noqa: BLE001 - recorded as the strategy's failure
            STRATEGY_ERRORS.labels(snapshot["kind"]).inc()
            await self._record_failure(snapshot["id"], snapshot["user_id"], exc, None)
            return ERROR
        running = _Running(
            id=strategy_id,
            user_id=snapshot["user_id"],
            config_id=snapshot["config_id"],
            kind=snapshot["kind"],
            strategy=strategy,
            ctx=ctx,
            saved_state=_dump_state(ctx.state),
        )
        self._running[strategy_id] = running
        STRATEGIES_RUNNING.inc()
        self._by_tag[strategy_tag(strategy_id)] = running
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        running.put(_Start(done))
        running.task = asyncio.create_task(self._run(running), name=f"strategy-{strategy_id}")
        return await done

    # -- the per-strategy task ---------------------------------------------------------
    async def _run(self, running: _Running) -> None:
        while True:
            event = await running.queue.get()
            try:
                if isinstance(event, _Stop):
                    await self._finish(running, event)
                    return
                await self._dispatch(running, event)
                # At once after on_start and order updates (fills the strategy recorded must
                # survive a crash: it would otherwise wait for an order already done).
                await self._save_state(
                    running,
                    now=isinstance(event, _Start) or event.kind == "order",
                )
                if isinstance(event, _Start) and not event.done.done():
                    event.done.set_result(RUNNING)
            except asyncio.CancelledError:
                self._close(running)
                raise
            except Exception as exc:  # noqa: BLE001 - one strategy's failure stops only it
                await self._fail(running, exc)
                if isinstance(event, _Start | _Stop) and not event.done.done():
                    event.done.set_result(ERROR)
                return
            finally:
                running.done_one()
                if running.closed:
                    self._flush(running)

    async def _dispatch(self, running: _Running, event: _Start | _Callback) -> None:
        strategy = running.strategy
        if isinstance(event, _Start):
            await strategy.on_start()
            for subscription in strategy.subscriptions():
                handle = await self._feed.subscribe(
                    subscription, self._tick_sink(running), self._bar_sink(running)
                )
                running.handles.append(handle)
            log.info("strategy_started", strategy_id=running.id, kind=running.kind)
        elif event.kind == "tick":
            assert isinstance(event.payload, TickView)
            await strategy.on_tick(event.payload)
        elif event.kind == "bar":
            assert isinstance(event.payload, Bar)
            await strategy.on_bar(event.payload)
        elif event.kind == "order":
            assert isinstance(event.payload, Order)
            await strategy.on_order_update(event.payload)

    def _tick_sink(self, running: _Running) -> Callable[[TickView], Any]:
        async def on_tick(tick: TickView) -> None:
            running.put(_Callback("tick", tick))

        return on_tick

    def _bar_sink(self, running: _Running) -> Callable[[Bar], Any]:
        async def on_bar(bar: Bar) -> None:
            if running.put(_Callback("bar", bar)):
                BARS_DELIVERED.inc()

        return on_bar

    async def _finish(self, running: _Running, event: _Stop) -> None:
        """Stop (user) or shutdown (process): on_stop, unsubscribe, save state."""
        try:
            await running.strategy.on_stop()
            state = _dump_state(running.ctx.state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - on_stop failing is a failure too
            await self._fail(running, exc)
            if not event.done.done():
                event.done.set_result(ERROR)
            return
        await self._close_handles(running)
        running.final_status = event.status or RUNNING
        self._close(running)
        async with running.write_lock, self._db() as session, session.begin():
            row = await session.get(StrategyRow, running.id)
            if row is not None:
                row.state = json.loads(state)
                row.updated_at = utcnow()
                if event.status is not None:
                    row.status = event.status
                    row.stopped_at = row.updated_at
                    if event.audit_user_id is not None:
                        await add_audit(
                            session,
                            "strategy.stopped",
                            user_id=event.audit_user_id,
                            target=running.id,
                        )
        self._saved(running, state)
        log.info(
            "strategy_stopped" if event.status else "strategy_suspended",
            strategy_id=running.id,
        )
        if not event.done.done():
            event.done.set_result(event.status or RUNNING)

    async def _save_state(self, running: _Running, *, now: bool) -> None:
        """After a callback: check the state is JSON (raising, which fails the strategy, if
        not), then write it at once if ``now`` or the strategy placed or cancelled an order
        since the last check, else mark it dirty for the next batch."""
        dumped = _dump_state(running.ctx.state)  # TypeError/ValueError: not JSON -> failure
        actions = running.ctx.order_actions
        acted = actions != running.order_actions
        running.order_actions = actions
        latest = running.saved_state if running.unsaved_state is None else running.unsaved_state
        if dumped != latest:
            running.unsaved_state = dumped
        if running.unsaved_state is None:
            return
        if now or acted:
            async with running.write_lock:
                state = running.unsaved_state
                if state is not None:  # None: a batch has just written it
                    await self._write_states([(running.id, state)])
                    self._saved(running, state)
        else:
            self._dirty.add(running)
            self._dirty_event.set()

    async def _write_states(self, states: list[tuple[str, str]]) -> None:
        """Write (strategy id, dumped state) pairs in one transaction (a deleted strategy's
        pair updates nothing). Callers hold the strategies' write locks."""
        if not states:
            return
        statement = (
            update(StrategyRow)
            .where(StrategyRow.id == bindparam("strategy_id"))
            .values(state=bindparam("new_state"), updated_at=utcnow())
        )
        params = [{"strategy_id": sid, "new_state": json.loads(state)} for sid, state in states]
        async with self._db() as session, session.begin():
            connection = await session.connection()
            await connection.execute(statement, params)

    def _saved(self, running: _Running, state: str) -> None:
        """``state`` is in the database and nothing newer is waiting to be written."""
        running.saved_state = state
        running.unsaved_state = None
        self._dirty.discard(running)

    async def _fail(self, running: _Running, exc: BaseException) -> None:
        STRATEGY_ERRORS.labels(running.kind).inc()
        self._close(running)
        await self._close_handles(running)
        try:
            dumped: str | None = _dump_state(running.ctx.state)
        except (TypeError, ValueError):
            dumped = running.unsaved_state  # the last state that was JSON, if not written
        state = None if dumped is None else json.loads(dumped)
        async with running.write_lock:
            recorded = await self._record_failure(running.id, running.user_id, exc, state)
            if recorded and dumped is not None:
                self._saved(running, dumped)

    async def _record_failure(
        self, strategy_id: str, user_id: str, exc: BaseException, state: dict[str, Any] | None
    ) -> bool:
        """Mark the strategy ERROR (with ``state`` when given); False if that failed."""
        error = f"{type(exc).__name__}: {exc}"
        summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.warning("strategy_failed", strategy_id=strategy_id, user_id=user_id, error=error)
        try:
            async with self._db() as session, session.begin():
                row = await session.get(StrategyRow, strategy_id)
                if row is None:
                    return True
                now = utcnow()
                row.status = ERROR
                row.error = error
                row.stopped_at = row.updated_at = now
                if state is not None:
                    row.state = state
                session.add(
                    StrategySignalRow(
                        strategy_id=strategy_id,
                        user_id=user_id,
                        kind="error",
                        data={"error": error, "traceback": summary[-_TRACEBACK_CHARS:]},
                        created_at=now,
                    )
                )
                await add_audit(
                    session,
                    "strategy.failed",
                    user_id=user_id,
                    target=strategy_id,
                    data={"error": error[:500]},
                )
        except Exception:
            log.exception("strategy_failure_not_recorded", strategy_id=strategy_id)
            return False
        return True

    def _close(self, running: _Running) -> None:
        """No more events for this strategy; forget it (its task ends by itself)."""
        running.closed = True
        if self._running.get(running.id) is running:
            del self._running[running.id]
            STRATEGIES_RUNNING.dec()
        if self._by_tag.get(strategy_tag(running.id)) is running:
            del self._by_tag[strategy_tag(running.id)]
        for order_id in running.orders:
            self._owners.pop(order_id, None)

    async def _close_handles(self, running: _Running) -> None:
        handles, running.handles = running.handles, []
        for handle in handles:
            try:
                await handle.close()
            except Exception:
                log.exception("strategy_unsubscribe_failed", strategy_id=running.id)

    @staticmethod
    def _flush(running: _Running) -> None:
        """Drop what is still queued for a closed strategy (so ``drain`` never waits on it),
        answering any start/stop request among it."""
        while True:
            try:
                event = running.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if isinstance(event, _Start | _Stop) and not event.done.done():
                event.done.set_result(running.final_status)
            running.done_one()

    # -- order updates -----------------------------------------------------------------
    def _own(self, strategy_id: str, order: Order) -> None:
        running = self._running.get(strategy_id)
        if running is not None and not order.status.is_final:
            self._owners[order.order_id] = strategy_id
            running.orders.add(order.order_id)

    def _on_order(self, order: Order) -> None:
        """Recorder listener (called after each committed order change): route the order
        to the strategy that placed it. Orders are recognised by id once ``place_order``
        returned, and by the strategy's tag before that (the update can come first)."""
        running: _Running | None = None
        owner = self._owners.get(order.order_id)
        if owner is not None:
            running = self._running.get(owner)
        if running is None and order.tag:
            running = self._by_tag.get(order.tag)
        if running is None or running.user_id != order.user_id:
            return
        if order.status.is_final:
            self._owners.pop(order.order_id, None)
            running.orders.discard(order.order_id)
        else:
            self._owners[order.order_id] = running.id
            running.orders.add(order.order_id)
        running.put(_Callback("order", order))


def _snapshot(row: StrategyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "config_id": row.config_id,
        "kind": row.kind,
        "params": dict(row.params or {}),
        "state": dict(row.state or {}),
    }
