"""The backtest engine: historical bars replayed, event by event, into the same
``BaseStrategy`` classes that run live, filling on the paper broker's own account code.

Public API (``from trading_backend.backtest import ...``)::

    config = parse_config({                       # or BacktestConfig(...) directly
        "strategy": "sma_crossover",
        "params": {"symbol": "INFY", "fast_period": 10, "slow_period": 30, "quantity": 10},
        "timeframe": "1d",                         # default: the strategy's subscription
        "start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z",
        "initial_capital": "1000000", "slippage_bps": "2", "half_spread_ticks": 1,
        "partial_fills": True, "charges": True, "seed": 42,
    })                                             # DomainError(VALIDATION_ERROR) if bad
    source = CsvSource("infy.csv")                 # or InMemorySource(bars),
                                                   # CandleSource(candle_service, "paper",
                                                   #             paper_history(seed))
    result = await Backtest(config, source).run()  # or run_backtest(config, source) (sync)
    result.fills, result.orders, result.positions, result.equity_curve(500),
    result.daily_returns(), result.metrics.to_dict(), result.total_charges,
    result.bars_processed, result.elapsed_seconds, result.to_dict()

``Backtest(config, source, registry=None, instruments=None)``: ``registry`` finds the
strategy kind (default: built-ins, entry points); ``instruments`` maps ``"NSE:INFY"`` to
an ``Instrument`` for lot and tick sizes the paper universe does not know. Building
validates everything that can be known before data is read (the strategy kind and its
params exactly as the live path does: ``DomainError(VALIDATION_ERROR)``); ``run()`` then
raises ``DomainError`` for data problems (an instrument without bars:
``INSTRUMENT_NOT_FOUND``; bars out of order or overlapping, a timeframe the strategy does
not subscribe to: ``VALIDATION_ERROR``; both ``BacktestError``). A strategy that raises
does not raise out of ``run()``: the result comes back with ``error`` set and what
happened until then. After ``run()`` the ``Backtest`` keeps ``series`` (the bars replayed,
per instrument in ``result.instruments`` order), ``strategy`` (the instance) and ``ctx``.
To drive the live paper market with the same prices, see ``brokers.paper.replay``.

The replay (the rules are the live paper market's, so a strategy trades the same here
and live; ``brokers.paper.replay`` defines the path):

* Bars of all instruments are merged by start time (instruments in config order on a
  tie). Each bar is replayed to the matching engine as four price points,
  ``open -> nearer of high/low -> the other -> close``, at ``start + k/4 x duration``;
  limit and stop orders fill where the path crosses them (at the limit, or the point's
  price if better; stops trigger on the point and then fill as the paper broker fills them).
* A bar is *delivered* (``on_bar``) when it is complete, which is at the first price point
  at or after its end: the next bar's open. All instruments' opens at that time are
  published first, then the completed bars are delivered. This is when the live market
  hub completes a bar (on the next bar's first tick), so **an order placed on bar t
  fills at the next price point**: a market order at bar t+1's open (plus spread and
  slippage), never at a price the strategy could not have traded at. ``bars()`` shows only
  delivered bars: no look-ahead. The last bars are delivered after the data ends; orders
  they place find no further price.
* Orders go to a ``PaperAccount`` (``brokers.paper.exchange``): the paper broker's lot,
  tick and funds checks, its ``FillModel`` (slippage, participation-limited partial fills,
  SL/SL-M triggers, IOC) and its charges (Indian equity and F&O, crypto maker/taker fees).
  DAY orders expire at their exchange's session close, as on the paper broker.
* Deterministic: nothing random is drawn, nothing reads the wall clock; orders, fills and
  logs carry replay times, so a config and its data always give the same result (``seed``
  only matters where the data itself is synthetic).
* Speed: while no order is working and no strategy watches ticks, the matching engine is
  skipped (the path is not replayed); with one instrument the equity is recorded only
  when a fill changes the account and worked out per bar when read (``curve.py``). A run
  costs one or two microseconds per bar plus the strategy's own work, and about 100 µs
  per order (mostly the paper account's).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import json
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from trading_backend.analytics.metrics import (
    EquityPoint,
    compute_report,
    day_tz_for,
    trading_days_for,
)
from trading_backend.backtest.broker import SimulatedBroker
from trading_backend.backtest.config import BacktestConfig, parse_config
from trading_backend.backtest.context import BacktestContext, LogEntry
from trading_backend.backtest.curve import EquityCurve
from trading_backend.backtest.data import BarSource
from trading_backend.backtest.market import BacktestMarket, resolve_instrument
from trading_backend.backtest.result import BacktestResult
from trading_backend.brokers.paper.replay import path_times
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, Instrument, Timeframe
from trading_backend.strategies.base import BaseStrategy, StrategyParams, Subscription
from trading_backend.strategies.registry import StrategyRegistry

__all__ = ["Backtest", "BacktestError", "arun_backtest", "run_backtest", "validate_params"]

BACKTEST_STRATEGY_ID = "backtest"


class BacktestError(DomainError):
    """The backtest itself cannot run as asked (config, data): raised out of ``run()``,
    unlike a failure of the strategy, which the result reports."""

    code = ErrorCode.VALIDATION_ERROR


def _invalid(message: str, **details: object) -> BacktestError:
    return BacktestError(message, ErrorCode.VALIDATION_ERROR, **details)


def validate_params(
    cls: type[BaseStrategy], kind: str, params: Mapping[str, Any]
) -> StrategyParams:
    """As the live path does: validate, store as JSON, validate the stored form again."""
    try:
        stored = cls.Params.model_validate(dict(params)).model_dump(mode="json")
        return cls.Params.model_validate(stored)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise _invalid(
            f"invalid params for {kind!r}: {exc}",
            errors=[{**e, "loc": [str(p) for p in e["loc"]]} for e in errors],
        ) from None


class Backtest:
    """One run of one strategy over one data source (see the module docstring)."""

    def __init__(
        self,
        config: BacktestConfig | dict[str, Any],
        source: BarSource,
        *,
        registry: StrategyRegistry | None = None,
        instruments: Mapping[str, Instrument] | None = None,
    ) -> None:
        self.config = parse_config(config)
        self.source = source
        self.registry = registry or StrategyRegistry()
        self._instruments = dict(instruments or {})
        self.strategy_class = self.registry.get(self.config.strategy)
        self.params = validate_params(self.strategy_class, self.config.strategy, self.config.params)
        self._now = datetime(1970, 1, 1, tzinfo=UTC)
        # One instrument without tick watchers runs a specialised loop with the same rules;
        # False forces the general loop (tests compare the two).
        self.lean = True

    def now(self) -> datetime:
        return self._now

    # -- setup -------------------------------------------------------------------------------
    def _probe_subscriptions(self) -> list[Subscription]:
        """The strategy's subscriptions from a throwaway instance (before ``on_start``):
        what to load when the config does not say."""
        probe = self.strategy_class(_NullContext(), self.params)  # type: ignore[arg-type]
        try:
            return list(probe.subscriptions())
        except Exception as exc:  # noqa: BLE001 - reported as a config problem
            raise _invalid(
                f"the strategy cannot tell its instruments before it starts ({exc}); "
                "give the backtest's symbols and timeframe"
            ) from None

    def plan(self) -> tuple[list[tuple[str, Exchange]], Timeframe]:
        """The instruments and the timeframe the run will load (from the config, else from
        the strategy's subscriptions): a caller can load the bars itself, then replay them
        elsewhere (the API's jobs, the sweeps' worker processes)."""
        cfg = self.config
        instruments = cfg.instruments
        timeframe = cfg.timeframe
        if not instruments or timeframe is None:
            subscriptions = self._probe_subscriptions()
            if not instruments:
                instruments = [(s.symbol.upper(), s.exchange) for s in subscriptions]
            if timeframe is None:
                frames = [tf for s in subscriptions for tf in s.timeframes]
                timeframe = frames[0] if frames else None
        if not instruments:
            raise _invalid("the backtest has no instruments: give symbols")
        if timeframe is None:
            raise _invalid("the backtest has no timeframe: give one")
        return list(dict.fromkeys(instruments)), timeframe

    def _instrument(self, symbol: str, exchange: Exchange) -> Instrument:
        return self._instruments.get(f"{exchange.value}:{symbol}") or resolve_instrument(
            symbol, exchange
        )

    @staticmethod
    def _check_series(key: str, bars: Sequence[Bar]) -> None:
        if not bars:
            raise BacktestError(
                f"no {key} bars in the backtest's range",
                ErrorCode.INSTRUMENT_NOT_FOUND,
                instrument=key,
            )

    # -- run -----------------------------------------------------------------------------------
    async def run(self) -> BacktestResult:
        """Replay the data into the strategy; see the module docstring.

        The objects that exist before the run (the bars above all) are kept out of the
        garbage collector's sight while it runs (``gc.freeze``, undone at the end): a full
        collection would otherwise walk every bar held in memory again, over half a second
        per collection on a million bars, for objects the run never frees. Everything the
        run allocates is collected as usual. A process that has frozen objects itself (a
        pre-fork server) is left as it is.
        """
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return await self._run()
        finally:
            if freeze:
                gc.unfreeze()

    async def _run(self) -> BacktestResult:
        started = time.perf_counter()
        cfg = self.config
        instruments, timeframe = self.plan()
        loaded = await self.source.load(instruments, timeframe, cfg.start, cfg.end)
        keys = [f"{exchange.value}:{symbol}" for symbol, exchange in instruments]
        series: list[Sequence[Bar]] = [loaded.get(i, []) for i in instruments]
        for key, bars in zip(keys, series, strict=True):
            self._check_series(key, bars)
        self.market = market = BacktestMarket(
            [self._instrument(s, e) for s, e in instruments],
            cfg.half_spread_ticks,
            partial_fills=cfg.partial_fills,
        )
        self.broker = broker = SimulatedBroker(market, cfg.paper_settings())
        self.delivered = [0] * len(series)
        self.series = series
        self.timeframe = timeframe
        self._now = min(bars[0].start for bars in series)
        self.ctx = ctx = BacktestContext(
            strategy_id=BACKTEST_STRATEGY_ID,
            market=market,
            broker=broker,
            series=series,
            delivered=self.delivered,
            timeframe=timeframe,
            clock=self.now,
        )
        self.strategy = strategy = self.strategy_class(ctx, self.params)
        self.curve = EquityCurve.explicit(self._now, cfg.initial_capital)
        self.exposed_bars = 0
        self.bars_processed = 0
        error: str | None = None
        try:
            await strategy.on_start()
            await self._deliver_updates()
            self._wants_bar, self._ticks = self._routing(strategy.subscriptions(), keys, timeframe)
            await self._replay()
            await strategy.on_stop()
            await self._deliver_updates()
            json.dumps(ctx.state, allow_nan=False)
        except BacktestError:
            raise
        except Exception as exc:  # noqa: BLE001 - the strategy's failure is the result's
            error = self._failure(exc)
        elapsed = time.perf_counter() - started
        return self._result(keys, error, elapsed)

    def _failure(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.ctx.logs.append(
            LogEntry(self._now, "error", {"error": text, "traceback": summary[-4000:]})
        )
        return text

    def check(self) -> None:
        """Raise now what ``run()`` would find only after loading the data: a strategy
        (as configured) subscribing to an instrument or a timeframe the run does not
        replay. The API calls it before accepting a job."""
        instruments, timeframe = self.plan()
        keys = [f"{exchange.value}:{symbol}" for symbol, exchange in instruments]
        self._routing(self._probe_subscriptions(), keys, timeframe)

    def _routing(
        self, subscriptions: Sequence[Subscription], keys: list[str], timeframe: Timeframe
    ) -> tuple[list[bool], list[bool]]:
        """Which slots' bars reach ``on_bar``, which slots' points reach ``on_tick``."""
        wants = [False] * len(keys)
        ticks = [False] * len(keys)
        for subscription in subscriptions:
            key = f"{subscription.exchange.value}:{subscription.symbol.upper()}"
            if key not in keys:
                raise _invalid(
                    f"the strategy subscribes to {key}, which the backtest does not replay "
                    f"(instruments: {', '.join(keys)})"
                )
            slot = keys.index(key)
            if timeframe in subscription.timeframes:
                wants[slot] = True
            elif not subscription.ticks:
                raise _invalid(
                    f"the strategy wants {', '.join(t.value for t in subscription.timeframes)} "
                    f"bars of {key}; the backtest replays {timeframe.value} bars"
                )
            ticks[slot] = ticks[slot] or subscription.ticks
        return wants, ticks

    def _merged(self) -> list[tuple[int, Bar]]:
        """Every bar with its slot, by start (slot order on a tie)."""
        streams = [
            [(bar.start, slot, bar) for bar in bars] for slot, bars in enumerate(self.series)
        ]
        merged = heapq.merge(*streams, key=lambda e: (e[0], e[1]))
        return [(slot, bar) for _, slot, bar in merged]

    async def _deliver_updates(self) -> None:
        """Hand the queued order updates to ``on_order_update``, in order (and those that
        handling them causes)."""
        outbox = self.broker.outbox
        on_update = self.strategy.on_order_update
        i = 0
        try:
            while i < len(outbox):
                order = outbox[i]
                i += 1
                await on_update(order)
        finally:
            del outbox[:i]

    async def _point(self, slot: int, bar: Bar, phase: int, sequence: int) -> None:
        """Publish one point: match working orders on it, show it to tick watchers."""
        self.market.set_point(slot, bar, phase, sequence)
        if self.broker.working:
            self.broker.on_point(slot, self._now)
            if self.broker.outbox:
                await self._deliver_updates()
        if self._ticks[slot]:
            await self.strategy.on_tick(self.market.tick_view(slot))
            if self.broker.outbox:
                await self._deliver_updates()

    async def _rest_of_path(self, slot: int, bar: Bar, sequence: int) -> None:
        times = path_times(bar)
        for phase in (1, 2, 3):
            self._now = times[phase]
            await self._point(slot, bar, phase, sequence + phase)

    async def _deliver(self, slot: int, bar: Bar) -> None:
        self.delivered[slot] += 1
        if self._wants_bar[slot]:
            await self.strategy.on_bar(bar)
            if self.broker.outbox:
                await self._deliver_updates()

    async def _finish(self, pending: list[Bar | None]) -> None:
        """The last bars: complete when their windows end, delivered in that order."""
        last = sorted(
            ((bar.end, s, bar) for s, bar in enumerate(pending) if bar is not None),
            key=lambda e: (e[0], e[1]),
        )
        for end, slot, bar in last:
            self._now = max(self._now, end)
            await self._deliver(slot, bar)

    async def _replay(self) -> None:
        if self.lean and len(self.series) == 1 and not self._ticks[0]:
            self.curve = EquityCurve(self.curve.start, self.curve.capital)
            try:
                await self._replay_one()
            finally:
                self.bars_processed = len(self.curve) - 1
                self.exposed_bars = self.curve.exposed()
        else:
            await self._replay_many()

    async def _replay_many(self) -> None:
        """The general loop: any number of instruments, tick watchers (see the module doc)."""
        market = self.market
        broker = self.broker
        n_slots = len(self.series)
        pending: list[Bar | None] = [None] * n_slots
        events = self._merged()
        n = len(events)
        i = 0
        while i < n:
            ts = events[i][1].start
            j = i + 1
            while j < n and events[j][1].start == ts:
                j += 1
            group = events[i:j]
            first = i
            i = j
            self._now = ts
            if broker.working:
                broker.expire_day_orders(ts)
            for k, (slot, bar) in enumerate(group):
                previous = pending[slot]
                if previous is not None and previous.end > ts:
                    raise _ordering_error(market.instruments[slot].key, previous, bar)
                await self._point(slot, bar, 0, 4 * (first + k))
            for slot in range(n_slots):
                done = pending[slot]
                if done is not None and done.end <= ts:
                    pending[slot] = None
                    await self._deliver(slot, done)
            if broker.working or any(self._ticks):
                times = [path_times(bar) for _, bar in group]
                for phase in (1, 2, 3):
                    for k, (slot, bar) in enumerate(group):
                        self._now = times[k][phase]
                        await self._point(slot, bar, phase, 4 * (first + k) + phase)
            else:
                for k, (slot, bar) in enumerate(group):
                    market.set_point(slot, bar, 3, 4 * (first + k) + 3)
            end = ts
            for slot, bar in group:
                pending[slot] = bar
                end = max(end, bar.end)
            if broker.open_positions:
                self.exposed_bars += 1
            self.curve.append(end, broker.equity())
            self.bars_processed += len(group)
        await self._finish(pending)

    async def _replay_one(self) -> None:
        """The same rules for one instrument without tick watchers, in a lean loop: every
        group is one bar, and while nothing is working a bar costs a few list stores and
        the strategy's ``on_bar``. The equity is not computed per bar: the account's state
        is recorded when a fill changes it, and the curve works values out when read
        (``curve.EquityCurve``)."""
        market = self.market
        broker = self.broker
        account = broker.account
        working = broker.working
        outbox = broker.outbox
        on_bar = self.strategy.on_bar
        wants = self._wants_bar[0]
        bars = self.series[0]
        m_bars = market.bars
        m_phases = market.phases
        m_sequences = market.sequences
        changes = self.curve.track(bars)
        key = market.instruments[0].key
        delivered = self.delivered
        seen_fills = broker.fill_count
        previous: Bar | None = None
        index = 0
        try:
            for index, bar in enumerate(bars):
                ts = bar.start
                self._now = ts
                m_bars[0] = bar
                m_phases[0] = 0
                m_sequences[0] = 4 * index
                if working:
                    broker.expire_day_orders(ts)
                    broker.on_point(0, ts)
                    if outbox:
                        await self._deliver_updates()
                if previous is not None:
                    if previous.end > ts:
                        raise _ordering_error(key, previous, bar)
                    delivered[0] = index
                    if wants:
                        await on_bar(previous)
                        if outbox:
                            await self._deliver_updates()
                if working:
                    await self._rest_of_path(0, bar, 4 * index)
                else:
                    m_phases[0] = 3
                    m_sequences[0] = 4 * index + 3
                if broker.fill_count != seen_fills:
                    seen_fills = broker.fill_count
                    quantity, cost = broker.net_position(0)
                    changes.append((index, account.cash, quantity, cost))
                previous = bar
            else:
                index = len(bars)
        finally:
            self.curve.replayed(index)
        await self._finish([previous])

    # -- result ------------------------------------------------------------------------------
    def _result(self, keys: list[str], error: str | None, elapsed: float) -> BacktestResult:
        cfg = self.config
        account = self.broker.account
        first_exchange = self.market.instruments[0].exchange
        tz = day_tz_for(first_exchange)
        fills = list(account.fills)
        metrics = None
        curve = self.curve
        if len(curve) > 1:
            closes = curve.daily_closes(tz)
            points = [EquityPoint(curve.time(0), curve.value(0))]
            points += [EquityPoint(at, value) for _, value, at in closes]
            bars = max(len(curve) - 1, 1)
            metrics = compute_report(
                points,
                fills,
                trading_days_per_year=trading_days_for(first_exchange),
                day_tz=tz,
                risk_free_rate=cfg.risk_free_rate,
                exposure_fraction=self.exposed_bars / bars,
            )
        return BacktestResult(
            config=cfg,
            strategy_id=BACKTEST_STRATEGY_ID,
            params=self.params.model_dump(mode="json"),
            instruments=keys,
            timeframe=self.timeframe,
            initial_capital=cfg.initial_capital,
            orders=list(self.broker.orders.values()),
            fills=fills,
            final_positions=self.broker.positions(),
            curve=curve,
            metrics=metrics,
            bars_processed=self.bars_processed,
            elapsed_seconds=elapsed,
            log=list(self.ctx.logs),
            state=self.ctx.state,
            error=error,
            day_tz=tz,
            charges_detail=dict(account.charges_detail),
        )


def _ordering_error(key: str, previous: Bar, bar: Bar) -> BacktestError:
    return _invalid(
        f"{key} bars out of order or overlapping: the bar starting {bar.start.isoformat()} "
        f"follows one ending {previous.end.isoformat()}",
        instrument=key,
    )


class _NullContext:
    """What a strategy instance built only to read its subscriptions is given."""

    strategy_id = BACKTEST_STRATEGY_ID
    user_id = config_id = "backtest"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}


async def arun_backtest(
    config: BacktestConfig | dict[str, Any],
    source: BarSource,
    **options: Any,
) -> BacktestResult:
    return await Backtest(config, source, **options).run()


def run_backtest(
    config: BacktestConfig | dict[str, Any],
    source: BarSource,
    **options: Any,
) -> BacktestResult:
    """Synchronous convenience: ``asyncio.run`` of ``Backtest(...).run()`` (not from inside
    a running event loop: await ``Backtest(...).run()`` there)."""
    return asyncio.run(arun_backtest(config, source, **options))
