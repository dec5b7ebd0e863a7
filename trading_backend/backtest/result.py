"""What a backtest returns: ``BacktestResult``.

The equity curve (``curve.EquityCurve``) has a point per bar, worked out when read, and
is turned into ``EquityPoint``s only when asked, downsampled for output
(``equity_curve(max_points)``).
Metrics are ``analytics.compute_report`` over the curve's opening point and daily closes
(exactly the series ``compute_report`` itself reduces a curve to, so the figures are the
same as over every bar, without a million timestamp conversions) and the fills, with the
exposure measured in bars (bars with a position open / all bars).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from trading_backend.analytics.metrics import EquityPoint, PerformanceReport
from trading_backend.backtest.broker import PositionSnapshot, position_snapshots
from trading_backend.backtest.config import BacktestConfig
from trading_backend.backtest.context import LogEntry
from trading_backend.backtest.curve import EquityCurve
from trading_backend.domain import Fill, Order, Position, Timeframe
from trading_backend.strategies.context import jsonable

__all__ = ["DEFAULT_CURVE_POINTS", "BacktestResult"]

DEFAULT_CURVE_POINTS = 1_000


@dataclass(repr=False)
class BacktestResult:
    """Everything a run produced. Money is Decimal; ``to_dict`` is JSON-ready.

    Its ``repr`` is a one-line summary: a full dataclass repr of a million-bar curve would
    take seconds, and asyncio builds one of the result of ``asyncio.run``'s main task.
    """

    config: BacktestConfig
    strategy_id: str
    params: dict[str, Any]  # the validated params, as the live path stores them
    instruments: list[str]  # "EXCHANGE:SYMBOL", in slot order
    timeframe: Timeframe
    initial_capital: Decimal
    orders: list[Order]  # every order, final state, in placement order
    fills: list[Fill]  # every execution (the trades), in time order
    final_positions: list[Position]  # open at the end
    curve: EquityCurve  # the opening point, then one per bar (time)
    metrics: PerformanceReport | None
    bars_processed: int
    elapsed_seconds: float
    log: list[LogEntry]
    state: dict[str, Any]  # the strategy's state at the end
    error: str | None = None  # the strategy raised: the replay stopped there
    day_tz: tzinfo | None = None
    charges_detail: dict[str, dict[str, str]] = field(default_factory=dict)
    _positions: list[PositionSnapshot] | None = field(default=None, init=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"<BacktestResult {self.config.strategy} {','.join(self.instruments)} "
            f"{self.timeframe.value}: {self.bars_processed} bars, {len(self.fills)} fills, "
            f"final equity {self.final_equity}{', error' if self.error else ''}>"
        )

    @property
    def completed(self) -> bool:
        return self.error is None

    @property
    def positions(self) -> list[PositionSnapshot]:
        """An instrument's position after each fill (replayed from the fills, once)."""
        cached = self._positions
        if cached is None:
            cached = self._positions = position_snapshots(self.fills)
        return cached

    @property
    def equity_times(self) -> list[datetime]:
        """Every point's time (built on first use)."""
        return self.curve.times

    @property
    def equity_values(self) -> list[Decimal]:
        """Every point's equity (worked out on first use)."""
        return self.curve.values

    @property
    def final_equity(self) -> Decimal:
        return self.curve.value(len(self.curve) - 1)

    @property
    def total_charges(self) -> Decimal:
        return sum((f.charges for f in self.fills), Decimal(0))

    @property
    def bars_per_second(self) -> float:
        return self.bars_processed / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def equity_curve(self, max_points: int | None = None) -> list[EquityPoint]:
        """The curve, every point or at most ``max_points`` spread evenly (first and last
        kept)."""
        curve = self.curve
        n = len(curve)
        if max_points is None or n <= max_points:
            indices: range | list[int] = range(n)
        elif max_points < 2:
            indices = [n - 1]
        else:
            step = (n - 1) / (max_points - 1)
            indices = [round(i * step) for i in range(max_points)]
        return [EquityPoint(curve.time(i), curve.value(i)) for i in indices]

    def daily_equity(self) -> list[tuple[date, Decimal]]:
        if self.day_tz is None:
            return []
        return [(day, value) for day, value, _ in self.curve.daily_closes(self.day_tz)]

    def daily_returns(self) -> list[tuple[date, float]]:
        """Simple returns between consecutive daily closes (the first day against the
        opening equity)."""
        days = self.daily_equity()
        out: list[tuple[date, float]] = []
        previous = self.initial_capital
        for day, value in days:
            if previous > 0:
                out.append((day, float(value / previous - 1)))
            previous = value
        return out

    def to_dict(
        self, *, max_points: int = DEFAULT_CURVE_POINTS, max_log: int = 1_000
    ) -> dict[str, Any]:
        """A JSON-ready summary: the curve downsampled, the log cut to its last entries."""
        return {
            "strategy": self.config.strategy,
            "strategy_id": self.strategy_id,
            "params": jsonable(self.params),
            "config": self.config.model_dump(mode="json"),
            "instruments": list(self.instruments),
            "timeframe": self.timeframe.value,
            "completed": self.completed,
            "error": self.error,
            "initial_capital": str(self.initial_capital),
            "final_equity": str(self.final_equity),
            "total_charges": str(self.total_charges),
            "bars_processed": self.bars_processed,
            "elapsed_seconds": self.elapsed_seconds,
            "bars_per_second": self.bars_per_second,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "equity_curve": [
                {"timestamp": p.timestamp.isoformat(), "equity": str(p.equity)}
                for p in self.equity_curve(max_points)
            ],
            "daily_returns": [
                {"date": day.isoformat(), "return": value} for day, value in self.daily_returns()
            ],
            "orders": [_order_dict(o) for o in self.orders],
            "fills": [jsonable(dataclasses.asdict(f)) for f in self.fills],
            "positions": [jsonable(dataclasses.asdict(p)) for p in self.positions],
            "final_positions": [jsonable(dataclasses.asdict(p)) for p in self.final_positions],
            "log": [
                {"timestamp": e.timestamp.isoformat(), "kind": e.kind, "data": jsonable(e.data)}
                for e in self.log[-max_log:]
            ],
            "state": jsonable(self.state),
        }


def _order_dict(order: Order) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(dataclasses.asdict(order))
    data.pop("user_id", None)
    data.pop("config_id", None)
    return data
