from trading_backend.core.multi_user_broker_manager import multi_user_broker_manager

# Initialize the manager
success = await multi_user_broker_manager.initialize()
if success:
    print("✅ Multi-User Broker Manager initialized")
else:
    print("❌ Failed to initialize")
