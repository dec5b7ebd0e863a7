"""Backtesting: historical bars replayed into the live strategy classes, filled by the
paper broker's own account code. The public API is described in ``engine.py``."""

from trading_backend.backtest.broker import PositionSnapshot
from trading_backend.backtest.config import BacktestConfig, parse_config, parse_instrument
from trading_backend.backtest.context import BacktestContext, LogEntry
from trading_backend.backtest.curve import EquityCurve
from trading_backend.backtest.data import (
    BarSource,
    CandleSource,
    CsvSource,
    InMemorySource,
    paper_history,
)
from trading_backend.backtest.engine import (
    Backtest,
    BacktestError,
    arun_backtest,
    run_backtest,
    validate_params,
)
from trading_backend.backtest.result import BacktestResult

__all__ = [
    "Backtest",
    "BacktestConfig",
    "BacktestContext",
    "BacktestError",
    "BacktestResult",
    "BarSource",
    "CandleSource",
    "CsvSource",
    "EquityCurve",
    "InMemorySource",
    "LogEntry",
    "PositionSnapshot",
    "arun_backtest",
    "paper_history",
    "parse_config",
    "parse_instrument",
    "run_backtest",
    "validate_params",
]
