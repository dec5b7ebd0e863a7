from trading_backend.core.multi_user_broker_manager import (
    get_all_user_positions, get_all_user_balances, get_positions_for_user,
    get_balance_for_user
)

# Get positions from specific broker
positions_result = await get_positions_for_user("user1", "angel_config1")
if positions_result.success:
    positions = positions_result.data['positions']
    for pos in positions:
        pnl_indicator = "🟢" if pos['pnl'] >= 0 else "🔴"
        print(f"{pnl_indicator} {pos['symbol']}: {pos['quantity']} @ ₹{pos['average_price']:.2f}")

# Get balance from specific broker  
balance_result = await get_balance_for_user("user1", "angel_config1")
if balance_result.success:
    balance = balance_result.data
    print(f"💰 Available: ₹{balance['available_cash']:,.2f}")
    print(f"💳 Buying Power: ₹{balance['buying_power']:,.2f}")

# Get all positions for a user across all brokers
all_positions = await get_all_user_positions("user1")
for config_id, result in all_positions.items():
    if result.success:
        positions = result.data['positions']
        print(f"📊 {result.broker_name}: {len(positions)} positions")

# Get all balances for a user across all brokers
all_balances = await get_all_user_balances("user1")
total_balance = 0
for config_id, result in all_balances.items():
    if result.success:
        balance = result.data
        total_balance += balance['total_balance']
        print(f"💰 {result.broker_name}: ₹{balance['total_balance']:,.2f}")

print(f"💰 Total across all brokers: ₹{total_balance:,.2f}")
