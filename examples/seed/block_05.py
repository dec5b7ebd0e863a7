# Use context manager for safe operations
async with multi_user_broker_manager.broker_session("user1", "angel_config1") as broker:
    # Direct broker access
    positions = await broker.get_positions()
    balance = await broker.get_balance()
    market_data = await broker.get_market_data("TCS", "NSE")
    
    # Broker automatically handles:
    # - Session validation
    # - Authentication refresh
    # - Error recovery
    # - Activity tracking
    
    print(f"Direct broker access: {len(positions)} positions")
