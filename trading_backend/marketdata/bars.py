"""Trading sessions, bar windows and tick-to-bar aggregation.

Sessions (all times local, weekdays only for the Indian exchanges):

* NSE, BSE, NFO, BFO: 09:15-15:30 IST.
* CDS: 09:00-17:00 IST; MCX: 09:00-23:30 IST (the closes of ``domain.calendar``, which
  expires DAY orders at them).
* CRYPTO: around the clock; its "session" is the UTC day.

Exchange holidays are not modelled yet: a holiday is treated as a trading day (as
``domain.calendar`` does), so a bar query over one expects bars that never come.

Windows: intraday bars of a session exchange are aligned to the session open, so on NSE
the 30m bars are 09:15-09:45, 09:45-10:15, ... and the 1h bars 09:15-10:15, ...,
14:15-15:15 and the last one cut at the close, 15:15-15:30. The ``1d`` bar is the whole
session. Crypto bars align to UTC midnight (every timeframe divides a day) and its ``1d``
bar is the UTC day. Every boundary is returned in UTC.

Aggregation (``BarAggregator``): a tick updates the forming bar of each timeframe; a tick
in a later window completes the previous bar (returned by ``on_tick``), and ``flush(now)``
completes bars whose window has ended without a later tick. Windows without ticks get no
bar (nothing is fabricated). Ticks outside a session are ignored; a tick older than the
forming (or the last completed) bar of a timeframe is late and ignored for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

from trading_backend.domain.bars import Bar, Timeframe
from trading_backend.domain.calendar import IST
from trading_backend.domain.enums import Exchange

__all__ = [
    "SESSION_HOURS",
    "BarAggregator",
    "Session",
    "bar_window",
    "merge_bars",
    "resample",
    "session_for",
    "sessions",
    "trading_seconds",
    "windows",
]

# exchange: (local open, local close, zone); ``None`` for exchanges that never close.
SESSION_HOURS: dict[Exchange, tuple[time, time, timezone] | None] = {
    Exchange.NSE: (time(9, 15), time(15, 30), IST),
    Exchange.BSE: (time(9, 15), time(15, 30), IST),
    Exchange.NFO: (time(9, 15), time(15, 30), IST),
    Exchange.BFO: (time(9, 15), time(15, 30), IST),
    Exchange.CDS: (time(9, 0), time(17, 0), IST),
    Exchange.MCX: (time(9, 0), time(23, 30), IST),
    Exchange.NCDEX: (time(9, 0), time(17, 0), IST),
    Exchange.CRYPTO: None,
}

_DAY = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_PAST = datetime(1, 1, 2, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 30, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Session:
    """One trading session ``[open, close)`` in UTC."""

    open: datetime
    close: datetime

    @property
    def duration(self) -> timedelta:
        return self.close - self.open


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _session_on(exchange: Exchange, day: date) -> Session | None:
    """The session of ``exchange`` on local date ``day`` (None on a weekend)."""
    hours = SESSION_HOURS[exchange]
    if hours is None:
        start = datetime.combine(day, time(0), UTC)
        return Session(start, start + _DAY)
    if day.weekday() >= 5:
        return None
    opens, closes, zone = hours
    return Session(
        datetime.combine(day, opens, zone).astimezone(UTC),
        datetime.combine(day, closes, zone).astimezone(UTC),
    )


def _local_day(exchange: Exchange, when: datetime) -> date:
    hours = SESSION_HOURS[exchange]
    zone = UTC if hours is None else hours[2]
    return when.astimezone(zone).date()


def session_for(exchange: Exchange | str, when: datetime) -> Session | None:
    """The session of ``exchange`` that contains ``when``, or None outside every session
    (nights and weekends of the Indian exchanges; never for crypto). Naive times are UTC."""
    exchange = Exchange(exchange)
    when = _utc(when)
    session = _session_on(exchange, _local_day(exchange, when))
    if session is not None and session.open <= when < session.close:
        return session
    return None


def sessions(exchange: Exchange | str, start: datetime, end: datetime) -> Iterator[Session]:
    """The sessions of ``exchange`` overlapping ``[start, end)``, oldest first."""
    exchange = Exchange(exchange)
    start, end = _utc(start), _utc(end)
    day = _local_day(exchange, start) - _DAY
    last = _local_day(exchange, end)
    while day <= last:
        session = _session_on(exchange, day)
        if session is not None and session.close > start and session.open < end:
            yield session
        day += _DAY


def trading_seconds(exchange: Exchange | str, start: datetime, end: datetime) -> float:
    """Seconds of trading (inside sessions) between ``start`` and ``end``."""
    start, end = _utc(start), _utc(end)
    total = 0.0
    for session in sessions(exchange, start, end):
        total += (min(session.close, end) - max(session.open, start)).total_seconds()
    return total


def _window_in(
    session: Session, crypto: bool, timeframe: Timeframe, when: datetime
) -> tuple[datetime, datetime]:
    if timeframe is Timeframe.D1:
        return session.open, session.close
    step = int(timeframe.duration.total_seconds())
    if crypto:
        offset = int((when - _EPOCH).total_seconds()) // step * step
        start = _EPOCH + timedelta(seconds=offset)
        return start, start + timeframe.duration
    offset = int((when - session.open).total_seconds()) // step * step
    start = session.open + timedelta(seconds=offset)
    return start, min(start + timeframe.duration, session.close)


def bar_window(
    exchange: Exchange | str, timeframe: Timeframe | str, when: datetime
) -> tuple[datetime, datetime] | None:
    """The ``(start, end)`` (UTC) of the ``timeframe`` bar containing ``when``, or None
    when ``when`` is outside the exchange's sessions."""
    exchange = Exchange(exchange)
    session = session_for(exchange, when)
    if session is None:
        return None
    return _window_in(session, SESSION_HOURS[exchange] is None, Timeframe(timeframe), _utc(when))


