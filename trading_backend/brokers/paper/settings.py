"""Validated settings of one paper account (``BrokerConfigData.settings``).

Why a dedicated parser: settings arrive as loose JSON from users (strings, floats,
ints). Converting and checking them once, up front, with messages naming the offending
key, means the simulator itself can trust its numbers, and a typo in a config fails at
broker creation instead of silently trading with defaults.

Keys (all optional):

=====================  ==========================================================  ==========
Key                    Meaning                                                     Default
=====================  ==========================================================  ==========
``initial_capital``    starting cash of the account (a positive number)            1000000
``slippage_bps``       adverse slippage on market fills, basis points (>= 0)       0
``intraday_leverage``  buying power multiple and 1/margin of INTRADAY (>= 1)       5
``margin_fractions``   ``{product: fraction}`` overrides, each in (0, 1]           see below
``participation``      share of a tick's volume one order may take, in (0, 1]      0.25
``charges``            ``{rate name: value}`` overrides of ``ChargeRates``         {}
``seed``               seed of the private market (only when none is shared)      42
``currency``           currency label reported by ``get_balance``                  "INR"
=====================  ==========================================================  ==========

Margin fractions default to DELIVERY 1.0, INTRADAY 1/intraday_leverage, MARGIN 0.25,
CARRYFORWARD 0.15. Unknown top-level keys are ignored (other layers may store their own
settings in the same dict); unknown names inside ``charges`` or ``margin_fractions`` are
errors because they can only be typos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from trading_backend.brokers.base import BrokerRejected
from trading_backend.brokers.paper.charges import ChargeRates
from trading_backend.brokers.paper.fill_model import DEFAULT_PARTICIPATION, FillModel
from trading_backend.domain import ErrorCode, ProductType
from trading_backend.domain.money import to_decimal

__all__ = ["KNOWN_KEYS", "PaperSettings"]

KNOWN_KEYS = frozenset(
    {
        "initial_capital",
        "slippage_bps",
        "intraday_leverage",
        "margin_fractions",
        "participation",
        "charges",
        "seed",
        "currency",
    }
)

DEFAULT_CAPITAL = Decimal("1000000")
DEFAULT_LEVERAGE = Decimal("5")
DEFAULT_SEED = 42
DEFAULT_MARGIN = {
    ProductType.DELIVERY: Decimal("1"),
    ProductType.MARGIN: Decimal("0.25"),
    ProductType.CARRYFORWARD: Decimal("0.15"),
}


def _invalid(message: str, key: str) -> BrokerRejected:
    return BrokerRejected(f"paper settings: {message}", ErrorCode.VALIDATION_ERROR, setting=key)


def _number(settings: Mapping[str, Any], key: str, default: Decimal) -> Decimal:
    raw = settings.get(key)
    if raw is None:
        return default
    try:
        return to_decimal(raw, key)
    except ValueError as exc:
        raise _invalid(str(exc), key) from None


@dataclass(frozen=True, slots=True)
class PaperSettings:
    initial_capital: Decimal = DEFAULT_CAPITAL
    slippage_bps: Decimal = Decimal("0")
    intraday_leverage: Decimal = DEFAULT_LEVERAGE
    margin_fractions: dict[ProductType, Decimal] = field(default_factory=dict)
    participation: Decimal = DEFAULT_PARTICIPATION
    charges: ChargeRates = field(default_factory=ChargeRates)
    seed: int = DEFAULT_SEED
    currency: str = "INR"

    def margin_fraction(self, product: ProductType) -> Decimal:
        if product in self.margin_fractions:
            return self.margin_fractions[product]
        if product is ProductType.INTRADAY:
            return 1 / self.intraday_leverage
        return DEFAULT_MARGIN[product]

    def fill_model(self) -> FillModel:
        return FillModel(slippage_bps=self.slippage_bps, participation=self.participation)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> PaperSettings:
        """Parse and validate; raises ``BrokerRejected`` (VALIDATION_ERROR) naming the key."""
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise _invalid("settings must be a mapping", "settings")
        capital = _number(settings, "initial_capital", DEFAULT_CAPITAL)
        if capital <= 0:
            raise _invalid(f"initial_capital must be positive, got {capital}", "initial_capital")
        slippage = _number(settings, "slippage_bps", Decimal("0"))
        if slippage < 0:
            raise _invalid(f"slippage_bps must not be negative, got {slippage}", "slippage_bps")
        leverage = _number(settings, "intraday_leverage", DEFAULT_LEVERAGE)
        if leverage < 1:
            raise _invalid(
                f"intraday_leverage must be at least 1, got {leverage}", "intraday_leverage"
            )
        participation = _number(settings, "participation", DEFAULT_PARTICIPATION)
        if not 0 < participation <= 1:
            raise _invalid(f"participation must be in (0, 1], got {participation}", "participation")
        fractions = cls._parse_fractions(settings.get("margin_fractions"))
        try:
            rates = ChargeRates.from_overrides(settings.get("charges"))
        except ValueError as exc:
            raise _invalid(f"charges: {exc}", "charges") from None
        seed_raw = settings.get("seed", DEFAULT_SEED)
        if isinstance(seed_raw, bool) or not isinstance(seed_raw, int | str):
            raise _invalid(f"seed must be an integer, got {seed_raw!r}", "seed")
        try:
            seed = int(seed_raw)
        except ValueError:
            raise _invalid(f"seed must be an integer, got {seed_raw!r}", "seed") from None
        if seed < 0:
            raise _invalid(f"seed must not be negative, got {seed}", "seed")
        currency = settings.get("currency", "INR")
        if not isinstance(currency, str) or not currency.strip():
            raise _invalid("currency must be a non-empty string", "currency")
        return cls(
            initial_capital=capital,
            slippage_bps=slippage,
            intraday_leverage=leverage,
            margin_fractions=fractions,
            participation=participation,
            charges=rates,
            seed=seed,
            currency=currency.strip().upper(),
        )

    @staticmethod
    def _parse_fractions(raw: object) -> dict[ProductType, Decimal]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise _invalid(
                "margin_fractions must be a mapping of product to fraction", "margin_fractions"
            )
        fractions: dict[ProductType, Decimal] = {}
        for name, value in raw.items():
            try:
                product = ProductType(str(name).upper())
            except ValueError:
                allowed = ", ".join(p.value for p in ProductType)
                raise _invalid(
                    f"margin_fractions: unknown product {name!r} (allowed: {allowed})",
                    "margin_fractions",
                ) from None
            try:
                fraction = to_decimal(value, f"margin_fractions.{name}")
            except ValueError as exc:
                raise _invalid(str(exc), "margin_fractions") from None
            if not 0 < fraction <= 1:
                raise _invalid(
                    f"margin_fractions.{name} must be in (0, 1], got {fraction}",
                    "margin_fractions",
                )
            fractions[product] = fraction
        return fractions
