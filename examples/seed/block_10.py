async def monitor_system_health():
    """Comprehensive system health monitoring"""
    
    try:
        status = await multi_user_broker_manager.get_system_status()
        
        # Overall health check
        total_sessions = status['total_sessions']
        healthy_sessions = status['healthy_sessions']
        error_sessions = status['error_sessions']
        
        health_percentage = (healthy_sessions / total_sessions * 100) if total_sessions > 0 else 100
        
        print(f"System Health: {health_percentage:.1f}%")
        
        if health_percentage < 80:
            print("⚠️ System health degraded!")
            
            # Investigate unhealthy sessions
            for user_id in status.get('users', []):
                sessions = await multi_user_broker_manager.get_user_brokers(user_id)
                for session in sessions:
                    if session.health_status != 'healthy':
                        print(f"🔧 Fixing unhealthy session: {session.session_id}")
                        
                        # Try to recreate session
                        await remove_user_broker(user_id, session.config_id)
                        result = await add_user_broker(user_id, session.config_id)
                        
                        if result.success:
                            print(f"✅ Session {session.session_id} fixed")
                        else:
                            print(f"❌ Failed to fix session: {result.message}")
        
        # Resource monitoring
        print(f"📊 Resource Usage:")
        print(f"   Active Background Tasks: {status['background_tasks']}")
        print(f"   Total Memory Sessions: {total_sessions}")
        
        # Broker-specific health
        for broker_name, broker_stats in status['by_broker'].items():
            broker_health = (broker_stats['healthy'] / broker_stats['total'] * 100) if broker_stats['total'] > 0 else 100
            print(f"   {broker_name}: {broker_health:.1f}% healthy ({broker_stats['healthy']}/{broker_stats['total']})")
            
    except Exception as e:
        print(f"❌ Health monitoring failed: {e}")
