"""Angel One SmartAPI: our own async client and adapter, the instrument master, the
SmartStream feed, and a protocol-faithful fake server (``angel_one.fake``) for tests."""
