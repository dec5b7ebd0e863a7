async def comprehensive_system_test():
    """Complete system test with all features"""
    
    print("🧪 Starting Comprehensive System Test")
    print("=" * 50)
    
    # Test 1: Initialize system
    print("\n1️⃣ Testing System Initialization")
    success = await multi_user_broker_manager.initialize()
    assert success, "System initialization failed"
    print("✅ System initialized")
    
    # Test 2: Add multiple users
    print("\n2️⃣ Testing Multi-User Setup")
    test_users = [
        ("test_user_1", "test_config_1"),
        ("test_user_2", "test_config_2")
    ]
    
    for user_id, config_id in test_users:
        result = await add_user_broker(user_id, config_id)
        if result.success:
            print(f"✅ Added {user_id}")
        else:
            print(f"⚠️ Failed to add {user_id}: {result.message}")
    
    # Test 3: Parallel operations
    print("\n3️⃣ Testing Parallel Operations")
    balance_tasks = [get_balance_for_user(user_id, config_id) for user_id, config_id in test_users]
    balance_results = await asyncio.gather(*balance_tasks, return_exceptions=True)
    
    for i, result in enumerate(balance_results):
        if isinstance(result, BrokerOperationResult) and result.success:
            print(f"✅ User {i+1} balance retrieved")
        else:
            print(f"⚠️ User {i+1} balance failed: {result}")
    
    # Test 4: System health
    print("\n4️⃣ Testing System Health")
    status = await multi_user_broker_manager.get_system_status()
    print(f"📊 Status: {status['healthy_sessions']}/{status['total_sessions']} healthy")
    
    # Test 5: Cleanup
    print("\n5️⃣ Testing Cleanup")
    for user_id, config_id in test_users:
        result = await remove_user_broker(user_id, config_id)
        if result.success:
            print(f"✅ Removed {user_id}")
    
    await multi_user_broker_manager.shutdown()
    print("✅ System shutdown complete")
    
    print("\nAll tests completed!")

# Run the test
asyncio.run(comprehensive_system_test())
