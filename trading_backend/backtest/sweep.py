"""Parameter sweeps: one backtest per point of a grid over strategy params, in parallel
processes, ranked by a metric.

* ``parse_values("5,10,20")`` / ``parse_values("5:50:5")`` (start:stop:step, the stop
  included when the steps reach it) give one param's values; ``expand_grid`` the
  cartesian product, in the order the params were given.
* Every combination is validated in the parent first, exactly as a single backtest is
  (``parse_config`` and the strategy's ``Params``): an invalid one (``fast_period >=
  slow_period``) becomes a row with status ``invalid`` and its message, never a worker.
* Data is loaded once in the parent (one ``source.load`` per distinct instruments and
  timeframe the combinations need) and handed to the workers by the pool's initializer:
  inherited by ``fork`` without a copy, pickled once per worker otherwise. Each worker
  re-reading the CSV would cost every worker the validated parse, about twice the
  unpickling of the same bars (1,200 daily bars: ~175 ms against ~95 ms, see
  docs/backtesting.md) and nothing at all under ``fork``, so the parent loads.
* A strategy that raises in one combination gives that row status ``failed`` and the
  error; a worker process that dies fails only its rows.
* Ranking (``rank_by``): any field of the metrics report (``sharpe``, ``cagr``,
  ``max_drawdown``, ...) or ``final_equity``/``total_charges``/``fills``. Higher is better
  (descending), except for the metrics where lower is better, listed in ``ASCENDING``
  (volatility, drawdown durations, losing trades, charges). ``max_drawdown`` is a
  fraction <= 0, so descending already puts the shallowest drawdown first. Rows without
  the metric (invalid, failed, too few days for a Sharpe ratio) come last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from trading_backend.analytics.metrics import PerformanceReport
from trading_backend.backtest.config import parse_config
from trading_backend.backtest.data import BarSource, InMemorySource, Instruments
from trading_backend.backtest.engine import Backtest, run_backtest
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Timeframe

__all__ = [
    "ASCENDING",
    "RANKABLE",
    "SweepRow",
    "expand_grid",
    "parse_grid",
    "parse_values",
    "rank",
    "run_sweep",
    "short_error",
]

ASCENDING = frozenset(
    {
        "annual_volatility",
        "max_drawdown_duration_days",
        "max_drawdown_duration_periods",
        "losing_trades",
        "total_charges",
        "charges",
    }
)
_EXTRA = ("final_equity", "total_charges", "fills")
RANKABLE = frozenset(f.name for f in dataclasses.fields(PerformanceReport)) | set(_EXTRA)
MAX_COMBINATIONS = 10_000

Series = dict[tuple[str, Exchange], list[Bar]]
Preloaded = dict[Timeframe, Series]


def short_error(exc: DomainError) -> str:
    """One line: the first line of the message, or for a validation error listing fields
    the first field's complaint (``fast_period must be below slow_period``)."""
    errors = exc.details.get("errors") if exc.details else None
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.get("loc", []) if p)
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        head = exc.message.split(":")[0]
        return f"{head}: {where + ': ' if where else ''}{msg}"
    return exc.message.split("\n")[0]


def _invalid(message: str) -> DomainError:
    return DomainError(message, ErrorCode.VALIDATION_ERROR)


