from trading_backend.core.multi_user_broker_manager import add_user_broker

# User 1 - Primary Angel One Account
result1 = await add_user_broker("user1", "angel_config1")

# User 1 - Secondary Angel One Account  
result2 = await add_user_broker("user1", "angel_config2")

# User 2 - Angel One Account
result3 = await add_user_broker("user2", "angel_config3")

# Check results
if result1.success:
    print(f"✅ Session created: {result1.session_id}")
    print(f"Broker: {result1.broker_name}")
    print(f"Execution time: {result1.execution_time:.2f}s")
else:
    print(f"❌ Failed: {result1.message}")
    print(f"Error code: {result1.error_code}")
