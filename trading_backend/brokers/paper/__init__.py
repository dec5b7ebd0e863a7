"""The built-in paper broker: a simulated Indian exchange for risk-free trading and tests.

``SimulatedMarket`` is shared by every paper account in a process (put one in
``BrokerContext.market``); ``PaperBroker`` is one account trading against it. The fill
rules (``fill_model``) and the charge schedule (``charges``) are pure modules meant to be
reused by a backtester.
"""

from trading_backend.brokers.paper.broker import PaperBroker
from trading_backend.brokers.paper.charges import ChargeRates, ChargesBreakdown, Segment
from trading_backend.brokers.paper.fill_model import FillDecision, FillModel, FillRequest
from trading_backend.brokers.paper.market import Quote, SimulatedMarket
from trading_backend.brokers.paper.settings import PaperSettings
from trading_backend.brokers.paper.universe import InstrumentSpec, default_universe

__all__ = [
    "ChargeRates",
    "ChargesBreakdown",
    "FillDecision",
    "FillModel",
    "FillRequest",
    "InstrumentSpec",
    "PaperBroker",
    "PaperSettings",
    "Quote",
    "Segment",
    "SimulatedMarket",
    "default_universe",
]
