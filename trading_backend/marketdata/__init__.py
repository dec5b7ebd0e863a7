"""Market data: instruments, option pricing, bars, candles, shared subscriptions."""
