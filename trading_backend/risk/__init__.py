"""Pre-trade risk: the port the order service calls, and the in-process risk engine.

``RiskEngine`` (engine.py) is synchronous and pure; the integration feeds it events and
calls ``check_and_reserve`` for every order. Limits live in limits.py, the rules and the
trading calendar in rules.py, the books in book.py, exchange freeze quantities in
freeze.py. See docs/risk.md.
"""

from trading_backend.risk.book import OpenOrder, ScopeState
from trading_backend.risk.engine import (
    GLOBAL,
    MARGIN_RATIOS,
    Breach,
    InsufficientFunds,
    RiskEngine,
    Scope,
)
from trading_backend.risk.freeze import FREEZE_QUANTITIES, freeze_quantity
from trading_backend.risk.limits import RiskLimits, TradingState, ensure_within_ceiling
from trading_backend.risk.port import PassThroughRisk, RiskCheck, RiskRejected
from trading_backend.risk.rules import (
    DEFAULT_RULES,
    HOLIDAYS,
    NSE_HOLIDAYS_2026,
    SESSIONS,
    CheckContext,
    Rule,
    TradingCalendar,
    Violation,
)

__all__ = [
    "DEFAULT_RULES",
    "FREEZE_QUANTITIES",
    "GLOBAL",
    "HOLIDAYS",
    "MARGIN_RATIOS",
    "NSE_HOLIDAYS_2026",
    "SESSIONS",
    "Breach",
    "CheckContext",
    "InsufficientFunds",
    "OpenOrder",
    "PassThroughRisk",
    "RiskCheck",
    "RiskEngine",
    "RiskLimits",
    "RiskRejected",
    "Rule",
    "Scope",
    "ScopeState",
    "TradingCalendar",
    "TradingState",
    "Violation",
    "ensure_within_ceiling",
    "freeze_quantity",
]
