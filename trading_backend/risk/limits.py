"""Risk limits: what one user or broker account may do, and how limits combine.

Every limit is optional: ``None`` switches it off. The defaults suit an Indian retail
account (amounts in rupees). An administrator sets a *ceiling* (a profile); a user may
only tighten it: ``ceiling.tightened(proposed)`` is what applies, and
``ensure_within_ceiling(proposed, ceiling)`` tells the user which fields would loosen it.
``None`` in a ceiling means "no ceiling" for that field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import time
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from trading_backend.domain import DomainError, ErrorCode
from trading_backend.domain.money import to_decimal


class TradingState(StrEnum):
    """What a scope (global, a user, an account) may still do.

    ACTIVE accepts every order the rules allow; REDUCING only orders that reduce an
    existing position without flipping it; HALTED accepts nothing."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]

    def stricter(self, other: TradingState) -> TradingState:
        return self if self.strictness >= other.strictness else other


_STRICTNESS = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class _Kind(StrEnum):
    """How a field is parsed and which of two values is the stricter one."""

    MONEY = "money"  # Decimal >= 0, lower is stricter
    COUNT = "count"  # int >= 0, lower is stricter
    POSITIVE_COUNT = "positive_count"  # int >= 1, lower is stricter
    PERCENT = "percent"  # Decimal > 0, lower is stricter
    WINDOW = "window"  # float seconds > 0, HIGHER is stricter (remembers longer)
    BREACH = "breach"  # REDUCING or HALTED, HALTED is stricter
    FLAG = "flag"  # bool, True is stricter
    TIME = "time"  # time of day (IST), earlier is stricter


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Pre-trade and loss limits. Amounts are rupees (Decimal); ``None`` turns a limit off.

    Per order: ``max_order_value`` (quantity x price, the last price for a MARKET order),
    ``max_order_quantity``, ``price_band_pct`` (a LIMIT/SL price within +-N% of the last
    price), ``duplicate_window_seconds``. Per account and per user: ``max_open_orders``,
    ``max_open_positions``, ``max_symbol_exposure`` and ``max_gross_exposure`` (positions at
    the last price plus working orders, worst case), ``order_rate_per_second`` (a sliding
    second; 10 is the exchanges' threshold for unregistered retail algos), and the loss
    limits (realised + unrealised - charges since the start of the IST day / week, weeks
    starting Monday). A loss beyond a loss limit moves the scope to ``on_loss_breach``
    (and asks for a square-off when ``square_off_on_breach``). ``intraday_square_off`` is
    when INTRADAY positions should be closed (IST); the integration acts on it.
    """

    max_order_value: Decimal | None = Decimal("1000000")  # ₹10 lakh
    max_order_quantity: int | None = None
    max_open_orders: int | None = 50
    max_open_positions: int | None = 25
    max_symbol_exposure: Decimal | None = Decimal("2500000")  # ₹25 lakh
    max_gross_exposure: Decimal | None = Decimal("10000000")  # ₹1 crore
    price_band_pct: Decimal | None = Decimal("5")
    order_rate_per_second: int | None = 10
    duplicate_window_seconds: float | None = 2.0
    daily_loss_limit: Decimal | None = None
    weekly_loss_limit: Decimal | None = None
    on_loss_breach: TradingState = TradingState.HALTED
    square_off_on_breach: bool = False
    intraday_square_off: time | None = time(15, 15)

    KINDS: ClassVar[dict[str, _Kind]] = {
        "max_order_value": _Kind.MONEY,
        "max_order_quantity": _Kind.COUNT,
        "max_open_orders": _Kind.COUNT,
        "max_open_positions": _Kind.COUNT,
        "max_symbol_exposure": _Kind.MONEY,
        "max_gross_exposure": _Kind.MONEY,
        "price_band_pct": _Kind.PERCENT,
        "order_rate_per_second": _Kind.POSITIVE_COUNT,
        "duplicate_window_seconds": _Kind.WINDOW,
        "daily_loss_limit": _Kind.MONEY,
        "weekly_loss_limit": _Kind.MONEY,
        "on_loss_breach": _Kind.BREACH,
        "square_off_on_breach": _Kind.FLAG,
        "intraday_square_off": _Kind.TIME,
    }

    def __post_init__(self) -> None:
        for name, kind in self.KINDS.items():
            value = getattr(self, name)
            # Convenience: whole numbers are accepted for amounts and seconds.
            if isinstance(value, int) and not isinstance(value, bool):
                if kind in (_Kind.MONEY, _Kind.PERCENT):
                    object.__setattr__(self, name, Decimal(value))
                elif kind is _Kind.WINDOW:
                    object.__setattr__(self, name, float(value))
            elif kind is _Kind.BREACH and isinstance(value, str):
                object.__setattr__(self, name, _parse(name, kind, value))
            _check(name, getattr(self, name))

    # -- combining -------------------------------------------------------------------

    def tightened(self, other: RiskLimits) -> RiskLimits:
        """Each field the stricter of ``self`` and ``other`` (``None`` means no limit)."""
        values = {
            name: _stricter(kind, getattr(self, name), getattr(other, name))
            for name, kind in self.KINDS.items()
        }
        return RiskLimits(**values)

    def loosened_fields(self, ceiling: RiskLimits) -> list[str]:
        """The fields where ``self`` is looser than ``ceiling`` (empty: within it)."""
        return [
            name
            for name, kind in self.KINDS.items()
            if _stricter(kind, getattr(ceiling, name), getattr(self, name)) != getattr(self, name)
        ]

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """Plain values: Decimals stay Decimal, times become ``"HH:MM"``, states strings."""
        out: dict[str, object] = {}
        for name in self.KINDS:
            value = getattr(self, name)
            if isinstance(value, time):
                out[name] = value.strftime("%H:%M:%S" if value.second else "%H:%M")
            elif isinstance(value, TradingState):
                out[name] = value.value
            else:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: RiskLimits | None = None) -> RiskLimits:
        """Parse and validate. Missing fields come from ``base`` (the defaults if None);
        an explicit ``null`` turns a limit off. Bad input raises ``DomainError``
        (VALIDATION_ERROR) naming the field."""
        if not isinstance(data, dict):
            raise _invalid("limits", "must be an object")
        unknown = sorted(set(data) - set(cls.KINDS))
        if unknown:
            raise DomainError(
                f"unknown risk limit(s): {', '.join(unknown)}",
                ErrorCode.VALIDATION_ERROR,
                field=unknown[0],
                fields=unknown,
            )
        values = {name: getattr(base or _DEFAULTS, name) for name in cls.KINDS}
        for name, raw in data.items():
            values[name] = _parse(name, cls.KINDS[name], raw)
        return cls(**values)


def ensure_within_ceiling(proposed: RiskLimits, ceiling: RiskLimits) -> None:
    """Raise ``DomainError`` (VALIDATION_ERROR) naming every field of ``proposed`` that is
    looser than ``ceiling`` (the administrator's limit). Returns if all are within it."""
    loose = proposed.loosened_fields(ceiling)
    if not loose:
        return
    parts = []
    for name in loose:
        mine = proposed.to_dict()[name]
        theirs = ceiling.to_dict()[name]
        shown = "off" if mine is None else mine
        parts.append(f"{name} ({shown} is looser than the allowed {theirs})")
    raise DomainError(
        "risk limits may only be tightened: " + "; ".join(parts),
        ErrorCode.VALIDATION_ERROR,
        field=loose[0],
        fields=loose,
        ceiling={name: ceiling.to_dict()[name] for name in loose},
    )


# -- helpers -----------------------------------------------------------------------------


def _invalid(name: str, problem: str) -> DomainError:
    return DomainError(f"{name} {problem}", ErrorCode.VALIDATION_ERROR, field=name)


def _stricter(kind: _Kind, a: Any, b: Any) -> Any:
    if kind is _Kind.BREACH:
        return TradingState(a).stricter(TradingState(b))
    if kind is _Kind.FLAG:
        return bool(a) or bool(b)
    if a is None:
        return b
    if b is None:
        return a
    if kind is _Kind.WINDOW:
        return max(a, b)
    return min(a, b)


def _check(name: str, value: Any) -> None:
    """Validate a constructed value (types and ranges); raises VALIDATION_ERROR."""
    kind = RiskLimits.KINDS[name]
    if kind is _Kind.BREACH:
        if value not in (TradingState.REDUCING, TradingState.HALTED):
            raise _invalid(name, "must be REDUCING or HALTED")
        return
    if kind is _Kind.FLAG:
        if not isinstance(value, bool):
            raise _invalid(name, "must be true or false")
        return
    if value is None:
        return
    if kind is _Kind.TIME:
        if not isinstance(value, time) or value.tzinfo is not None:
            raise _invalid(name, "must be a time of day (IST) like 15:15")
        return
    if kind in (_Kind.COUNT, _Kind.POSITIVE_COUNT):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(name, "must be a whole number")
        minimum = 1 if kind is _Kind.POSITIVE_COUNT else 0
        if value < minimum:
            raise _invalid(name, f"must be at least {minimum}, got {value}")
        return
    if kind is _Kind.WINDOW:
        if isinstance(value, bool) or not isinstance(value, float):
            raise _invalid(name, "must be a number of seconds")
        if not math.isfinite(value) or value <= 0:
            raise _invalid(name, f"must be positive, got {value}")
        return
    if not isinstance(value, Decimal) or not value.is_finite():
        raise _invalid(name, "must be a finite Decimal")
    if kind is _Kind.PERCENT and value <= 0:
        raise _invalid(name, f"must be positive, got {value}")
    if value < 0:
        raise _invalid(name, f"must not be negative, got {value}")


def _parse(name: str, kind: _Kind, raw: Any) -> Any:
    """Turn JSON-ish input into the field's type (range checks happen in ``_check``)."""
    if kind is _Kind.BREACH:
        try:
            return TradingState(str(raw).upper())
        except ValueError:
            raise _invalid(name, "must be REDUCING or HALTED") from None
    if kind is _Kind.FLAG:
        if not isinstance(raw, bool):
            raise _invalid(name, "must be true or false")
        return raw
    if raw is None:
        return None
    if kind is _Kind.TIME:
        if isinstance(raw, time):
            return raw
        try:
            return time.fromisoformat(str(raw))
        except ValueError:
            raise _invalid(name, f"must be a time of day like 15:15, got {raw!r}") from None
    try:
        number = to_decimal(raw, name)
    except ValueError as exc:
        raise _invalid(name, f"must be a number ({exc})") from None
    if kind in (_Kind.COUNT, _Kind.POSITIVE_COUNT):
        if number != number.to_integral_value():
            raise _invalid(name, f"must be a whole number, got {raw!r}")
        return int(number)
    if kind is _Kind.WINDOW:
        return float(number)
    return number


_DEFAULTS = RiskLimits()
