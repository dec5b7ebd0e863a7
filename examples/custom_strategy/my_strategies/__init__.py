"""Example strategies for trading-backend, installable as a plugin package.

``pip install -e examples/custom_strategy`` declares ``opening_range_breakout`` in the
``trading_backend.strategies`` entry-point group (see ``pyproject.toml``); the registry
finds it there. Alternatively point ``STRATEGIES_DIR`` at this directory: the registry then
loads ``breakout.py`` as a file (files starting with ``_``, like this one, are skipped).
"""

from my_strategies.breakout import OpeningRangeBreakout, OpeningRangeBreakoutParams

__all__ = ["OpeningRangeBreakout", "OpeningRangeBreakoutParams"]
