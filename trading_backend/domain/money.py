"""Money is Decimal. Floats enter only at the edges and are converted through ``str``."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation

ZERO = Decimal("0")
PAISA = Decimal("0.01")


def to_decimal(value: object, field: str = "value") -> Decimal:
    """Convert an int, str, float or Decimal to a finite Decimal.

    Floats go through ``repr`` so that ``2500.1`` becomes ``Decimal('2500.1')``,
    not the binary expansion ``2500.09999...``.
    """
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"{field} must be a number, not a boolean")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"{field} must be a number, got {value!r}") from exc
    else:
        raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{field} must be finite")
    return result


def round_money(value: Decimal) -> Decimal:
    """Round a cash amount to the paisa (half-up, as exchanges and brokers do)."""
    return value.quantize(PAISA, rounding=ROUND_HALF_UP)


def round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    """Snap a price to the nearest multiple of ``tick`` (banker's rounding, no bias)."""
    if tick <= 0:
        return price
    return ((price / tick).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * tick).quantize(tick)


def is_multiple(value: Decimal, step: Decimal) -> bool:
    return step > 0 and (value % step) == 0
