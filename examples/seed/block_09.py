from trading_backend.core.multi_user_broker_manager import place_order_for_user, BrokerOperationResult

async def handle_trading_operation():
    """Comprehensive error handling example"""
    
    result = await place_order_for_user(user_id, config_id, order)
    
    if not result.success:
        print(f"❌ Operation failed: {result.message}")
        print(f"Error Code: {result.error_code}")
        print(f"⏱️ Execution Time: {result.execution_time:.2f}s")
        
        # Handle specific error types
        if result.error_code == "INSUFFICIENT_FUNDS":
            print("💰 Solution: Add funds to your account")
            # Get current balance
            balance_result = await get_balance_for_user(user_id, config_id)
            if balance_result.success:
                balance = balance_result.data
                print(f"   Available: ₹{balance['available_cash']:,.2f}")
                print(f"   Required: ₹{order.quantity * order.price:,.2f}")
                
        elif result.error_code == "AUTH_ERROR":
            print("Solution: Check broker credentials and TOTP")
            # Try to re-add the broker
            retry_result = await add_user_broker(user_id, config_id)
            if retry_result.success:
                print("✅ Broker re-authenticated successfully")
            else:
                print("❌ Re-authentication failed, check credentials")
                
        elif result.error_code == "INVALID_ORDER":
            print("📋 Solution: Check order parameters")
            print(f"   Symbol: {order.symbol}")
            print(f"   Quantity: {order.quantity}")
            print(f"   Price: {order.price}")
            print("   Ensure symbol exists and parameters are valid")
            
        elif result.error_code == "SESSION_NOT_FOUND":
            print("🔄 Solution: Session expired, recreating...")
            # Remove old session and create new one
            await remove_user_broker(user_id, config_id)
            new_result = await add_user_broker(user_id, config_id)
            if new_result.success:
                print("✅ New session created, retry the operation")
            
        elif result.error_code == "CONFIG_NOT_FOUND":
            print("⚙️ Solution: Broker configuration missing")
            print("   Run: python setup_broker_config.py")
            
        elif result.error_code == "SYSTEM_ERROR":
            print("Solution: System error, check logs")
            print("   Check system status and retry")
            
    else:
        print(f"✅ Operation successful!")
        print(f"📊 Data: {result.data}")
        print(f"⏱️ Execution Time: {result.execution_time:.2f}s")

# Error recovery example
async def robust_order_placement(user_id: str, config_id: str, order: BrokerOrder, max_retries: int = 3):
    """Robust order placement with automatic retry"""
    
    for attempt in range(max_retries):
        try:
            result = await place_order_for_user(user_id, config_id, order)
            
            if result.success:
                return result
                
            # Handle retryable errors
            if result.error_code in ["SESSION_NOT_FOUND", "AUTH_ERROR"]:
                print(f"⚠️ Attempt {attempt + 1}/{max_retries}: {result.message}")
                if attempt < max_retries - 1:
                    # Wait and retry
                    await asyncio.sleep(2 ** attempt)  # Exponential backoff
                    continue
            else:
                # Non-retryable error
                return result
                
        except Exception as e:
            print(f"❌ Attempt {attempt + 1}/{max_retries}: System error: {e}")
            if attempt < max_retries - 1:
                await asyncio.sleep(2 ** attempt)
                continue
            else:
                raise
    
    # All retries exhausted
    return BrokerOperationResult(
        success=False,
        message="Max retries exhausted",
        user_id=user_id,
        broker_name="unknown",
        config_id=config_id,
        error_code="MAX_RETRIES_EXHAUSTED"
    )