def _value(text: str) -> Any:
    """JSON when it parses (numbers, booleans), else the text: the strategy's ``Params``
    then types it as for any other input."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_values(text: str) -> list[Any]:
    """``"5,10,20"`` -> [5, 10, 20]; ``"5:20:5"`` -> [5, 10, 15, 20]; ``"0.5:1:0.25"``
    -> decimals; anything else is one value."""
    raw = text.strip()
    parts = raw.split(":")
    if len(parts) == 3 and "," not in raw:
        try:
            start, stop, step = (Decimal(p) for p in parts)
        except InvalidOperation:
            raise _invalid(f"range {text!r} must be start:stop:step numbers") from None
        if step <= 0 or stop < start:
            raise _invalid(f"range {text!r} needs step > 0 and start <= stop")
        count = int((stop - start) / step) + 1
        if count > MAX_COMBINATIONS:
            raise _invalid(f"range {text!r} has {count} values (at most {MAX_COMBINATIONS})")
        integral = all(v == v.to_integral_value() for v in (start, step))
        return [int(start + i * step) if integral else str(start + i * step) for i in range(count)]
    values = [_value(v.strip()) for v in raw.split(",") if v.strip()]
    if not values:
        raise _invalid(f"no values in {text!r}")
    return values


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["fast_period=5,10", "slow_period=30:50:10"]`` -> the values per param."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        name, sep, values = pair.partition("=")
        if not sep or not name.strip():
            raise _invalid(
                f"--param {pair!r} must be name=value[,value...] or name=start:stop:step"
            )
        grid[name.strip()] = parse_values(values)
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    total = 1
    for values in grid.values():
        total *= len(values)
    if total > MAX_COMBINATIONS:
        raise _invalid(f"the grid has {total} combinations (at most {MAX_COMBINATIONS})")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


@dataclass
class SweepRow:
    """One combination: ``status`` is ``ok``, ``invalid`` (refused before running) or
    ``failed`` (the strategy or the data failed during the run)."""

    params: dict[str, Any]
    status: str = "ok"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    final_equity: str | None = None
    total_charges: str | None = None
    fills: int = 0
    elapsed_seconds: float = 0.0

    def value(self, metric: str) -> float | None:
        raw = getattr(self, metric) if metric in _EXTRA else self.metrics.get(metric)
        if raw is None or isinstance(raw, bool) or self.status != "ok":
            return None
        try:
            return float(raw)
        except (TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rank(rows: Sequence[SweepRow], metric: str) -> list[SweepRow]:
    """Best first (see the module docstring); rows without the metric last, in grid order."""
    if metric not in RANKABLE:
        raise _invalid(f"cannot rank by {metric!r}; one of {', '.join(sorted(RANKABLE))}")
    ascending = metric in ASCENDING
    scored = [(r.value(metric), i, r) for i, r in enumerate(rows)]
    present = [s for s in scored if s[0] is not None]
    missing = [s for s in scored if s[0] is None]
    present.sort(key=lambda s: (s[0] if ascending else -s[0], s[1]))  # type: ignore[operator]
    return [r for _, _, r in present + missing]


# -- workers ---------------------------------------------------------------------------------
_DATA: Preloaded = {}


class PreloadedSource:
    """Bars loaded once by the parent, by timeframe and instrument."""

    def __init__(self, data: Preloaded) -> None:
        self.data = data

    async def load(
        self, instruments: Instruments, timeframe: Timeframe, start: Any, end: Any
    ) -> dict[tuple[str, Exchange], list[Bar]]:
        return await InMemorySource(self.data.get(timeframe, {})).load(
            instruments, timeframe, start, end
        )


def _init_worker(data: Preloaded) -> None:
    global _DATA
    _DATA = data


def _run_one(config: dict[str, Any]) -> dict[str, Any]:
    """In a worker: one backtest, reduced to what the sweep table shows (small to send back)."""
    try:
        result = run_backtest(config, PreloadedSource(_DATA))
    except DomainError as exc:
        return {"status": "failed", "error": f"[{exc.code.value}] {short_error(exc)}"}
    return {
        "status": "ok" if result.error is None else "failed",
        "error": result.error,
        "metrics": result.metrics.to_dict() if result.metrics is not None else {},
        "final_equity": str(result.final_equity),
        "total_charges": str(result.total_charges),
        "fills": len(result.fills),
        "elapsed_seconds": result.elapsed_seconds,
    }


# -- the sweep -------------------------------------------------------------------------------
async def _preload(
    plans: Mapping[int, tuple[Instruments, Timeframe]], source: BarSource, base: Mapping[str, Any]
) -> Preloaded:
    cfg = parse_config(dict(base))
    wanted: dict[Timeframe, dict[tuple[str, Exchange], None]] = {}
    for instruments, timeframe in plans.values():
        wanted.setdefault(timeframe, {}).update(dict.fromkeys(instruments))
    data: Preloaded = {}
    for timeframe, instruments in wanted.items():
        data[timeframe] = await source.load(list(instruments), timeframe, cfg.start, cfg.end)
    return data


def run_sweep(
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    source: BarSource,
    *,
    rank_by: str = "sharpe",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[SweepRow]:
    """Every combination of ``grid`` over ``base``'s params, ranked by ``rank_by``.

    ``base`` is a config mapping as ``parse_config`` takes it; ``progress(done, total)``
    is called as results arrive. Raises ``DomainError`` only for a bad base config,
    grid or metric; a bad combination is a row."""
    if rank_by not in RANKABLE:
        raise _invalid(f"cannot rank by {rank_by!r}; one of {', '.join(sorted(RANKABLE))}")
    parse_config(dict(base))  # the base itself must be valid
    rows = [
        SweepRow(params={**dict(base.get("params") or {}), **combo}) for combo in expand_grid(grid)
    ]
    configs: dict[int, dict[str, Any]] = {}
    plans: dict[int, tuple[Instruments, Timeframe]] = {}
    for i, row in enumerate(rows):
        config = {**base, "params": row.params}
        try:
            backtest = Backtest(config, source)
            plans[i] = backtest.plan()  # the instruments the run will load
        except DomainError as exc:
            row.status, row.error = "invalid", short_error(exc)
            continue
        configs[i] = config
    total = len(rows)
    done = total - len(configs)
    if progress is not None:
        progress(done, total)
    if configs:
        data = asyncio.run(_preload(plans, source, base))
        count = max(1, min(workers or os.cpu_count() or 1, len(configs)))
        with ProcessPoolExecutor(count, initializer=_init_worker, initargs=(data,)) as pool:
            futures: dict[Future[dict[str, Any]], int] = {
                pool.submit(_run_one, config): i for i, config in configs.items()
            }
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                row = rows[futures[future]]
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    outcome = {"status": "failed", "error": f"worker process died: {exc}"}
                for key, value in outcome.items():
                    setattr(row, key, value)
                done += 1
                if progress is not None:
                    progress(done, total)
    return rank(rows, rank_by)
