"""Shared fixtures for the risk engine tests: a small instrument universe and a clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from trading_backend.domain import (
    BrokerOrder,
    Exchange,
    Instrument,
    InstrumentType,
    Order,
    OrderStatus,
)
from trading_backend.risk import RiskEngine, RiskLimits

# Wednesday 25 November 2026, 10:00 IST: a trading day, inside the NSE session.
NOW = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)

TCS = Instrument("TCS", Exchange.NSE, InstrumentType.EQ, lot_size=1, tick_size=Decimal("0.05"))
INFY = Instrument("INFY", Exchange.NSE, InstrumentType.EQ, tick_size=Decimal("0.05"))
SBIN = Instrument("SBIN", Exchange.NSE, InstrumentType.EQ, tick_size=Decimal("0.05"))
NIFTY = Instrument("NIFTY", Exchange.NSE, InstrumentType.INDEX)
NIFTY_FUT = Instrument(
    "NIFTY26DECFUT",
    Exchange.NFO,
    InstrumentType.FUT,
    lot_size=65,
    tick_size=Decimal("0.10"),
    expiry=date(2026, 12, 29),
    underlying="NIFTY",
)
BANKNIFTY_FUT = Instrument(
    "BANKNIFTY26DECFUT",
    Exchange.NFO,
    InstrumentType.FUT,
    lot_size=30,
    tick_size=Decimal("0.20"),
    expiry=date(2026, 12, 29),
)
OLD_FUT = Instrument(
    "NIFTY26OCTFUT",
    Exchange.NFO,
    InstrumentType.FUT,
    lot_size=65,
    expiry=date(2026, 10, 27),
    underlying="NIFTY",
)
BTC = Instrument("BTCUSDT", Exchange.CRYPTO, InstrumentType.SPOT, tick_size=Decimal("0.01"))
INSTRUMENTS = (TCS, INFY, SBIN, NIFTY, NIFTY_FUT, BANKNIFTY_FUT, OLD_FUT, BTC)
PRICES = {
    TCS: Decimal("3000"),
    INFY: Decimal("1500"),
    SBIN: Decimal("900"),
    NIFTY: Decimal("26000"),
    NIFTY_FUT: Decimal("26100"),
    BANKNIFTY_FUT: Decimal("58000"),
    BTC: Decimal("90000"),
}

# Limits that leave every rule off except those a test turns on.
OFF = RiskLimits(
    max_order_value=None,
    max_order_quantity=None,
    max_open_orders=None,
    max_open_positions=None,
    max_symbol_exposure=None,
    max_gross_exposure=None,
    price_band_pct=None,
    order_rate_per_second=None,
    duplicate_window_seconds=None,
)


def make_engine(limits: RiskLimits | None = None, *, prices: bool = True) -> RiskEngine:
    engine = RiskEngine(instruments=INSTRUMENTS, default_limits=limits or RiskLimits())
    if prices:
        for instrument, price in PRICES.items():
            engine.on_price(instrument.symbol, instrument.exchange, price, NOW)
    return engine


def order(
    side: str = "BUY",
    quantity: int = 1,
    price: str | Decimal | None = None,
    *,
    symbol: str = "TCS",
    exchange: str = "NSE",
    order_type: str | None = None,
    product: str = "DELIVERY",
    trigger: str | Decimal | None = None,
) -> BrokerOrder:
    kind = order_type or ("LIMIT" if price is not None else "MARKET")
    return BrokerOrder(
        symbol=symbol,
        exchange=exchange,
        side=side,
        order_type=kind,
        product_type=product,
        quantity=quantity,
        price=price,
        trigger_price=trigger,
    )


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"o{self.n}"


def entity(order_id: str, user_id: str, config_id: str, request: BrokerOrder) -> Order:
    """The persisted order the integration would build after ``check_and_reserve``."""
    return Order.from_request(order_id, user_id, config_id, request)


def submitted(order: Order) -> Order:
    order.transition(OrderStatus.SUBMITTED)
    order.transition(OrderStatus.OPEN)
    return order


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)
