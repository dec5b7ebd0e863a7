"""Order requests and the order entity with its state machine.

``BrokerOrder`` is what a user asks for (the seed's shape). ``Order`` is our record of
it: it only moves along the transitions in ``ALLOWED_TRANSITIONS`` and its filled
quantity can never exceed its quantity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from trading_backend.domain.enums import (
    Exchange,
    OrderSide,
    OrderStatus,
    OrderType,
    ProductType,
    Validity,
)
from trading_backend.domain.errors import IllegalTransition, InvalidOrder
from trading_backend.domain.money import ZERO, to_decimal

MAX_TAG_LENGTH = 20  # Angel One's ordertag limit, the tightest of our brokers
MAX_CLIENT_ORDER_ID_LENGTH = 64


def _coerce_enum(enum_type: type, value: object, field_name: str) -> object:
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).upper())
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)  # type: ignore[attr-defined]
        raise InvalidOrder(
            f"{field_name} must be one of {allowed}, got {value!r}", field=field_name
        ) from None


def _optional_price(value: object, field_name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        price = to_decimal(value, field_name)
    except ValueError as exc:
        raise InvalidOrder(str(exc), field=field_name) from None
    if price <= 0:
        raise InvalidOrder(f"{field_name} must be positive, got {price}", field=field_name)
    return price


@dataclass(slots=True)
class BrokerOrder:
    """An order as a user or strategy asks for it; validated on construction."""

    symbol: str
    exchange: Exchange | str
    side: OrderSide | str
    order_type: OrderType | str
    product_type: ProductType | str
    quantity: int
    price: Decimal | float | str | None = None
    trigger_price: Decimal | float | str | None = None
    validity: Validity | str = Validity.DAY
    tag: str | None = None
    client_order_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol.strip():
            raise InvalidOrder("symbol is required", field="symbol")
        self.symbol = self.symbol.strip().upper()
        self.exchange = _coerce_enum(Exchange, self.exchange, "exchange")  # type: ignore[assignment]
        self.side = _coerce_enum(OrderSide, self.side, "side")  # type: ignore[assignment]
        self.order_type = _coerce_enum(OrderType, self.order_type, "order_type")  # type: ignore[assignment]
        self.product_type = _coerce_enum(ProductType, self.product_type, "product_type")  # type: ignore[assignment]
        self.validity = _coerce_enum(Validity, self.validity, "validity")  # type: ignore[assignment]
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int):
            if isinstance(self.quantity, float | Decimal | str):
                try:
                    as_decimal = to_decimal(self.quantity, "quantity")
                except ValueError:
                    raise InvalidOrder(
                        "quantity must be a whole number", field="quantity"
                    ) from None
                if as_decimal != as_decimal.to_integral_value():
                    raise InvalidOrder("quantity must be a whole number", field="quantity")
                self.quantity = int(as_decimal)
            else:
                raise InvalidOrder("quantity must be a whole number", field="quantity")
        if self.quantity <= 0:
            raise InvalidOrder(f"quantity must be positive, got {self.quantity}", field="quantity")
        self.price = _optional_price(self.price, "price")
        self.trigger_price = _optional_price(self.trigger_price, "trigger_price")
        self._check_prices()
        if self.tag is not None and len(self.tag) > MAX_TAG_LENGTH:
            raise InvalidOrder(f"tag is limited to {MAX_TAG_LENGTH} characters", field="tag")
        if self.client_order_id is not None:
            if not self.client_order_id or len(self.client_order_id) > MAX_CLIENT_ORDER_ID_LENGTH:
                raise InvalidOrder(
                    f"client_order_id must be 1 to {MAX_CLIENT_ORDER_ID_LENGTH} characters",
                    field="client_order_id",
                )

    def _check_prices(self) -> None:
        kind = self.order_type
        if kind in (OrderType.LIMIT, OrderType.SL) and self.price is None:
            raise InvalidOrder(f"{kind} orders need a price", field="price")
        if kind in (OrderType.MARKET, OrderType.SL_M) and self.price is not None:
            raise InvalidOrder(f"{kind} orders take no price", field="price")
        if kind in (OrderType.SL, OrderType.SL_M) and self.trigger_price is None:
            raise InvalidOrder(f"{kind} orders need a trigger_price", field="trigger_price")
        if kind in (OrderType.MARKET, OrderType.LIMIT) and self.trigger_price is not None:
            raise InvalidOrder(f"{kind} orders take no trigger_price", field="trigger_price")
        if kind is OrderType.SL:
            assert isinstance(self.price, Decimal) and isinstance(self.trigger_price, Decimal)
            # Exchange rule: a buy stop-limit triggers at or below its limit, a sell at or above.
            if self.side is OrderSide.BUY and self.trigger_price > self.price:
                raise InvalidOrder(
                    "for a BUY SL order the trigger_price must not exceed the price",
                    field="trigger_price",
                )
            if self.side is OrderSide.SELL and self.trigger_price < self.price:
                raise InvalidOrder(
                    "for a SELL SL order the trigger_price must not be below the price",
                    field="trigger_price",
                )
        if self.validity is Validity.IOC and kind in (OrderType.SL, OrderType.SL_M):
            raise InvalidOrder("stop-loss orders cannot be IOC", field="validity")


ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.SUBMITTED, OrderStatus.CANCELLED, OrderStatus.REJECTED}
    ),
    OrderStatus.SUBMITTED: frozenset(
        {
            OrderStatus.OPEN,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
            OrderStatus.EXPIRED,
            OrderStatus.UNKNOWN,
        }
    ),
    OrderStatus.OPEN: frozenset(
        {
            OrderStatus.OPEN,  # modified
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.UNKNOWN: frozenset(
        {
            OrderStatus.OPEN,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


def can_transition(current: OrderStatus, new: OrderStatus) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Order:
    """Our record of one order for one user on one broker account."""

    order_id: str
    user_id: str
    config_id: str
    symbol: str
    exchange: Exchange
    side: OrderSide
    order_type: OrderType
    product_type: ProductType
    quantity: int
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: Validity = Validity.DAY
    tag: str | None = None
    client_order_id: str | None = None
    status: OrderStatus = OrderStatus.PENDING
    filled_quantity: int = 0
    average_price: Decimal = ZERO
    broker_order_id: str | None = None
    error_code: str | None = None
    message: str | None = None
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @classmethod
    def from_request(
        cls, order_id: str, user_id: str, config_id: str, request: BrokerOrder
    ) -> Order:
        return cls(
            order_id=order_id,
            user_id=user_id,
            config_id=config_id,
            symbol=request.symbol,
            exchange=Exchange(request.exchange),
            side=OrderSide(request.side),
            order_type=OrderType(request.order_type),
            product_type=ProductType(request.product_type),
            quantity=request.quantity,
            price=request.price,  # type: ignore[arg-type]
            trigger_price=request.trigger_price,  # type: ignore[arg-type]
            validity=Validity(request.validity),
            tag=request.tag,
            client_order_id=request.client_order_id,
        )

    def to_request(self) -> BrokerOrder:
        return BrokerOrder(
            symbol=self.symbol,
            exchange=self.exchange,
            side=self.side,
            order_type=self.order_type,
            product_type=self.product_type,
            quantity=self.quantity,
            price=self.price,
            trigger_price=self.trigger_price,
            validity=self.validity,
            tag=self.tag,
            client_order_id=self.client_order_id,
        )

    @property
    def remaining_quantity(self) -> int:
        return self.quantity - self.filled_quantity

    def transition(
        self, new: OrderStatus, *, error_code: str | None = None, message: str | None = None
    ) -> None:
        if not can_transition(self.status, new):
            raise IllegalTransition(
                f"order {self.order_id} cannot move from {self.status} to {new}",
                order_id=self.order_id,
                current=self.status.value,
                requested=new.value,
            )
        if new is OrderStatus.FILLED and self.filled_quantity != self.quantity:
            raise IllegalTransition(
                f"order {self.order_id} cannot be FILLED with {self.filled_quantity}"
                f" of {self.quantity} filled"
            )
        self.status = new
        if error_code is not None:
            self.error_code = error_code
        if message is not None:
            self.message = message
        self.updated_at = _now()

    def apply_fill(self, quantity: int, price: Decimal) -> None:
        """Record an execution: updates the average price and moves to (PARTIALLY_)FILLED."""
        if quantity <= 0:
            raise IllegalTransition(f"fill quantity must be positive, got {quantity}")
        if quantity > self.remaining_quantity:
            raise IllegalTransition(
                f"fill of {quantity} exceeds the {self.remaining_quantity} remaining"
                f" on order {self.order_id}"
            )
        target = (
            OrderStatus.FILLED
            if quantity == self.remaining_quantity
            else OrderStatus.PARTIALLY_FILLED
        )
        if not can_transition(self.status, target):
            raise IllegalTransition(f"order {self.order_id} in {self.status} cannot take a fill")
        notional = self.average_price * self.filled_quantity + price * quantity
        self.filled_quantity += quantity
        self.average_price = notional / self.filled_quantity
        self.status = target
        self.updated_at = _now()

    def modify(
        self,
        *,
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: OrderType | None = None,
    ) -> None:
        """Change a working order. The resulting order must itself be valid."""
        if self.status not in (OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED):
            raise IllegalTransition(
                f"order {self.order_id} in {self.status} cannot be modified",
                order_id=self.order_id,
            )
        new_type = order_type or self.order_type
        new_quantity = quantity if quantity is not None else self.quantity
        if new_quantity <= self.filled_quantity:
            raise InvalidOrder(
                f"quantity must exceed the {self.filled_quantity} already filled", field="quantity"
            )
        new_price = price if price is not None else self.price
        new_trigger = trigger_price if trigger_price is not None else self.trigger_price
        if new_type in (OrderType.MARKET, OrderType.SL_M):
            new_price = None
        if new_type in (OrderType.MARKET, OrderType.LIMIT):
            new_trigger = None
        # Validate the whole resulting order with the same rules as a new one.
        BrokerOrder(
            symbol=self.symbol,
            exchange=self.exchange,
            side=self.side,
            order_type=new_type,
            product_type=self.product_type,
            quantity=new_quantity,
            price=new_price,
            trigger_price=new_trigger,
            validity=self.validity,
        )
        self.order_type = new_type
        self.quantity = new_quantity
        self.price = new_price
        self.trigger_price = new_trigger
        self.updated_at = _now()
