"""The midnight IST expiry: fake and adapter share a clock moved past 00:00 IST; the
adapter's scheduled re-login (an injected, hand-released sleep) logs in with a fresh TOTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.brokers.angel_one.conftest import make_fake
from tests.brokers.angel_one.support import Clock
from tests.brokers.angel_one.test_adapter_support import ManualSleep, make_broker
from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.fake import running_fake
from trading_backend.brokers.angel_one.protocol import IST


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


async def test_session_expires_at_midnight_ist_and_relogs_in_with_a_fresh_totp() -> None:
    clock = Clock()  # 10:30 IST
    fake = make_fake(clock=clock)
    sleep = ManualSleep()
    async with running_fake(fake) as server:
        broker = make_broker(server, clock=clock, sleep=sleep, order_updates="off", relogin_delay=5)
        try:
            await broker.authenticate()
            first_jwt = broker.session.jwt
            expires = broker.session.expires_at
            assert expires is not None
            assert expires.astimezone(IST).time().isoformat() == "00:00:00"
            assert expires - clock() == timedelta(hours=13, minutes=30)
            # The scheduler asks to sleep until 5 s after midnight.
            delay, wake = await sleep.next()
            assert delay == pytest.approx((expires - clock()).total_seconds() + 5)
            # Midnight passes (for both clocks): the old session is dead everywhere.
            clock.advance(seconds=delay)
            assert not await broker.is_session_valid()
            wake.set_result(None)
            # The scheduler logs in again, then sleeps until the next midnight.
            next_delay, _ = await sleep.next()
            assert next_delay == pytest.approx(24 * 3600)  # logged in at 00:00:05, +5 s
            logins = fake.calls("login")
            assert [r.outcome for r in logins] == ["ok", "ok"]
            assert logins[0].body["totp"] != logins[1].body["totp"]  # generated at the new time
            assert await broker.is_session_valid()
            assert broker.session.jwt != first_jwt
            assert (await broker.get_balance())["available_cash"] > 0
            assert broker.session.expires_at == expires + timedelta(days=1)
        finally:
            await broker.close()


async def test_a_call_after_midnight_logs_in_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without waiting for the scheduler (e.g. it is still asleep), the next call notices
    the expiry and logs in before sending."""
    clock = Clock()
    fake = make_fake(clock=clock)
    sleep = ManualSleep()
    async with running_fake(fake) as server:
        broker = make_broker(server, clock=clock, sleep=sleep, order_updates="off")
        try:
            await broker.authenticate()
            clock.advance(hours=14)  # 00:30 IST next day
            assert not await broker.is_session_valid()
            assert (await broker.get_balance())["available_cash"] > 0
            assert [r.outcome for r in fake.calls("login")] == ["ok", "ok"]
            assert [r.outcome for r in fake.calls("rms")] == ["ok"]  # never sent a dead token
        finally:
            await broker.close()
