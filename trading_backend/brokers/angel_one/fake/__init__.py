"""A protocol-faithful fake Angel One SmartAPI server (tests and local development).

``FakeSmartAPI`` holds the state (clients, sessions, orders, positions, funds, GTT, market);
``running_fake`` serves it with uvicorn on the current event loop, ``FakeThread`` on a
background thread (for the synchronous official SDK). Both the REST routes and the two
WebSockets speak the wire protocol of BROKER_PROTOCOLS.md Part 1, so our adapter and
``smartapi-python`` run against it unchanged, pointed at ``server.base_url``.

    fake = FakeSmartAPI(clock=None, instruments=None, seed=0)
    fake.add_client("A123456", "1234", "JBSWY3DPEHPK3PXP", "test-api-key")
    async with running_fake(fake) as server:
        server.base_url, server.feed_url, server.order_ws_url
        fake.set_price("NSE", "3045", Decimal("815"))
        fake.faults.timeout_after_effect()
"""

from trading_backend.brokers.angel_one.fake.core import FakeSmartAPI, RecordedRequest
from trading_backend.brokers.angel_one.fake.errors import FakeAPIError
from trading_backend.brokers.angel_one.fake.faults import Faults, RateLimiter
from trading_backend.brokers.angel_one.fake.instruments import Instrument
from trading_backend.brokers.angel_one.fake.server import FakeThread, RunningFake, running_fake

__all__ = [
    "FakeAPIError",
    "FakeSmartAPI",
    "FakeThread",
    "Faults",
    "Instrument",
    "RateLimiter",
    "RecordedRequest",
    "RunningFake",
    "running_fake",
]
