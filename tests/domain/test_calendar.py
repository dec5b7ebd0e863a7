from __future__ import annotations

from datetime import UTC, datetime

from trading_backend.domain import Exchange
from trading_backend.domain.calendar import IST, last_session_close, next_session_close


def ist(*args: int) -> datetime:
    return datetime(*args, tzinfo=IST)  # type: ignore[misc]


def test_last_close_skips_weekends_for_indian_exchanges() -> None:
    monday_morning = ist(2025, 12, 1, 10, 0)
    assert last_session_close(Exchange.NSE, monday_morning) == ist(2025, 11, 28, 15, 30)
    tuesday_evening = ist(2025, 12, 2, 16, 0)
    assert last_session_close(Exchange.NFO, tuesday_evening) == ist(2025, 12, 2, 15, 30)
    assert last_session_close(Exchange.MCX, tuesday_evening) == ist(2025, 12, 1, 23, 30)


def test_crypto_days_end_at_utc_midnight_every_day() -> None:
    sunday = datetime(2025, 11, 30, 13, 0, tzinfo=UTC)
    assert last_session_close(Exchange.CRYPTO, sunday) == datetime(2025, 11, 30, tzinfo=UTC)


def test_next_close_is_the_earliest_upcoming_one() -> None:
    assert next_session_close(ist(2025, 12, 1, 10, 0)) == ist(2025, 12, 1, 15, 30)
    assert next_session_close(ist(2025, 12, 1, 15, 45)) == ist(2025, 12, 1, 17, 0)
    friday_night = ist(2025, 11, 28, 23, 45)
    assert next_session_close(friday_night) == datetime(2025, 11, 29, tzinfo=UTC)
