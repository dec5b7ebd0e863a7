# Remove a specific broker session
result = await multi_user_broker_manager.remove_user_broker("user1", "angel_config2")
if result.success:
    print(f"✅ Removed session for {result.broker_name}")

# Get market data for user
result = await multi_user_broker_manager.get_market_data_for_user(
    "user1", "angel_config1", "TCS", "NSE"
)
if result.success:
    market_data = result.data
    print(f"📊 TCS: ₹{market_data['ltp']} (Change: {market_data['change']:.2f})")
