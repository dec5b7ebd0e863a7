"""Order execution: the order service (accept), the queue, workers (submit) and the
recorder that turns broker updates into persisted order state."""
