"""Fixtures for the Angel One tests: the fake SmartAPI served on this test's event loop
(``angel_fake``) or on a background thread for synchronous clients (``angel_fake_thread``).

Both serve one client (constants in ``support.py``); the rate limiter is on, as in real life.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.brokers.angel_one.support import API_KEY, CLIENT_CODE, PIN, TOTP_SECRET
from trading_backend.brokers.angel_one.fake import FakeSmartAPI, FakeThread, running_fake
from trading_backend.brokers.angel_one.fake.server import RunningFake


def make_fake(**kwargs: object) -> FakeSmartAPI:
    fake = FakeSmartAPI(**kwargs)  # type: ignore[arg-type]
    fake.add_client(CLIENT_CODE, PIN, TOTP_SECRET, API_KEY)
    return fake


@pytest.fixture
async def angel_fake() -> AsyncIterator[RunningFake]:
    """A running fake (``.fake``, ``.base_url``, ``.feed_url``, ``.order_ws_url``)."""
    async with running_fake(make_fake()) as server:
        yield server


@pytest.fixture
def angel_fake_thread() -> Iterator[FakeThread]:
    """The same server on its own thread and loop, for the synchronous official SDK."""
    server = FakeThread(make_fake()).start()
    try:
        yield server
    finally:
        server.stop()
