"""Statutory and broker charges on each paper fill.

Why model charges at all: an intraday strategy that looks profitable before costs is
often a loser after them, and paper results are only useful if they are comparable to
a real contract note. The schedule below follows NSE / Zerodha-style pricing as of 2025.
It is a plain dataclass of rates so that a broker config can override any of them
(``settings["charges"] = {"brokerage_cap": "0"}``) and a backtester can reuse it.

Rates (fractions of turnover = price x quantity, unless stated):

=====================  ================  ================  ============  ====================
Component              Equity delivery   Equity intraday   Futures       Options (premium)
=====================  ================  ================  ============  ====================
Brokerage              0                 min(₹20, 0.03%)   min(₹20,      ₹20 flat
                                                           0.03%)
STT                    0.1% buy & sell   0.025% sell       0.02% sell    0.1% sell
Exchange transaction   0.00297%          0.00297%          0.00173%      0.03503%
SEBI fee               0.0001% (₹10 per crore) on every segment
GST                    18% of (brokerage + exchange transaction + SEBI fee)
Stamp duty (buy only)  0.015%            0.003%            0.002%        0.003%
=====================  ================  ================  ============  ====================

Crypto (``Exchange.CRYPTO`` or ``SPOT`` instruments) pays only an exchange trading fee:
0.1% taker and 0.1% maker by default, nothing else.

Simplifications, deliberately:

* Brokerage is charged per *fill*, not per executed order: an order filled in three
  parts pays up to three times ₹20 (for options, three times the flat fee). Real brokers
  charge per order per day; per fill keeps the function pure and stateless and errs
  on the expensive side.
* Each component is computed on the exact turnover and rounded to the paisa, half-up.
  GST is computed on the exact (unrounded) taxable sum and then rounded. The total is
  the sum of the rounded components. (Contract notes round STT to the rupee; we do not.)
* The segment comes from the instrument and product: options (``CE``/``PE``), futures
  (``FUT``), crypto, else equity — ``INTRADAY`` is intraday, and ``DELIVERY``, ``MARGIN``
  (carried overnight with margin funding) and anything else are charged as delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal
from enum import StrEnum

from trading_backend.domain import Exchange, Instrument, InstrumentType, OrderSide, ProductType
from trading_backend.domain.money import ZERO, round_money, to_decimal

__all__ = [
    "DEFAULT_RATES",
    "ChargeRates",
    "ChargesBreakdown",
    "Segment",
    "calculate_charges",
    "charges_for_fill",
    "segment_for",
]


class Segment(StrEnum):
    EQUITY_DELIVERY = "EQUITY_DELIVERY"
    EQUITY_INTRADAY = "EQUITY_INTRADAY"
    FUTURES = "FUTURES"
    OPTIONS = "OPTIONS"
    CRYPTO = "CRYPTO"


@dataclass(frozen=True, slots=True)
class ChargeRates:
    """The charge schedule; every field is a fraction of turnover except the ₹ amounts."""

    brokerage_delivery: Decimal = Decimal("0")
    brokerage_rate: Decimal = Decimal("0.0003")  # intraday and futures
    brokerage_cap: Decimal = Decimal("20")  # ₹ per fill, intraday and futures
    brokerage_options_flat: Decimal = Decimal("20")  # ₹ per fill
    stt_delivery: Decimal = Decimal("0.001")  # buy and sell
    stt_intraday_sell: Decimal = Decimal("0.00025")
    stt_futures_sell: Decimal = Decimal("0.0002")
    stt_options_sell: Decimal = Decimal("0.001")
    exchange_equity: Decimal = Decimal("0.0000297")
    exchange_futures: Decimal = Decimal("0.0000173")
    exchange_options: Decimal = Decimal("0.0003503")
    sebi_rate: Decimal = Decimal("0.000001")
    gst_rate: Decimal = Decimal("0.18")
    stamp_delivery: Decimal = Decimal("0.00015")
    stamp_intraday: Decimal = Decimal("0.00003")
    stamp_futures: Decimal = Decimal("0.00002")
    stamp_options: Decimal = Decimal("0.00003")
    crypto_taker_fee: Decimal = Decimal("0.001")
    crypto_maker_fee: Decimal = Decimal("0.001")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, object] | None) -> ChargeRates:
        """Defaults with some rates replaced; unknown names and negative values are errors."""
        if not overrides:
            return cls()
        if not isinstance(overrides, Mapping):
            raise ValueError("charges must be a mapping of rate name to value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown charge rate(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Decimal] = {}
        for name, raw in overrides.items():
            value = to_decimal(raw, f"charges.{name}")
            if value < 0:
                raise ValueError(f"charges.{name} must not be negative, got {value}")
            values[name] = value
        return replace(cls(), **values)

    def to_dict(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}


DEFAULT_RATES = ChargeRates()


@dataclass(frozen=True, slots=True)
class ChargesBreakdown:
    """One fill's charges by component, each rounded to the paisa."""

    segment: Segment
    turnover: Decimal
    brokerage: Decimal = ZERO
    stt: Decimal = ZERO
    exchange_charges: Decimal = ZERO
    sebi_fee: Decimal = ZERO
    gst: Decimal = ZERO
    stamp_duty: Decimal = ZERO
    trading_fee: Decimal = ZERO  # crypto exchange fee

    @property
    def total(self) -> Decimal:
        return (
            self.brokerage
            + self.stt
            + self.exchange_charges
            + self.sebi_fee
            + self.gst
            + self.stamp_duty
            + self.trading_fee
        )

    def to_dict(self) -> dict[str, object]:
        # Flat and immutable fields: a shallow dict equals ``asdict`` without its deep
        # copies, which cost a backtest a third of each fill.
        data: dict[str, object] = {name: getattr(self, name) for name in _BREAKDOWN_FIELDS}
        data["total"] = self.total
        return data


