"""Exchange session closes, for expiring DAY orders.

Indian exchanges close at fixed IST times on weekdays; crypto has no close, so its "day"
ends at midnight UTC. Exchange holidays arrive with the risk engine's calendar; until then
a holiday is treated as a trading day (a DAY order placed on one expires at its close).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

from trading_backend.domain.enums import Exchange

IST = timezone(timedelta(hours=5, minutes=30), "IST")

SESSION_CLOSE: dict[Exchange, tuple[time, timezone, bool]] = {
    # exchange: (local close time, its time zone, weekdays only)
    Exchange.NSE: (time(15, 30), IST, True),
    Exchange.BSE: (time(15, 30), IST, True),
    Exchange.NFO: (time(15, 30), IST, True),
    Exchange.BFO: (time(15, 30), IST, True),
    Exchange.CDS: (time(17, 0), IST, True),
    Exchange.MCX: (time(23, 30), IST, True),
    Exchange.NCDEX: (time(17, 0), IST, True),
    Exchange.CRYPTO: (time(0, 0), UTC, False),
}


def last_session_close(exchange: Exchange, now: datetime) -> datetime:
    """The most recent session close of ``exchange`` at or before ``now`` (UTC result)."""
    close_time, zone, weekdays_only = SESSION_CLOSE[exchange]
    local = now.astimezone(zone)
    day = local.date()
    for _ in range(8):
        candidate = datetime.combine(day, close_time, zone)
        if candidate <= local and (not weekdays_only or candidate.weekday() < 5):
            return candidate.astimezone(UTC)
        day -= timedelta(days=1)
    raise AssertionError("unreachable: a week always has a session close")


def next_session_close(now: datetime) -> datetime:
    """The next close of any exchange after ``now`` (UTC): when to expire DAY orders next."""
    upcoming = []
    for exchange in SESSION_CLOSE:
        close_time, zone, weekdays_only = SESSION_CLOSE[exchange]
        local = now.astimezone(zone)
        day = local.date()
        for _ in range(8):
            candidate = datetime.combine(day, close_time, zone)
            if candidate > local and (not weekdays_only or candidate.weekday() < 5):
                upcoming.append(candidate.astimezone(UTC))
                break
            day += timedelta(days=1)
    return min(upcoming)
