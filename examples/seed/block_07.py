# Get comprehensive system status
status = await multi_user_broker_manager.get_system_status()

print("System Status:")
print(f"   👥 Total Users: {status['total_users']}")
print(f"   🔗 Total Sessions: {status['total_sessions']}")
print(f"   ✅ Healthy Sessions: {status['healthy_sessions']}")
print(f"   ❌ Error Sessions: {status['error_sessions']}")
print(f"   ⏰ Expired Sessions: {status['expired_sessions']}")
print(f"   🔧 Background Tasks: {status['background_tasks']}")

# Broker-wise breakdown
for broker_name, broker_stats in status['by_broker'].items():
    print(f"   📈 {broker_name}: {broker_stats['total']} total, {broker_stats['healthy']} healthy")

# Get user sessions
sessions = await multi_user_broker_manager.get_user_brokers("user1")
print(f"\nUser 1 has {len(sessions)} active sessions:")
for session in sessions:
    print(f"   📱 Session: {session.session_id[:8]}... ({session.broker_name.value})")
    print(f"      Status: {session.health_status}")
    print(f"      Errors: {session.error_count}")
    print(f"      Last Activity: {session.last_activity.strftime('%H:%M:%S')}")
