import asyncio

# Get balances from multiple users simultaneously
async def get_all_user_balances_parallel():
    user_broker_pairs = [
        ("user1", "angel_config1"),
        ("user1", "angel_config2"), 
        ("user2", "angel_config3")
    ]
    
    tasks = []
    for user_id, config_id in user_broker_pairs:
        task = get_balance_for_user(user_id, config_id)
        tasks.append(task)
    
    results = await asyncio.gather(*tasks)
    return results

# Execute parallel operations
balances = await get_all_user_balances_parallel()
for i, result in enumerate(balances):
    if result.success:
        balance = result.data
        print(f"User {result.user_id}: ₹{balance['total_balance']:,.2f}")