def windows(
    exchange: Exchange | str, timeframe: Timeframe | str, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """Every bar window of ``timeframe`` whose start lies in ``[start, end)``, oldest first."""
    exchange = Exchange(exchange)
    timeframe = Timeframe(timeframe)
    start, end = _utc(start), _utc(end)
    for session in sessions(exchange, start, end):
        if timeframe is Timeframe.D1:
            if start <= session.open < end:
                yield session.open, session.close
            continue
        step = timeframe.duration
        moment = session.open
        while moment < session.close and moment < end:
            stop = min(moment + step, session.close)
            if moment >= start:
                yield moment, stop
            moment = stop


def merge_bars(bars: list[Bar], timeframe: Timeframe, start: datetime, end: datetime) -> Bar:
    """One bar of ``timeframe`` spanning ``[start, end)`` from ``bars`` (oldest first)."""
    first = bars[0]
    return Bar(
        symbol=first.symbol,
        exchange=first.exchange,
        timeframe=timeframe,
        start=start,
        end=end,
        open=first.open,
        high=max(b.high for b in bars),
        low=min(b.low for b in bars),
        close=bars[-1].close,
        volume=sum(b.volume for b in bars),
        complete=all(b.complete for b in bars),
    )


def resample(bars: Iterable[Bar], timeframe: Timeframe | str) -> list[Bar]:
    """Re-aggregate bars into a coarser ``timeframe`` (e.g. 1m into 5m or 1d).

    Bars may belong to several instruments; the result is ordered by window start, then
    instrument key. A source bar must fit inside one target window (3m bars do not
    resample into 5m ones: ``ValueError``). Windows without source bars get no bar. A
    result bar is complete when all its source bars are.
    """
    timeframe = Timeframe(timeframe)
    groups: dict[tuple[str, datetime], tuple[datetime, list[Bar]]] = {}
    for bar in sorted(bars, key=lambda b: (b.key, b.start)):
        window = bar_window(bar.exchange, timeframe, bar.start)
        if window is None:
            raise ValueError(f"bar {bar.key} {bar.start.isoformat()} is outside the session")
        if bar.end > window[1]:
            raise ValueError(
                f"a {bar.timeframe.value} bar starting {bar.start.isoformat()} does not fit "
                f"in one {timeframe.value} window"
            )
        groups.setdefault((bar.key, window[0]), (window[1], []))[1].append(bar)
    result = [
        merge_bars(members, timeframe, start, end) for (_, start), (end, members) in groups.items()
    ]
    result.sort(key=lambda b: (b.start, b.key))
    return result


class _Slot:
    """The forming bar of one timeframe of one instrument."""

    __slots__ = ("close", "end", "high", "last_end", "low", "open", "start", "timeframe", "volume")

    def __init__(self, timeframe: Timeframe) -> None:
        self.timeframe = timeframe
        self.start = _FAR_FUTURE
        self.end = _FAR_FUTURE
        self.open: Decimal | None = None
        self.high = self.low = self.close = Decimal(0)
        self.volume = 0
        self.last_end = _FAR_PAST  # end of the last completed bar: older ticks are late


class _State:
    """Aggregation state of one instrument. ``lo <= t < hi`` is the fast path: every
    timeframe has a forming bar containing ``t``."""

    __slots__ = ("crypto", "exchange", "hi", "key", "lo", "min_end", "slots", "symbol")

    def __init__(self, symbol: str, exchange: Exchange, timeframes: list[Timeframe]) -> None:
        self.symbol = symbol
        self.exchange = exchange
        self.key = f"{exchange.value}:{symbol}"
        self.crypto = SESSION_HOURS[exchange] is None
        self.slots = [_Slot(tf) for tf in timeframes]
        self.lo = _FAR_FUTURE
        self.hi = _FAR_PAST
        self.min_end = _FAR_FUTURE  # earliest end of a forming bar (for flush)

    def bar(self, slot: _Slot, complete: bool) -> Bar:
        assert slot.open is not None
        return Bar(
            self.symbol,
            self.exchange,
            slot.timeframe,
            slot.start,
            slot.end,
            slot.open,
            slot.high,
            slot.low,
            slot.close,
            slot.volume,
            complete,
        )

    def complete(self, slot: _Slot) -> Bar:
        bar = self.bar(slot, True)
        slot.last_end = slot.end
        slot.open = None
        slot.start = slot.end = _FAR_FUTURE
        return bar

    def refresh(self) -> None:
        lo, hi, min_end, full = _FAR_PAST, _FAR_FUTURE, _FAR_FUTURE, True
        for slot in self.slots:
            if slot.open is None:
                full = False
                continue
            lo = max(lo, slot.start)
            hi = min(hi, slot.end)
            min_end = min(min_end, slot.end)
        self.min_end = min_end
        if full:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = _FAR_FUTURE, _FAR_PAST


class BarAggregator:
    """Aggregates ticks into bars of several timeframes for many instruments.

    ``on_tick`` returns the bars the tick completed; ``flush(now)`` the bars whose window
    ended by ``now``; ``current(key, timeframe)`` the forming bar (``complete=False``).
    Ticks are expected in time order per instrument (see the module docstring for late
    and out-of-session ticks). Not thread-safe; cheap enough to call on every tick.
    """

    def __init__(self, timeframes: Iterable[Timeframe | str]) -> None:
        chosen = {Timeframe(tf) for tf in timeframes}
        if not chosen:
            raise ValueError("at least one timeframe is needed")
        self.timeframes: list[Timeframe] = sorted(chosen, key=lambda tf: tf.duration)
        self._states: dict[tuple[str, str], _State] = {}
        self._by_key: dict[str, _State] = {}
        self._next_end = _FAR_FUTURE  # no forming bar ends before this

    def _state(self, symbol: str, exchange: Exchange | str) -> _State:
        state = _State(symbol, Exchange(exchange), self.timeframes)
        self._states[(symbol, exchange)] = state
        self._by_key[state.key] = state
        return state

    def forget(self, key: str) -> None:
        """Drop an instrument's forming bars (nobody watches it any more: when watched
        again its bars start afresh instead of spanning the unwatched gap)."""
        state = self._by_key.pop(key, None)
        if state is not None:
            self._states = {k: v for k, v in self._states.items() if v is not state}

    def on_tick(
        self,
        symbol: str,
        exchange: Exchange | str,
        price: Decimal,
        volume: int,
        timestamp: datetime,
    ) -> list[Bar]:
        state = self._states.get((symbol, exchange))
        if state is None:
            state = self._state(symbol, exchange)
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        if state.lo <= timestamp < state.hi:
            for slot in state.slots:
                if price > slot.high:
                    slot.high = price
                elif price < slot.low:
                    slot.low = price
                slot.close = price
                slot.volume += volume
            return []
        return self._slow_tick(state, price, volume, timestamp)

    def _slow_tick(
        self, state: _State, price: Decimal, volume: int, timestamp: datetime
    ) -> list[Bar]:
        completed: list[Bar] = []
        session: Session | None = None
        looked = False
        for slot in state.slots:
            if slot.open is not None:
                if timestamp >= slot.end:
                    completed.append(state.complete(slot))
                elif timestamp >= slot.start:
                    if price > slot.high:
                        slot.high = price
                    elif price < slot.low:
                        slot.low = price
                    slot.close = price
                    slot.volume += volume
                    continue
                else:
                    continue  # late for this timeframe
            if timestamp < slot.last_end:
                continue  # late: its window was already completed
            if not looked:
                session = session_for(state.exchange, timestamp)
                looked = True
            if session is None:
                continue  # outside the session: ignored
            start, end = _window_in(session, state.crypto, slot.timeframe, _utc(timestamp))
            slot.start, slot.end = start, end
            slot.open = slot.high = slot.low = slot.close = price
            slot.volume = volume
        state.refresh()
        if state.min_end < self._next_end:
            self._next_end = state.min_end
        return completed

    def flush(self, now: datetime) -> list[Bar]:
        """Complete and return every forming bar whose window ended at or before ``now``
        (ordered by end, then instrument, then timeframe)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if now < self._next_end:
            return []
        completed: list[Bar] = []
        next_end = _FAR_FUTURE
        for state in self._states.values():
            if state.min_end <= now:
                for slot in state.slots:
                    if slot.open is not None and slot.end <= now:
                        completed.append(state.complete(slot))
                state.refresh()
            next_end = min(next_end, state.min_end)
        self._next_end = next_end
        completed.sort(key=lambda b: (b.end, b.key, b.timeframe.duration))
        return completed

    def current(self, key: str, timeframe: Timeframe | str) -> Bar | None:
        """The forming bar of ``timeframe`` for instrument ``key`` (``NSE:TCS``)."""
        state = self._by_key.get(key)
        if state is None:
            return None
        timeframe = Timeframe(timeframe)
        for slot in state.slots:
            if slot.timeframe is timeframe and slot.open is not None:
                return state.bar(slot, False)
        return None
