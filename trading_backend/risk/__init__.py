"""Pre-trade risk. Today a pass-through port; the risk-engine issue fills it in."""

from trading_backend.risk.port import PassThroughRisk, RiskCheck, RiskRejected

__all__ = ["PassThroughRisk", "RiskCheck", "RiskRejected"]
