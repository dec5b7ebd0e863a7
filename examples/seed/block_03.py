from trading_backend.core.multi_user_broker_manager import place_order_for_user
from trading_backend.brokers.base import BrokerOrder
from trading_backend.models.base import OrderSide, OrderType, ProductType

# Create order
order = BrokerOrder(
    symbol="TCS",
    exchange="NSE",
    side=OrderSide.BUY,
    order_type=OrderType.MARKET,
    product_type=ProductType.DELIVERY,
    quantity=1
)

# Place order for specific user and broker
result = await place_order_for_user(
    user_id="user1",
    broker_config_id="angel_config1", 
    order=order
)

if result.success:
    print(f"✅ Order placed: {result.data['broker_order_id']}")
else:
    print(f"❌ Order failed: {result.message}")

# Advanced order with limits
limit_order = BrokerOrder(
    symbol="RELIANCE",
    exchange="NSE",
    side=OrderSide.BUY,
    order_type=OrderType.LIMIT,
    product_type=ProductType.INTRADAY,
    quantity=5,
    price=2500.0
)

result = await place_order_for_user("user1", "angel_config1", limit_order)