_BREAKDOWN_FIELDS = tuple(f.name for f in fields(ChargesBreakdown))


def segment_for(
    instrument_type: InstrumentType,
    product_type: ProductType,
    exchange: Exchange | None = None,
) -> Segment:
    """Which column of the schedule a trade falls in (see the module docstring)."""
    if instrument_type in (InstrumentType.CE, InstrumentType.PE):
        return Segment.OPTIONS
    if instrument_type is InstrumentType.FUT:
        return Segment.FUTURES
    if exchange is Exchange.CRYPTO or instrument_type is InstrumentType.SPOT:
        return Segment.CRYPTO
    if product_type is ProductType.INTRADAY:
        return Segment.EQUITY_INTRADAY
    return Segment.EQUITY_DELIVERY


def calculate_charges(
    segment: Segment,
    side: OrderSide,
    quantity: int,
    price: Decimal,
    rates: ChargeRates = DEFAULT_RATES,
    *,
    is_maker: bool = False,
) -> ChargesBreakdown:
    """Charges for one fill of ``quantity`` units at ``price`` (the premium for options)."""
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    if price < 0:
        raise ValueError(f"price must not be negative, got {price}")
    turnover = price * quantity
    buy = side is OrderSide.BUY

    if segment is Segment.CRYPTO:
        fee_rate = rates.crypto_maker_fee if is_maker else rates.crypto_taker_fee
        return ChargesBreakdown(segment, turnover, trading_fee=round_money(turnover * fee_rate))

    if segment is Segment.EQUITY_DELIVERY:
        brokerage = turnover * rates.brokerage_delivery
        stt = turnover * rates.stt_delivery
        exchange = turnover * rates.exchange_equity
        stamp = turnover * rates.stamp_delivery
    elif segment is Segment.EQUITY_INTRADAY:
        brokerage = min(rates.brokerage_cap, turnover * rates.brokerage_rate)
        stt = ZERO if buy else turnover * rates.stt_intraday_sell
        exchange = turnover * rates.exchange_equity
        stamp = turnover * rates.stamp_intraday
    elif segment is Segment.FUTURES:
        brokerage = min(rates.brokerage_cap, turnover * rates.brokerage_rate)
        stt = ZERO if buy else turnover * rates.stt_futures_sell
        exchange = turnover * rates.exchange_futures
        stamp = turnover * rates.stamp_futures
    else:  # OPTIONS
        brokerage = rates.brokerage_options_flat
        stt = ZERO if buy else turnover * rates.stt_options_sell
        exchange = turnover * rates.exchange_options
        stamp = turnover * rates.stamp_options
    sebi = turnover * rates.sebi_rate
    gst = (brokerage + exchange + sebi) * rates.gst_rate
    return ChargesBreakdown(
        segment=segment,
        turnover=turnover,
        brokerage=round_money(brokerage),
        stt=round_money(stt),
        exchange_charges=round_money(exchange),
        sebi_fee=round_money(sebi),
        gst=round_money(gst),
        stamp_duty=round_money(stamp) if buy else ZERO,
    )


def charges_for_fill(
    instrument: Instrument,
    product_type: ProductType,
    side: OrderSide,
    quantity: int,
    price: Decimal,
    rates: ChargeRates = DEFAULT_RATES,
    *,
    is_maker: bool = False,
) -> ChargesBreakdown:
    segment = segment_for(instrument.instrument_type, product_type, instrument.exchange)
    return calculate_charges(segment, side, quantity, price, rates, is_maker=is_maker)
