"""Backtests as background jobs of the API process (``POST /api/v1/backtests``).

A submitted config is validated at once (config, strategy kind and params: the caller
gets its 422 synchronously), stored as a ``backtest_runs`` row (QUEUED) and run by an
asyncio task: the bars are loaded on the event loop (the candle cache is async), the
replay itself runs in a thread of this service's executor (``asyncio.run`` of the engine
in that thread), so the event loop keeps serving requests. The row goes RUNNING, then
DONE with the result (``BacktestResult.to_dict``, curve downsampled) or FAILED with the
error (a strategy that raised keeps its partial result).

Why threads, not processes: the bars come from the API process's database session and
a job is a few seconds of work; a process pool would pickle every bar across and fork a
process holding the event loop's sockets. The replay holds the GIL in slices of 5 ms, so
requests stay answered, slower; the per-process cap bounds how many replays compete.

Limits: ``max_per_user`` unfinished jobs per user (counted in the database, so across API
processes) and ``max_running`` per process; beyond them ``RATE_LIMITED`` (HTTP 429).

Restarts: a running job beats ``heartbeat_at`` every ``HEARTBEAT_SECONDS``. At start-up
(the service's first use in a process) every unfinished job whose heartbeat is older
than ``STALE_SECONDS`` (or that never started and belongs to no live runner) is marked
FAILED "interrupted"; reading a job applies the same rule, so a job whose API process
died is never shown RUNNING for ever, and one running in another live process is left
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select, update

from trading_backend.backtest.config import BacktestConfig, fill_params, parse_config
from trading_backend.backtest.data import CandleSource, InMemorySource, paper_history
from trading_backend.backtest.engine import Backtest, run_backtest
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.marketdata.candles import CandleService
from trading_backend.storage.models import BacktestRunRow

__all__ = ["ACTIVE", "BacktestJobs", "JobView", "jobs_for"]

ACTIVE = ("QUEUED", "RUNNING")
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 60.0
CURVE_POINTS = 500
LOG_ENTRIES = 200
INTERRUPTED = "interrupted: the API process stopped before the backtest finished"


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    status: str
    strategy: str
    data_source: str
    config: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: BacktestRunRow) -> JobView:
        return cls(
            row.id,
            row.status,
            row.strategy,
            row.data_source,
            row.config,
            row.result,
            row.error,
            row.created_at,
            row.started_at,
            row.finished_at,
        )


def _now() -> datetime:
    return datetime.now(UTC)


class BacktestJobs:
    """The jobs of one API process (see the module docstring)."""

    def __init__(
        self,
        db: Any,
        candles: CandleService,
        *,
        runner_id: str | None = None,
        max_per_user: int = 2,
        max_running: int = 4,
    ) -> None:
        self.db = db
        self.candles = candles
        self.runner_id = runner_id or f"backtests:{uuid.uuid4().hex[:12]}"
        self.max_per_user = max_per_user
        self.max_running = max_running
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.executor = ThreadPoolExecutor(max_running, thread_name_prefix="backtest")
        self._admit = asyncio.Lock()
        self._recovered = False
        self._released = asyncio.Event()
        self._released.set()

    # -- admission -------------------------------------------------------------------------
    def hold(self) -> None:
        """New and queued jobs wait QUEUED until ``release`` (draining before maintenance;
        tests use it to observe the queue)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def running(self) -> int:
        return sum(not t.done() for t in self.tasks.values())

    async def recover(self) -> int:
        """Mark the jobs no live process runs any more FAILED (once per process)."""
        if self._recovered:
            return 0
        self._recovered = True
        stale = _now() - timedelta(seconds=STALE_SECONDS)
        async with self.db() as session:
            outcome = await session.execute(
                update(BacktestRunRow)
                .where(
                    BacktestRunRow.status.in_(ACTIVE),
                    BacktestRunRow.runner != self.runner_id,
                    (BacktestRunRow.heartbeat_at.is_(None)) | (BacktestRunRow.heartbeat_at < stale),
                )
                .values(status="FAILED", error=INTERRUPTED, finished_at=_now())
            )
            await session.commit()
        return int(getattr(outcome, "rowcount", 0) or 0)

    async def submit(
        self,
        user_id: str,
        config: dict[str, Any],
        data_source: str = "paper",
        broker: str = "paper",
    ) -> JobView:
        """Validate, store and start one job; ``DomainError`` for a bad config, 429 codes
        over the limits."""
        await self.recover()
        parsed = parse_config(fill_params(config))
        # The kind, its params and what it subscribes to, before anything is stored or run.
        Backtest(parsed, InMemorySource([])).check()
        if data_source not in ("paper", "database"):
            raise DomainError(
                "data_source must be 'paper' or 'database'", ErrorCode.VALIDATION_ERROR
            )
        async with self._admit:
            if self.running >= self.max_running:
                raise DomainError(
                    f"this server runs {self.max_running} backtests at once; retry when one "
                    "has finished",
                    ErrorCode.RATE_LIMITED,
                    limit="per_process",
                    max=self.max_running,
                )
            async with self.db() as session:
                active = await session.scalar(
                    select(func.count())
                    .select_from(BacktestRunRow)
                    .where(BacktestRunRow.user_id == user_id, BacktestRunRow.status.in_(ACTIVE))
                )
                if (active or 0) >= self.max_per_user:
                    raise DomainError(
                        f"you have {active} unfinished backtests (at most {self.max_per_user}); "
                        "wait for one to finish",
                        ErrorCode.RATE_LIMITED,
                        limit="per_user",
                        max=self.max_per_user,
                    )
                row = BacktestRunRow(
                    id=f"bt_{uuid.uuid4().hex}",
                    user_id=user_id,
                    status="QUEUED",
                    strategy=parsed.strategy,
                    data_source=data_source,
                    config={**parsed.model_dump(mode="json"), "broker": broker},
                    runner=self.runner_id,
                    created_at=_now(),
                    heartbeat_at=_now(),
                )
                session.add(row)
                await session.commit()
                view = JobView.of(row)
            self.tasks[view.id] = asyncio.create_task(
                self._run(view.id, parsed, data_source, broker), name=f"backtest-{view.id}"
            )
        return view

    # -- running ---------------------------------------------------------------------------
    async def _set(self, job_id: str, **values: Any) -> None:
        async with self.db() as session:
            await session.execute(
                update(BacktestRunRow).where(BacktestRunRow.id == job_id).values(**values)
            )
            await session.commit()

    async def _run(
        self, job_id: str, config: BacktestConfig, data_source: str, broker: str
    ) -> None:
        try:
            await self._released.wait()
            await self._set(job_id, status="RUNNING", started_at=_now(), heartbeat_at=_now())
            fetch = paper_history(config.seed) if data_source == "paper" else None
            source = CandleSource(
                self.candles, "paper" if data_source == "paper" else broker, fetch
            )
            backtest = Backtest(config, source)
            instruments, timeframe = backtest.plan()  # load here, replay in a thread
            bars = await source.load(instruments, timeframe, config.start, config.end)
            loop = asyncio.get_running_loop()
            replay = loop.run_in_executor(self.executor, run_backtest, config, InMemorySource(bars))
            while True:
                done, _ = await asyncio.wait({replay}, timeout=HEARTBEAT_SECONDS)
                if done:
                    break
                await self._set(job_id, heartbeat_at=_now())
            result = replay.result()
            body = result.to_dict(max_points=CURVE_POINTS, max_log=LOG_ENTRIES)
            await self._set(
                job_id,
                status="DONE" if result.error is None else "FAILED",
                error=result.error,
                result=body,
                finished_at=_now(),
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._set(job_id, status="FAILED", error=INTERRUPTED, finished_at=_now())
            raise
        except DomainError as exc:
            await self._set(
                job_id,
                status="FAILED",
                error=f"[{exc.code.value}] {exc.message}",
                finished_at=_now(),
            )
        except Exception as exc:  # noqa: BLE001 - a job's failure is its row's, not the server's
            await self._set(
                job_id, status="FAILED", error=f"{type(exc).__name__}: {exc}", finished_at=_now()
            )

    async def wait(self, job_id: str) -> None:
        """Until the job's task in this process is over (tests, shutdown)."""
        task = self.tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- reading ---------------------------------------------------------------------------
    def _stale(self, row: BacktestRunRow) -> bool:
        if row.status not in ACTIVE or row.id in self.tasks:
            return False
        beat = row.heartbeat_at
        return beat is None or beat < _now() - timedelta(seconds=STALE_SECONDS)

    async def get(self, user_id: str, job_id: str) -> JobView:
        await self.recover()
        async with self.db() as session:
            row = await session.get(BacktestRunRow, job_id)
            if row is None or row.user_id != user_id:
                raise DomainError("no such backtest", ErrorCode.NOT_FOUND, backtest_id=job_id)
            if self._stale(row):
                row.status, row.error, row.finished_at = "FAILED", INTERRUPTED, _now()
                await session.commit()
            return JobView.of(row)

    async def list(self, user_id: str, limit: int = 100) -> list[JobView]:
        await self.recover()
        async with self.db() as session:
            rows = await session.scalars(
                select(BacktestRunRow)
                .where(BacktestRunRow.user_id == user_id)
                .order_by(BacktestRunRow.created_at.desc())
                .limit(limit)
            )
            return [JobView.of(r) for r in rows]

    async def delete(self, user_id: str, job_id: str) -> None:
        """Forget a finished job; an unfinished one is a CONFLICT (it cannot be stopped
        mid-replay)."""
        async with self.db() as session:
            row = await session.get(BacktestRunRow, job_id)
            if row is None or row.user_id != user_id:
                raise DomainError("no such backtest", ErrorCode.NOT_FOUND, backtest_id=job_id)
            if row.status in ACTIVE and not self._stale(row):
                raise DomainError("the backtest has not finished", ErrorCode.CONFLICT)
            await session.delete(row)
            await session.commit()
        self.tasks.pop(job_id, None)


def jobs_for(runtime: Any) -> BacktestJobs:
    """The runtime's job service (``Runtime.backtests``: made on first use, closed with
    the runtime)."""
    return cast(BacktestJobs, runtime.backtests)


def build_jobs(runtime: Any) -> BacktestJobs:
    settings = runtime.settings
    return BacktestJobs(
        runtime.db,
        runtime.candles,
        runner_id=f"backtests:{runtime.lease_holder_id}",
        max_per_user=settings.backtest_max_per_user,
        max_running=settings.backtest_max_running,
    )
