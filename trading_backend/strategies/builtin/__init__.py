"""The built-in strategies, ready to register: ``BUILTINS`` lists their classes.

Each is a :class:`~trading_backend.strategies.base.BaseStrategy` subclass with a
``Params`` model; docs/strategies.md describes them and every parameter.
"""

from __future__ import annotations

from trading_backend.strategies.base import BaseStrategy
from trading_backend.strategies.builtin.dca import Dca
from trading_backend.strategies.builtin.futures_arbitrage import FuturesArbitrage
from trading_backend.strategies.builtin.grid import Grid
from trading_backend.strategies.builtin.mean_reversion import MeanReversion
from trading_backend.strategies.builtin.momentum import Momentum
from trading_backend.strategies.builtin.options_selling import OptionsSelling
from trading_backend.strategies.builtin.sma_crossover import SmaCrossover

BUILTINS: list[type[BaseStrategy]] = [
    MeanReversion,
    Momentum,
    OptionsSelling,
    FuturesArbitrage,
    Grid,
    Dca,
    SmaCrossover,
]

__all__ = [
    "BUILTINS",
    "Dca",
    "FuturesArbitrage",
    "Grid",
    "MeanReversion",
    "Momentum",
    "OptionsSelling",
    "SmaCrossover",
]
