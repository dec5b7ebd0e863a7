"""Accounts and the matching engine behind the fake SmartAPI.

Everything is keyed by client code (multi-user). Money is ``Decimal`` internally; the wire
formatting (strings for order-book quantities, positions, RMS and trades; JSON numbers for
order prices and holdings) happens in the ``*_row`` methods only.

Margin model (deliberately simple, documented so tests can compute expectations): the margin
an order needs is ``price x quantity x rate`` with rate 1 for DELIVERY and option buys, 0.2
for INTRADAY/BO, 0.15 for other derivative products; the part of an order that reduces an
existing position (or sells held DELIVERY stock) needs none.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from trading_backend.brokers.angel_one.fake.errors import INVALID_PARAMETERS, FakeAPIError
from trading_backend.brokers.angel_one.fake.instruments import Instrument, round_to_tick
from trading_backend.brokers.angel_one.protocol import (
    DURATIONS,
    EXCHANGES,
    IST,
    MODIFIABLE_VARIETIES,
    ORDER_TAG_MAX,
    ORDER_TIME_FORMAT,
    ORDER_TYPES,
    PRODUCT_TYPES,
    TERMINAL_STATUSES,
    TRANSACTION_TYPES,
    VARIETIES,
    to_decimal,
)

ZERO = Decimal(0)
CENT = Decimal("0.01")
INVALID_VARIETY_TEXT = "Invalid Order Variety. Value should be NORMAL, STOPLOSS, ROBO"
OPEN_STATUSES = frozenset({"open", "trigger pending", "after market order req received"})


def money(value: Decimal) -> str:
    """Wire string for an amount: two decimals, like the real position/RMS rows."""
    return str(value.quantize(CENT) + 0)  # "+ 0" turns -0.00 into 0.00


def num(value: Decimal) -> float:
    """Wire JSON number for a price (the real order rows and holdings use floats)."""
    return float(value.quantize(CENT) + 0)


def _int_field(body: Mapping[str, Any], key: str, default: int | None = None) -> int:
    raw = body.get(key)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid {key}")
    try:
        value = Decimal(str(raw).strip())
    except ArithmeticError as exc:
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid {key}") from exc
    if value != value.to_integral_value() or value < 0:
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid {key}")
    return int(value)


def _price_field(body: Mapping[str, Any], key: str) -> Decimal:
    raw = body.get(key)
    if raw is None or raw == "":
        return ZERO
    value = to_decimal(raw, Decimal(-1))
    if value < 0 or str(raw).strip().lower() in ("nan", "inf", "-inf", "infinity"):
        raise FakeAPIError(INVALID_PARAMETERS, f"Invalid {key}")
    return value


def _choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...], code: str) -> str:
    value = str(body.get(key) or "").strip().upper()
    if value not in allowed:
        message = None if code != INVALID_PARAMETERS else f"Invalid {key}"
        raise FakeAPIError(code, message)
    return value


@dataclass(slots=True)
class Quote:
    """Market state of one instrument, moved by ``FakeSmartAPI.set_price``."""

    ltp: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    updated: datetime
    volume: int = 0
    last_qty: int = 0
    turnover: Decimal = ZERO
    oi: int = 0

    @property
    def avg(self) -> Decimal:
        return (self.turnover / self.volume).quantize(CENT) if self.volume else self.ltp

    def trade(self, price: Decimal, qty: int, now: datetime) -> None:
        self.ltp = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += qty
        self.last_qty = qty
        self.turnover += price * qty
        self.updated = now


@dataclass(slots=True)
class Order:
    orderid: str
    uniqueorderid: str
    client_code: str
    inst: Instrument
    variety: str
    ordertype: str
    producttype: str
    duration: str
    transactiontype: str
    quantity: int
    price: Decimal
    triggerprice: Decimal
    disclosedquantity: int
    squareoff: Decimal
    stoploss: Decimal
    trailingstoploss: Decimal
    ordertag: str
    created: datetime
    updated: datetime
    status: str = "put order req received"
    text: str = ""
    filled: int = 0
    average: Decimal = ZERO
    cancelled: int = 0
    triggered: bool = False
    exchangeorderid: str = ""
    fillid: str = ""
    filltime: str = ""

    @property
    def is_buy(self) -> bool:
        return self.transactiontype == "BUY"

    @property
    def unfilled(self) -> int:
        return self.quantity - self.filled - self.cancelled

    @property
    def is_stop(self) -> bool:
        return self.ordertype in ("STOPLOSS_LIMIT", "STOPLOSS_MARKET")

    def row(self) -> dict[str, Any]:
        """Order book / details / order-update ``orderData`` row (§1.8.3)."""
        stamp = self.updated.astimezone(IST).strftime(ORDER_TIME_FORMAT)
        exch_stamp = stamp if self.exchangeorderid else ""
        return {
            "variety": self.variety,
            "ordertype": self.ordertype,
            "producttype": self.producttype,
            "duration": self.duration,
            "price": num(self.price),
            "triggerprice": num(self.triggerprice),
            "quantity": str(self.quantity),
            "disclosedquantity": str(self.disclosedquantity),
            "squareoff": num(self.squareoff),
            "stoploss": num(self.stoploss),
            "trailingstoploss": num(self.trailingstoploss),
            "tradingsymbol": self.inst.symbol,
            "transactiontype": self.transactiontype,
            "exchange": self.inst.exchange,
            "symboltoken": self.inst.token,
            "ordertag": self.ordertag,
            "instrumenttype": self.inst.instrumenttype,
            "strikeprice": num(self.inst.strike),
            "optiontype": self.inst.option_type,
            "expirydate": self.inst.expiry,
            "lotsize": str(self.inst.lotsize),
            "cancelsize": str(self.cancelled),
            "averageprice": num(self.average),
            "filledshares": str(self.filled),
            "unfilledshares": str(self.quantity - self.filled),
            "orderid": self.orderid,
            "text": self.text,
            "status": self.status,
            "orderstatus": self.status,
            "updatetime": stamp,
            "exchtime": exch_stamp,
            "exchorderupdatetime": exch_stamp,
            "fillid": self.fillid,
            "filltime": self.filltime,
            "parentorderid": "",
            "uniqueorderid": self.uniqueorderid,
            "exchangeorderid": self.exchangeorderid,
        }


@dataclass(slots=True)
class Trade:
    order: Order
    fillid: str
    price: Decimal
    qty: int
    at: datetime

    def row(self) -> dict[str, Any]:
        inst = self.order.inst
        return {
            "exchange": inst.exchange,
            "producttype": self.order.producttype,
            "tradingsymbol": inst.symbol,
            "instrumenttype": inst.instrumenttype,
            "symbolgroup": "EQ" if not inst.is_derivative else "XX",
            "strikeprice": money(inst.strike),
            "optiontype": inst.option_type,
            "expirydate": inst.expiry,
            "marketlot": str(inst.lotsize),
            "precision": "2",
            "multiplier": "-1",
            "tradevalue": money(self.price * self.qty),
            "transactiontype": self.order.transactiontype,
            "fillprice": money(self.price),
            "fillsize": str(self.qty),
            "orderid": self.order.orderid,
            "fillid": self.fillid,
            "filltime": self.at.astimezone(IST).strftime("%H:%M:%S"),
        }


@dataclass(slots=True)
class Position:
    inst: Instrument
    producttype: str
    buyqty: int = 0
    sellqty: int = 0
    buyamount: Decimal = ZERO
    sellamount: Decimal = ZERO

    @property
    def netqty(self) -> int:
        return self.buyqty - self.sellqty

    @property
    def buyavg(self) -> Decimal:
        return self.buyamount / self.buyqty if self.buyqty else ZERO

    @property
    def sellavg(self) -> Decimal:
        return self.sellamount / self.sellqty if self.sellqty else ZERO

    def realised(self) -> Decimal:
        return (self.sellavg - self.buyavg) * min(self.buyqty, self.sellqty)

    def unrealised(self, ltp: Decimal) -> Decimal:
        net = self.netqty
        if net > 0:
            return (ltp - self.buyavg) * net
        if net < 0:
            return (self.sellavg - ltp) * -net
        return ZERO

    def open_avg(self) -> Decimal:
        net = self.netqty
        return self.buyavg if net > 0 else self.sellavg if net < 0 else ZERO

    def row(self, quote: Quote) -> dict[str, str]:
        """getPosition row: every value a string (§1.8.5), plus the live-only P&L fields."""
        inst, net = self.inst, self.netqty
        realised, unrealised = self.realised(), self.unrealised(quote.ltp)
        netvalue = self.sellamount - self.buyamount
        netprice = abs(netvalue / net) if net else ZERO
        return {
            "exchange": inst.exchange,
            "symboltoken": inst.token,
            "producttype": self.producttype,
            "tradingsymbol": inst.symbol,
            "symbolname": inst.name,
            "instrumenttype": inst.instrumenttype,
            "priceden": "1.00",
            "pricenum": "1.00",
            "genden": "1.00",
            "gennum": "1.00",
            "precision": "2",
            "multiplier": "-1",
            "boardlotsize": "1",
            "buyqty": str(self.buyqty),
            "sellqty": str(self.sellqty),
            "buyamount": money(self.buyamount),
            "sellamount": money(self.sellamount),
            "symbolgroup": "EQ" if not inst.is_derivative else "XX",
            "strikeprice": money(inst.strike),
            "optiontype": inst.option_type,
            "expirydate": inst.expiry,
            "lotsize": str(inst.lotsize),
            "cfbuyqty": "0",
            "cfsellqty": "0",
            "cfbuyamount": "0.00",
            "cfsellamount": "0.00",
            "buyavgprice": money(self.buyavg),
            "sellavgprice": money(self.sellavg),
            "avgnetprice": money(netprice),
            "netvalue": money(netvalue),
            "netqty": str(net),
            "totalbuyvalue": money(self.buyamount),
            "totalsellvalue": money(self.sellamount),
            "cfbuyavgprice": "0.00",
            "cfsellavgprice": "0.00",
            "totalbuyavgprice": money(self.buyavg),
            "totalsellavgprice": money(self.sellavg),
            "netprice": money(netprice),
            "ltp": money(quote.ltp),
            "close": money(quote.close),
            "pnl": money(realised + unrealised),
            "realised": money(realised),
            "unrealised": money(unrealised),
        }


@dataclass(slots=True)
class Holding:
    inst: Instrument
    quantity: int = 0  # settled (realised) quantity
    t1quantity: int = 0  # bought today
    amount: Decimal = ZERO  # cost of the quantity held

    @property
    def total(self) -> int:
        return self.quantity + self.t1quantity

    @property
    def average(self) -> Decimal:
        return self.amount / self.total if self.total else ZERO

    def row(self, quote: Quote) -> dict[str, Any]:
        """getHolding row: JSON numbers here, unlike positions (§1.8.6)."""
        pnl = (quote.ltp - self.average) * self.total
        cost = self.average * self.total
        return {
            "tradingsymbol": self.inst.symbol,
            "exchange": self.inst.exchange,
            "isin": "INE" + self.inst.token.zfill(6)[-6:] + "01",
            "t1quantity": self.t1quantity,
            "realisedquantity": self.quantity,
            "quantity": self.total,
            "authorisedquantity": 0,
            "product": "DELIVERY",
            "collateralquantity": None,
            "collateraltype": None,
            "haircut": 0,
            "averageprice": num(self.average),
            "ltp": num(quote.ltp),
            "symboltoken": self.inst.token,
            "close": num(quote.close),
            "profitandloss": num(pnl),
            "pnlpercentage": num(pnl / cost * 100 if cost else ZERO),
        }


@dataclass(slots=True)
class GttRule:
    id: int
    client_code: str
    inst: Instrument
    transactiontype: str
    producttype: str
    price: Decimal
    qty: int
    triggerprice: Decimal
    disclosedqty: int
    timeperiod: int
    created: datetime
    updated: datetime
    trigger_above: bool  # fires when LTP rises to the trigger (else when it falls to it)
    status: str = "NEW"
    orderid: str = ""

    def row(self) -> dict[str, Any]:
        """Live-style rule (§1.8.9): numeric id, ISO dates with +05:30."""
        created = self.created.astimezone(IST)
        return {
            "stoplossprice": 0,
            "stoplosstriggerprice": 0,
            "gttType": "GENERIC",
            "status": self.status,
            "createddate": created.isoformat(timespec="seconds"),
            "updateddate": self.updated.astimezone(IST).isoformat(timespec="seconds"),
            "expirydate": (
                created.replace(microsecond=0) + timedelta(days=self.timeperiod)
            ).isoformat(),
            "clientid": self.client_code,
            "tradingsymbol": self.inst.symbol,
            "symboltoken": self.inst.token,
            "exchange": self.inst.exchange,
            "producttype": self.producttype,
            "transactiontype": self.transactiontype,
            "price": num(self.price),
            "qty": self.qty,
            "triggerprice": num(self.triggerprice),
            "disclosedqty": self.disclosedqty,
            "id": self.id,
        }


@dataclass(slots=True)
class Account:
    client_code: str
    pin: str
    totp_secret: str
    api_key: str
    cash: Decimal
    name: str
    orders: dict[str, Order] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    positions: dict[tuple[str, str, str], Position] = field(default_factory=dict)
    holdings: dict[tuple[str, str], Holding] = field(default_factory=dict)
    gtt: dict[int, GttRule] = field(default_factory=dict)

    def by_unique(self, uniqueorderid: str) -> Order | None:
        return next((o for o in self.orders.values() if o.uniqueorderid == uniqueorderid), None)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """A status change to push on the order-update WebSocket (row snapshot at that moment)."""

    client_code: str
    status: str
    row: dict[str, Any]


def margin_rate(inst: Instrument, producttype: str, is_buy: bool) -> Decimal:
    if producttype in ("INTRADAY", "BO"):
        return Decimal("0.2")
    if not inst.is_derivative or producttype == "DELIVERY":
        return Decimal(1)
    if inst.option_type and is_buy:
        return Decimal(1)
    return Decimal("0.15")


class Engine:
    """Order lifecycle, fills, positions, holdings, funds and GTT for all accounts."""

    def __init__(
        self,
        instruments: dict[tuple[str, str], Instrument],
        prices: Mapping[tuple[str, str], Decimal],
        clock: Callable[[], datetime],
        seed: int,
    ) -> None:
        self.instruments = instruments
        self.clock = clock
        self._rng = random.Random(seed)
        self.quotes: dict[tuple[str, str], Quote] = {}
        now = clock()
        for key, price in prices.items():
            close = round_to_tick(price * Decimal("0.99"), instruments[key].tick)
            self.quotes[key] = Quote(price, close, max(price, close), min(price, close), close, now)
        self.accounts: dict[str, Account] = {}
        self._order_seq = 0
        self._fill_seq = 0
        self._exch_seq = 0
        self._gtt_seq = 0
        self.auto_process = True

    # ------------------------------------------------------------------ lookups
    def instrument(self, exchange: str, token: str) -> Instrument:
        inst = self.instruments.get((str(exchange).upper(), str(token).strip()))
        if inst is None:
            raise FakeAPIError("AB1009")
        return inst

    def quote(self, inst: Instrument) -> Quote:
        return self.quotes[inst.key]

    def _order(self, account: Account, orderid: Any) -> Order:
        order = account.orders.get(str(orderid or "").strip())
        if order is None:
            raise FakeAPIError("AB1013")
        return order

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_orderid(self, now: datetime) -> str:
        self._order_seq += 1
        return now.astimezone(IST).strftime("%y%m%d") + f"{self._order_seq:09d}"

    # ------------------------------------------------------------------ funds
    def _position(self, account: Account, inst: Instrument, product: str) -> Position:
        key = (inst.exchange, inst.token, product)
        pos = account.positions.get(key)
        if pos is None:
            pos = account.positions[key] = Position(inst, product)
        return pos

    def _blocking_qty(self, account: Account, order: Order, qty: int) -> int:
        """How much of ``qty`` adds exposure (the rest closes a position / sells holdings)."""
        pos = account.positions.get((order.inst.exchange, order.inst.token, order.producttype))
        net = pos.netqty if pos else 0
        if order.is_buy and net < 0:
            return max(0, qty + net)
        if not order.is_buy and net > 0:
            qty = max(0, qty - net)
        if not order.is_buy and order.producttype == "DELIVERY":
            held = account.holdings.get(order.inst.key)
            qty = max(0, qty - (held.total if held else 0))
        return qty

    def _order_margin(self, account: Account, order: Order, qty: int) -> Decimal:
        price = order.price if order.price > 0 else self.quote(order.inst).ltp
        if order.ordertype == "STOPLOSS_MARKET":
            price = order.triggerprice
        rate = margin_rate(order.inst, order.producttype, order.is_buy)
        return price * self._blocking_qty(account, order, qty) * rate

    def funds(self, account: Account) -> dict[str, Decimal]:
        realised = unrealised = used = ZERO
        for pos in account.positions.values():
            quote = self.quote(pos.inst)
            realised += pos.realised()
            unrealised += pos.unrealised(quote.ltp)
            rate = margin_rate(pos.inst, pos.producttype, pos.netqty > 0)
            used += abs(pos.netqty) * pos.open_avg() * rate
        for order in account.orders.values():
            if order.status in OPEN_STATUSES:
                used += self._order_margin(account, order, order.unfilled)
        net = account.cash + realised + unrealised - used
        return {
            "cash": account.cash,
            "realised": realised,
            "unrealised": unrealised,
            "used": used,
            "net": net,
        }

    def rms_row(self, account: Account) -> dict[str, str | None]:
        f = self.funds(account)
        return {
            "net": money(f["net"]),
            "availablecash": money(f["cash"]),
            "availableintradaypayin": "0.00",
            "availablelimitmargin": "0.00",
            "collateral": "0.00",
            "m2munrealized": money(f["unrealised"]),
            "m2mrealized": money(f["realised"]),
            "utiliseddebits": money(f["used"]),
            "utilisedspan": None,
            "utilisedoptionpremium": None,
            "utilisedholdingsales": None,
            "utilisedexposure": None,
            "utilisedturnover": None,
            "utilisedpayout": money(ZERO),
        }

    # ------------------------------------------------------------------ orders
    def place(self, account: Account, body: Mapping[str, Any]) -> tuple[Order, list[OrderEvent]]:
        """Validate like the real API (errors before the order exists), then create the order
        and run it through the lifecycle. Book-level rejections still return an order id."""
        variety = _choice(body, "variety", VARIETIES, "AB1008")
        token = str(body.get("symboltoken") or "").strip()
        if not token:
            raise FakeAPIError("AB1009")
        exchange = _choice(body, "exchange", EXCHANGES, INVALID_PARAMETERS)
        inst = self.instrument(exchange, token)
        symbol = str(body.get("tradingsymbol") or "").strip()
        if symbol and symbol != inst.symbol:
            raise FakeAPIError("AB1009")
        if inst.is_index:
            raise FakeAPIError("AB1009", "Symbol Not Found (indices are not tradable)")
        transactiontype = _choice(body, "transactiontype", TRANSACTION_TYPES, INVALID_PARAMETERS)
        ordertype = _choice(body, "ordertype", ORDER_TYPES, INVALID_PARAMETERS)
        producttype = _choice(body, "producttype", PRODUCT_TYPES, "AB1012")
        duration = _choice(body, "duration", DURATIONS, INVALID_PARAMETERS)
        ordertag = str(body.get("ordertag") or "")
        if len(ordertag) > ORDER_TAG_MAX:
            raise FakeAPIError("AB4008")
        quantity = _int_field(body, "quantity")
        if quantity <= 0:
            raise FakeAPIError(INVALID_PARAMETERS, "Invalid quantity")
        price = _price_field(body, "price")
        trigger = _price_field(body, "triggerprice")
        if ordertype in ("LIMIT", "STOPLOSS_LIMIT") and price <= 0:
            raise FakeAPIError(INVALID_PARAMETERS, "Invalid price")
        if ordertype in ("STOPLOSS_LIMIT", "STOPLOSS_MARKET") and trigger <= 0:
            raise FakeAPIError(INVALID_PARAMETERS, "Invalid triggerprice")
        now = self.clock()
        order = Order(
            orderid=self._new_orderid(now),
            uniqueorderid=self._uuid(),
            client_code=account.client_code,
            inst=inst,
            variety=variety,
            ordertype=ordertype,
            producttype=producttype,
            duration=duration,
            transactiontype=transactiontype,
            quantity=quantity,
            price=price if ordertype in ("LIMIT", "STOPLOSS_LIMIT") else ZERO,
            triggerprice=trigger if ordertype in ("STOPLOSS_LIMIT", "STOPLOSS_MARKET") else ZERO,
            disclosedquantity=_int_field(body, "disclosedquantity", 0),
            squareoff=_price_field(body, "squareoff"),
            stoploss=_price_field(body, "stoploss"),
            trailingstoploss=_price_field(body, "trailingStopLoss"),
            ordertag=ordertag,
            created=now,
            updated=now,
        )
        account.orders[order.orderid] = order
        events = self.process(order) if self.auto_process else []
        return order, events

    def _set(self, order: Order, status: str, events: list[OrderEvent], text: str = "") -> None:
        order.status = status
        order.text = text
        order.updated = self.clock()
        events.append(OrderEvent(order.client_code, status, order.row()))

    def process(self, order: Order) -> list[OrderEvent]:
        """Move a freshly received order to its resting or final state."""
        events: list[OrderEvent] = []
        if order.status != "put order req received":
            return events
        account = self.accounts[order.client_code]
        reason = self._book_rejection(account, order)
        if reason:
            self._set(order, "rejected", events, reason)
            return events
        if order.variety == "AMO":
            self._set(order, "after market order req received", events)
            return events
        self._set(order, "open pending", events)
        self._exch_seq += 1
        order.exchangeorderid = f"1100000{self._exch_seq:09d}"
        if order.is_stop:
            self._set(order, "trigger pending", events)
        else:
            self._set(order, "open", events)
        self._match(order, self.quote(order.inst).ltp, events, aggressive=True)
        if order.status in OPEN_STATUSES and order.duration == "IOC" and not order.is_stop:
            order.cancelled = order.unfilled
            self._set(order, "cancelled", events)
        return events

    def _book_rejection(self, account: Account, order: Order) -> str:
        inst = order.inst
        if inst.is_derivative and order.quantity % inst.lotsize:
            return (
                f"Your order has been rejected. Quantity {order.quantity} is not a multiple "
                f"of the lot size {inst.lotsize}."
            )
        for label, value in (("price", order.price), ("trigger price", order.triggerprice)):
            if value > 0 and (value / inst.tick) % 1:
                return (
                    f"Your order has been rejected. The {label} {value} is not a multiple "
                    f"of the tick size {inst.tick}."
                )
        if order.is_stop:
            ltp = self.quote(inst).ltp
            if order.is_buy and order.triggerprice <= ltp:
                return (
                    "Your order has been rejected. Trigger price for a stop loss buy order "
                    f"should be higher than the last traded price {money(ltp)}."
                )
            if not order.is_buy and order.triggerprice >= ltp:
                return (
                    "Your order has been rejected. Trigger price for a stop loss sell order "
                    f"should be lower than the last traded price {money(ltp)}."
                )
        required = self._order_margin(account, order, order.quantity)
        if required > 0:
            available = self.funds(account)["net"]
            if required > available:
                return (
                    "Your order has been rejected due to Insufficient Funds. Available funds - "
                    f"Rs. {money(available)} . You require Rs. {money(required)} funds to "
                    "execute this order."
                )
        return ""

    def _match(
        self, order: Order, ltp: Decimal, events: list[OrderEvent], *, aggressive: bool
    ) -> None:
        """Fill ``order`` if ``ltp`` reaches it. ``aggressive`` = the order just arrived (or
        was just triggered) and takes the market price; a resting limit fills at its limit."""
        if order.status not in ("open", "trigger pending"):
            return
        buy = order.is_buy
        if order.status == "trigger pending":
            if (buy and ltp < order.triggerprice) or (not buy and ltp > order.triggerprice):
                return
            order.triggered = True
            self._set(order, "open", events)
            aggressive = True
        if order.ordertype in ("MARKET", "STOPLOSS_MARKET"):
            self._fill(order, ltp, events)
            return
        crosses = ltp <= order.price if buy else ltp >= order.price
        if crosses:
            self._fill(order, ltp if aggressive else order.price, events)

    def _fill(self, order: Order, price: Decimal, events: list[OrderEvent]) -> None:
        account = self.accounts[order.client_code]
        qty, now = order.unfilled, self.clock()
        self._fill_seq += 1
        fillid = f"{self._fill_seq:08d}"
        order.average = (order.average * order.filled + price * qty) / (order.filled + qty)
        order.filled += qty
        order.fillid, order.filltime = fillid, now.astimezone(IST).strftime("%H:%M:%S")
        account.trades.append(Trade(order, fillid, price, qty, now))
        pos = self._position(account, order.inst, order.producttype)
        if order.is_buy:
            pos.buyqty += qty
            pos.buyamount += price * qty
        else:
            pos.sellqty += qty
            pos.sellamount += price * qty
        if order.producttype == "DELIVERY" and not order.inst.is_derivative:
            self._settle_holding(account, order, price, qty)
        self.quote(order.inst).trade(price, qty, now)
        self._set(order, "complete", events)

    def _settle_holding(self, account: Account, order: Order, price: Decimal, qty: int) -> None:
        holding = account.holdings.get(order.inst.key)
        if holding is None:
            holding = account.holdings[order.inst.key] = Holding(order.inst)
        if order.is_buy:
            holding.t1quantity += qty
            holding.amount += price * qty
            return
        avg = holding.average
        sold_t1 = min(qty, holding.t1quantity)
        holding.t1quantity -= sold_t1
        holding.quantity = max(0, holding.quantity - (qty - sold_t1))
        holding.amount = avg * holding.total
        if holding.total == 0:
            del account.holdings[order.inst.key]

    def modify(self, account: Account, body: Mapping[str, Any]) -> tuple[Order, list[OrderEvent]]:
        variety = str(body.get("variety") or "").strip().upper()
        if variety not in MODIFIABLE_VARIETIES:
            raise FakeAPIError("AB1008", INVALID_VARIETY_TEXT)
        order = self._order(account, body.get("orderid"))
        if order.status not in OPEN_STATUSES:
            raise FakeAPIError(
                INVALID_PARAMETERS, f"Order is {order.status} and can no longer be modified"
            )
        if "ordertype" in body:
            order.ordertype = _choice(body, "ordertype", ORDER_TYPES, INVALID_PARAMETERS)
        if "producttype" in body:
            order.producttype = _choice(body, "producttype", PRODUCT_TYPES, "AB1012")
        if "duration" in body:
            order.duration = _choice(body, "duration", DURATIONS, INVALID_PARAMETERS)
        if "quantity" in body:
            quantity = _int_field(body, "quantity")
            if quantity <= order.filled:
                raise FakeAPIError(INVALID_PARAMETERS, "Invalid quantity")
            order.quantity = quantity
        if "price" in body:
            order.price = _price_field(body, "price")
        if "triggerprice" in body:
            order.triggerprice = _price_field(body, "triggerprice")
        if order.ordertype in ("LIMIT", "STOPLOSS_LIMIT") and order.price <= 0:
            raise FakeAPIError(INVALID_PARAMETERS, "Invalid price")
        events: list[OrderEvent] = []
        amo = order.status == "after market order req received"
        self._set(order, "modify after market order req received" if amo else "modified", events)
        if amo:
            order.status = "after market order req received"
            return order, events
        resting = "trigger pending" if order.is_stop and not order.triggered else "open"
        order.status = resting
        self._match(order, self.quote(order.inst).ltp, events, aggressive=True)
        return order, events

    def cancel(self, account: Account, body: Mapping[str, Any]) -> tuple[Order, list[OrderEvent]]:
        variety = str(body.get("variety") or "").strip().upper()
        if variety not in MODIFIABLE_VARIETIES:
            raise FakeAPIError("AB1008", INVALID_VARIETY_TEXT)
        order = self._order(account, body.get("orderid"))
        if order.status not in OPEN_STATUSES and order.status != "put order req received":
            raise FakeAPIError(
                INVALID_PARAMETERS, f"Order is {order.status} and can no longer be cancelled"
            )
        events: list[OrderEvent] = []
        order.cancelled = order.unfilled
        amo = order.status == "after market order req received"
        self._set(order, "cancelled after market order" if amo else "cancelled", events)
        return order, events

    def on_price(self, inst: Instrument, price: Decimal) -> list[OrderEvent]:
        """Move the market: resting orders that the new LTP reaches fill, stops trigger."""
        quote = self.quote(inst)
        quote.ltp = price
        quote.high, quote.low = max(quote.high, price), min(quote.low, price)
        quote.updated = self.clock()
        events: list[OrderEvent] = []
        for account in self.accounts.values():
            for order in list(account.orders.values()):
                if order.inst.key == inst.key and order.status in ("open", "trigger pending"):
                    self._match(order, price, events, aggressive=False)
        events.extend(self._fire_gtt(inst, price))
        quote.ltp = price  # fills above recorded their own prices; the market is at ``price``
        return events

    def terminal(self, order: Order) -> bool:
        return order.status in TERMINAL_STATUSES

    # ------------------------------------------------------------------ GTT
    def gtt_create(self, account: Account, body: Mapping[str, Any]) -> GttRule:
        exchange = str(body.get("exchange") or "").upper()
        if exchange not in ("NSE", "BSE"):
            raise FakeAPIError("AB9010", "Invalid Exchange Segment")
        try:
            inst = self.instrument(exchange, str(body.get("symboltoken") or ""))
        except FakeAPIError:
            raise FakeAPIError("AB9011", "Invalid Symbol Token") from None
        if body.get("tradingsymbol") and str(body["tradingsymbol"]) != inst.symbol:
            raise FakeAPIError("AB9012", "Invalid Trading Symbol")
        side = str(body.get("transactiontype") or "").upper()
        if side not in TRANSACTION_TYPES:
            raise FakeAPIError("AB9014", "Invalid Order Side")
        product = str(body.get("producttype") or "").upper()
        if product not in ("DELIVERY", "MARGIN"):
            raise FakeAPIError("AB9015", "Invalid Product Type")
        rule_fields = self._gtt_fields(body)
        now = self.clock()
        self._gtt_seq += 1
        ltp = self.quote(inst).ltp
        rule = GttRule(
            id=self._gtt_seq,
            client_code=account.client_code,
            inst=inst,
            transactiontype=side,
            producttype=product,
            created=now,
            updated=now,
            trigger_above=rule_fields["triggerprice"] > ltp,
            **rule_fields,
        )
        account.gtt[rule.id] = rule
        return rule

    @staticmethod
    def _gtt_fields(body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            qty = _int_field(body, "qty")
        except FakeAPIError:
            raise FakeAPIError("AB9006", "Invalid Order Quantity") from None
        if qty <= 0:
            raise FakeAPIError("AB9006", "Invalid Order Quantity")
        try:
            price = _price_field(body, "price")
            trigger = _price_field(body, "triggerprice")
        except FakeAPIError:
            raise FakeAPIError("AB9008", "Invalid Price") from None
        if price <= 0:
            raise FakeAPIError("AB9008", "Invalid Price")
        if trigger <= 0:
            raise FakeAPIError("AB9009", "Invalid Trigger Price")
        try:
            disclosed = _int_field(body, "disclosedqty", 0)
            period = _int_field(body, "timeperiod", 365)
        except FakeAPIError:
            raise FakeAPIError("AB9016", "Invalid Time Period") from None
        return {
            "qty": qty,
            "price": price,
            "triggerprice": trigger,
            "disclosedqty": disclosed,
            "timeperiod": period,
        }

    def gtt_rule(self, account: Account, rule_id: Any) -> GttRule:
        try:
            rule = account.gtt.get(int(str(rule_id)))
        except ValueError:
            rule = None
        if rule is None:
            raise FakeAPIError("AB9013", "Invalid Rule ID")
        return rule

    def gtt_modify(self, account: Account, body: Mapping[str, Any]) -> GttRule:
        rule = self.gtt_rule(account, body.get("id"))
        if rule.status not in ("NEW", "ACTIVE"):
            raise FakeAPIError("AB9013", "Invalid Rule ID")
        merged = {
            "qty": rule.qty,
            "price": rule.price,
            "triggerprice": rule.triggerprice,
            "disclosedqty": rule.disclosedqty,
            "timeperiod": rule.timeperiod,
            **{k: v for k, v in body.items() if v is not None},
        }
        for key, value in self._gtt_fields(merged).items():
            setattr(rule, key, value)
        rule.trigger_above = rule.triggerprice > self.quote(rule.inst).ltp
        rule.updated = self.clock()
        return rule

    def gtt_cancel(self, account: Account, body: Mapping[str, Any]) -> GttRule:
        rule = self.gtt_rule(account, body.get("id"))
        if rule.status not in ("NEW", "ACTIVE"):
            raise FakeAPIError("AB9013", "Invalid Rule ID")
        rule.status = "CANCELLED"
        rule.updated = self.clock()
        return rule

    def _fire_gtt(self, inst: Instrument, price: Decimal) -> list[OrderEvent]:
        """A GTT whose trigger the LTP reaches becomes a LIMIT order (status SENTTOEXCHANGE)."""
        events: list[OrderEvent] = []
        for account in self.accounts.values():
            for rule in account.gtt.values():
                if rule.inst.key != inst.key or rule.status not in ("NEW", "ACTIVE"):
                    continue
                reached = (
                    price >= rule.triggerprice if rule.trigger_above else price <= rule.triggerprice
                )
                if not reached:
                    continue
                rule.status = "SENTTOEXCHANGE"
                rule.updated = self.clock()
                order, more = self.place(
                    account,
                    {
                        "variety": "NORMAL",
                        "tradingsymbol": inst.symbol,
                        "symboltoken": inst.token,
                        "exchange": inst.exchange,
                        "transactiontype": rule.transactiontype,
                        "ordertype": "LIMIT",
                        "producttype": rule.producttype,
                        "duration": "DAY",
                        "price": str(rule.price),
                        "quantity": str(rule.qty),
                    },
                )
                rule.orderid = order.orderid
                events.extend(more)
        return events
