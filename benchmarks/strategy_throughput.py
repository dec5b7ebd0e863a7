"""Strategy throughput benchmark: ticks per second through tick -> bar -> strategy ``on_bar``.

    python benchmarks/strategy_throughput.py [--ticks 300000] [--instruments 100] [--users 4]
        [--output benchmarks/results/strategy_throughput.json]

The live path, nothing faked: a ``SimulatedMarket`` listing exactly ``--instruments``
instruments of the paper universe (the 50 Nifty equities, NIFTY and BANKNIFTY with their
index futures, BTCUSDT and ETHUSDT, four stock futures for the cash-and-carry strategy, and
the rest NIFTY/BANKNIFTY options nearest the money), a real ``MarketHub`` over it, the
``MarketDataReader`` and a ``StrategyRunner`` whose strategies were created and started
through ``StrategyService`` on a SQLite database in a temporary directory, trading on paper
accounts through the runtime's order path (order service, embedded worker, paper broker).
All six built-ins run, several instances each, spread so that every listed instrument is
subscribed (see ``plan``). Every strategy works on 1-minute bars so that bars complete
within the run.

Time is a controlled clock: each ``market.step()`` is one second of market time from
Monday 2026-11-02 09:15 IST (jumping to the next session open at 15:30), so bars complete
exactly as they would live, without sleeping. After each market minute the benchmark waits
for every strategy to handle what it was sent (``runner.drain()``), as 60 real seconds
would allow; the timed figure includes that work.

Measurements, all on the same ticks (the runs check that their market ended on exactly the
reference market's prices):

* ``pipeline``: ``market.step()`` -> hub (aggregation, fan-out) -> runner queues ->
  ``on_bar`` of every strategy (reads, indicators, state persistence, signal log, orders),
  with ``hub`` the time spent inside the hub's tick path;
* ``engine_only``: the same strategies and subscriptions, but ``on_bar`` returns at once:
  what the engine costs (market, hub, queues, runner tasks) before any strategy works;
* ``market_only``: the same market (same seed, same clock) stepped with no listener: the
  cost of producing the ticks, included in both runs above;
* ``bare_aggregator``: the same ticks through a bare ``BarAggregator`` with the hub's seven
  timeframes: the floor everything is compared with (``ratio_vs_bare_aggregator``).

Why the stock futures are made up: the paper universe lists futures only on the two indices,
which cannot be traded, so cash-and-carry needs a tradable spot with a listed future. Why
the runtime's market is replaced: the paper brokers must fill on the market the hub
watches, and that market needs the controlled clock.

Results go to ``--output`` (with python, machine and timestamp), a summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import event, func, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from trading_backend.brokers.paper.market import Quote, SimulatedMarket  # noqa: E402
from trading_backend.brokers.paper.universe import (  # noqa: E402
    InstrumentSpec,
    crypto_spot,
    current_expiry,
    futures_symbol,
    index_futures,
    index_options,
    indices,
    nifty50_equities,
)
from trading_backend.domain import Bar, Exchange, Instrument, InstrumentType, Timeframe  # noqa: E402
from trading_backend.logging import configure_logging  # noqa: E402
from trading_backend.marketdata.bars import BarAggregator, session_for, sessions  # noqa: E402
from trading_backend.marketdata.hub import MarketHub  # noqa: E402
from trading_backend.marketdata.reader import MarketDataReader  # noqa: E402
from trading_backend.runtime import Runtime  # noqa: E402
from trading_backend.settings import Settings  # noqa: E402
from trading_backend.storage.models import (  # noqa: E402
    OrderRow,
    StrategyRow,
    StrategySignalRow,
    TradeRow,
)
from trading_backend.strategies.base import BaseStrategy  # noqa: E402
from trading_backend.strategies.builtin import BUILTINS  # noqa: E402
from trading_backend.strategies.registry import StrategyRegistry  # noqa: E402
from trading_backend.strategies.runner import StrategyRunner  # noqa: E402
from trading_backend.strategies.service import StrategyService  # noqa: E402

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "strategy_throughput.json"
START = datetime(2026, 11, 2, 3, 45, tzinfo=UTC)  # Monday 09:15 IST
TODAY = date(2026, 11, 2)
# Spot, lot size and basis of the stock futures the cash-and-carry instances trade. The
# basis is constant in the paper model (future = spot x (1 + basis)); 0.8% with 22 days to
# the 24 Nov expiry is about 13% a year, above the strategy's 8% entry threshold.
STOCK_FUTURES: tuple[tuple[str, int], ...] = (
    ("RELIANCE", 500),
    ("TCS", 175),
    ("INFY", 400),
    ("HDFCBANK", 550),
)
STOCK_FUTURE_BASIS = Decimal("0.008")
ATM = {"NIFTY": Decimal(26000), "BANKNIFTY": Decimal(58000)}
Tick = tuple[str, Exchange, Decimal, int, datetime]


# -- the market ----------------------------------------------------------------------------
class Clock:
    """Market time for the market, the runner and the strategies: one ``advance`` per
    step; outside the NSE session it jumps to the next open, so NSE bars keep completing."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        moment = self.moment + timedelta(seconds=seconds)
        if session_for(Exchange.NSE, moment) is None:  # after the close: the next open
            moment = next(sessions(Exchange.NSE, moment, moment + timedelta(days=7))).open
        self.moment = moment


def stock_futures() -> list[InstrumentSpec]:
    expiry = current_expiry(TODAY)
    equities = {spec.instrument.symbol: spec for spec in nifty50_equities()}
    specs = []
    for symbol, lot in STOCK_FUTURES:
        spot = equities[symbol]
        instrument = Instrument(
            symbol=futures_symbol(symbol, expiry),
            exchange=Exchange.NFO,
            instrument_type=InstrumentType.FUT,
            name=f"{spot.instrument.name} futures",
            lot_size=lot,
            tick_size=Decimal("0.05"),
            expiry=expiry,
            underlying=symbol,
        )
        specs.append(
            InstrumentSpec(
                instrument,
                spot.initial_price * (1 + STOCK_FUTURE_BASIS),
                spot.daily_volume // 4,
                spot.annual_volatility,
                underlying_key=spot.key,
                basis=STOCK_FUTURE_BASIS,
            )
        )
    return specs


def universe(instruments: int) -> list[InstrumentSpec]:
    """``instruments`` specs: the fixed core (60) plus options nearest the money, in
    CE/PE pairs, NIFTY and BANKNIFTY alternately, nearest expiry first."""
    core = [*nifty50_equities(), *indices(), *index_futures(TODAY), *crypto_spot()]
    core += stock_futures()
    wanted = instruments - len(core)
    if wanted < 4:
        raise SystemExit(f"--instruments must be at least {len(core) + 4}")
    by_pair: dict[tuple[str, date, Decimal], list[InstrumentSpec]] = {}
    for spec in index_options(TODAY):
        i = spec.instrument
        assert i.underlying and i.expiry and i.strike is not None
        by_pair.setdefault((i.underlying, i.expiry, i.strike), []).append(spec)
    expiries = {u: sorted({e for uu, e, _ in by_pair if uu == u}) for u in ATM}

    def rank(pair: tuple[str, date, Decimal]) -> tuple[int, Decimal, int]:
        underlying, expiry, strike = pair
        distance = abs(strike - ATM[underlying]) / ATM[underlying]
        return expiries[underlying].index(expiry), distance, underlying == "BANKNIFTY"

    options: list[InstrumentSpec] = []
    for pair in sorted(by_pair, key=rank):
        options.extend(sorted(by_pair[pair], key=lambda s: s.instrument.instrument_type.value))
    if wanted > len(options):
        raise SystemExit(f"--instruments must be at most {len(core) + len(options)}")
    return core + options[:wanted]


# -- the strategies ------------------------------------------------------------------------
def counted(
    cls: type[BaseStrategy], calls: Counter[str], *, trade: bool = True
) -> type[BaseStrategy]:
    """The built-in with a counter on ``on_bar`` (same kind name, same code). With
    ``trade=False`` its ``on_bar`` only counts: the engine-only reference run."""

    async def on_bar(self: BaseStrategy, bar: Bar) -> None:
        calls[cls.name] += 1
        if trade:
            await cls.on_bar(self, bar)

    return type(cls.__name__, (cls,), {"on_bar": on_bar, "__module__": __name__})


class TimedHub(MarketHub):
    """The real hub, timing its tick path (aggregation and fan-out). The consumers' callbacks
    only enqueue, so the time spent in ``_on_quotes`` is the hub's own."""

    seconds = 0.0

    async def _on_quotes(self, quotes: Iterable[Quote]) -> None:
        started = time.perf_counter()
        await super()._on_quotes(quotes)
        self.seconds += time.perf_counter() - started


def plan(specs: list[InstrumentSpec]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, params) of every instance, spread so that every instrument is watched:
    mean reversion and momentum on every equity, momentum (breakout) on the index futures,
    mean reversion (Bollinger) on every option, cash-and-carry on the stock futures,
    options selling on both indices, grid and DCA on both coins."""
    instances: list[tuple[str, dict[str, Any]]] = []
    m1 = {"timeframe": "1m"}
    for n, spec in enumerate(specs):
        i = spec.instrument
        if i.exchange is Exchange.NSE and i.instrument_type is InstrumentType.EQ:
            instances.append(
                (
                    "mean_reversion",
                    {**m1, "symbol": i.symbol, "allow_short": n % 2 == 0, "max_holding_bars": 10},
                )
            )
            instances.append(
                (
                    "momentum",
                    {
                        **m1,
                        "symbol": i.symbol,
                        "fast_period": 5,
                        "slow_period": 20,
                        "ma_type": "ema" if n % 2 else "sma",
                        "allow_short": True,
                    },
                )
            )
        elif i.instrument_type is InstrumentType.FUT and spec.underlying_key in {
            f"NSE:{u}" for u in ATM
        }:
            instances.append(
                (
                    "momentum",
                    {
                        **m1,
                        "symbol": i.symbol,
                        "exchange": "NFO",
                        "mode": "breakout",
                        "quantity": i.lot_size,
                    },
                )
            )
        elif i.instrument_type is InstrumentType.FUT:
            assert i.underlying and i.expiry
            instances.append(
                (
                    "futures_arbitrage",
                    {
                        **m1,
                        "spot_symbol": i.underlying,
                        "future_symbol": i.symbol,
                        "expiry": i.expiry.isoformat(),
                        "lot_size": i.lot_size,
                    },
                )
            )
        elif i.is_option:
            instances.append(
                (
                    "mean_reversion",
                    {
                        **m1,
                        "symbol": i.symbol,
                        "exchange": "NFO",
                        "mode": "bollinger",
                        "quantity": i.lot_size,
                    },
                )
            )
    instances += [
        ("options_selling", {"underlying": "NIFTY", "exit_time": "10:30"}),
        (
            "options_selling",
            {"underlying": "NIFTY", "structure": "strangle", "strike_selection": "delta"},
        ),
        ("options_selling", {"underlying": "BANKNIFTY", "structure": "strangle"}),
        (
            "grid",
            {"symbol": "BTCUSDT", "lower": "89000", "upper": "91000", "levels": 11}
            | {"product_type": "INTRADAY"},
        ),
        (
            "grid",
            {"symbol": "ETHUSDT", "lower": "2960", "upper": "3040", "levels": 9}
            | {"product_type": "INTRADAY"},
        ),
        ("dca", {**m1, "symbol": "BTCUSDT", "interval_bars": 5, "amount": "100000"}),
        ("dca", {**m1, "symbol": "ETHUSDT", "interval_bars": 3, "amount": "7000"}),
    ]
    return instances


# -- measurements --------------------------------------------------------------------------
async def market_only(
    specs: list[InstrumentSpec], steps: int, seed: int
) -> tuple[float, list[Tick], list[Quote]]:
    """Step an identical market with no listener; returns the time and its ticks."""
    clock = Clock(START)
    market = SimulatedMarket(seed, specs, clock=clock.now)
    batches: list[list[Quote]] = []
    started = time.perf_counter()
    for _ in range(steps):
        clock.advance(1)
        batches.append(await market.step())
    elapsed = time.perf_counter() - started
    ticks = [
        (q.symbol, q.exchange, q.ltp, q.tick_volume, q.timestamp)
        for batch in batches
        for q in batch
    ]
    return elapsed, ticks, batches[-1]


def bare_aggregator(ticks: list[Tick]) -> tuple[float, int]:
    aggregator = BarAggregator(list(Timeframe))
    on_tick = aggregator.on_tick
    bars = 0
    started = time.perf_counter()
    for symbol, exchange, price, volume, timestamp in ticks:
        completed = on_tick(symbol, exchange, price, volume, timestamp)
        if completed:
            bars += len(completed)
    bars += len(aggregator.flush(ticks[-1][4]))
    return time.perf_counter() - started, bars


def settings_for(data_dir: Path, seed: int) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="development",
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'bench.db'}",
        master_encryption_key=Fernet.generate_key().decode(),
        jwt_secret_key="bench-" + os.urandom(16).hex(),
        market_seed=seed,
        log_level="WARNING",
    )


async def pipeline(
    specs: list[InstrumentSpec],
    steps: int,
    seed: int,
    users: int,
    drain_every: int,
    *,
    trade: bool = True,
) -> dict[str, Any]:
    """One run over a fresh database; ``trade=False`` runs the same subscriptions with
    ``on_bar`` doing nothing (what the engine itself costs)."""
    data_dir = Path(tempfile.mkdtemp(prefix="tb-strategy-bench-"))
    runtime = Runtime(settings_for(data_dir, seed))
    clock = Clock(START)
    market = SimulatedMarket(seed, specs, clock=clock.now)
    # The paper brokers must trade on the market the hub watches.
    runtime.market = market
    runtime.broker_context.market = market
    await runtime.start(worker=True, market=False, health_monitor=False)
    commits = Counter[str]()
    event.listen(runtime.engine.sync_engine, "commit", lambda _: commits.update(["commits"]))

    hub = TimedHub(market)
    calls: Counter[str] = Counter()
    registry = StrategyRegistry(include_builtins=False)
    for cls in BUILTINS:
        registry.register(counted(cls, calls, trade=trade))
    runner = StrategyRunner(
        runtime.db,
        registry,
        hub,
        MarketDataReader(market, hub),
        runtime.orders,
        runtime.recorder,
        order_wait=runtime.settings.order_wait_seconds,
        clock=clock.now,
    )
    service = StrategyService(runtime.db, registry, runner)
    await runner.start()

    accounts = []
    for n in range(users):
        user = await runtime.accounts.create_user(f"bench{n}", "bench-password-123")
        config = await runtime.accounts.create_config(
            user.id, "paper", f"bench{n}", settings={"initial_capital": "100000000000"}
        )
        accounts.append((user.id, config["config_id"]))
    kinds: Counter[str] = Counter()
    for n, (kind, params) in enumerate(plan(specs)):
        user_id, config_id = accounts[n % users]
        created = await service.create(user_id, f"{kind}-{n}", kind, config_id, params)
        view = await service.start(user_id, created.id)
        if view.status != "RUNNING":
            raise RuntimeError(f"{kind} {params} did not start: {view.error}")
        kinds[kind] += 1
    watched = set(hub.instruments)
    listed = {spec.key for spec in specs}
    if watched != listed:
        raise RuntimeError(f"not watched: {sorted(listed - watched)}")

    commits.clear()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        clock.advance(1)
        await market.step()
        if step % drain_every == 0:
            await runner.drain()
    await runner.drain()
    elapsed = time.perf_counter() - started
    end_time = clock.now()
    last_quotes = market.quotes()

    async with runtime.db() as session:
        orders = await count_by(session, OrderRow.status)
        by_kind = await session.execute(
            select(StrategyRow.kind, func.count())
            .join(OrderRow, OrderRow.strategy_id == StrategyRow.id)
            .group_by(StrategyRow.kind)
        )
        orders_by_kind = {str(kind): int(n) for kind, n in by_kind.all()}
        trades = await session.scalar(select(func.count()).select_from(TradeRow))
        log_kinds = await count_by(session, StrategySignalRow.kind)
        statuses = await count_by(session, StrategyRow.status)
    await runner.stop()
    await hub.close()
    await runtime.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "seconds": elapsed,
        "market_time_end": end_time.isoformat(),
        "strategies": dict(sorted(kinds.items())),
        "strategy_status_after": statuses,
        "hub_seconds": round(hub.seconds, 3),
        "on_bar_calls": sum(calls.values()),
        "on_bar_by_kind": dict(sorted(calls.items())),
        "orders_by_status": orders,
        "orders_by_kind": dict(sorted(orders_by_kind.items())),
        "trades": trades,
        "signal_log_by_kind": log_kinds,
        "db_commits": commits["commits"],
        "last_quotes": last_quotes,
    }


async def count_by(session: AsyncSession, column: Any) -> dict[str, int]:
    rows = await session.execute(select(column, func.count()).group_by(column))
    return {str(key): int(n) for key, n in rows.all()}


def rate(count: int | float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else math.inf


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300_000)
    parser.add_argument("--instruments", type=int, default=100)
    parser.add_argument("--users", type=int, default=4, help="paper accounts sharing the load")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--drain-every", type=int, default=60, help="steps (market seconds) between drains"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the bare aggregator")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    configure_logging("WARNING")

    specs = universe(args.instruments)
    steps = math.ceil(args.ticks / len(specs))
    ticks_total = steps * len(specs)

    source_seconds, ticks, last_batch = await market_only(specs, steps, args.seed)
    assert len(ticks) == ticks_total
    bare_runs = [bare_aggregator(ticks) for _ in range(args.repeat)]
    bare_seconds, bars_completed = min(bare_runs)
    bare_tps = rate(ticks_total, bare_seconds)
    runs = {}
    for name, trade in (("pipeline", True), ("engine_only", False)):
        result = await pipeline(specs, steps, args.seed, args.users, args.drain_every, trade=trade)
        # Same seed, same clock, same instruments: the run saw exactly the reference ticks.
        if [(q.key, q.ltp) for q in result.pop("last_quotes")] != [
            (q.key, q.ltp) for q in last_batch
        ]:
            raise RuntimeError(f"the {name} market diverged from the reference market")
        seconds = result.pop("seconds")
        hub_seconds = result.pop("hub_seconds")
        runs[name] = {
            "seconds": round(seconds, 3),
            "ticks_per_second": rate(ticks_total, seconds),
            "bars_per_second": rate(result["on_bar_calls"], seconds),
            "ratio_vs_bare_aggregator": round(rate(ticks_total, seconds) / bare_tps, 4),
            "hub": {
                "seconds": round(hub_seconds, 3),
                "ticks_per_second": rate(ticks_total, hub_seconds),
                "ratio_vs_bare_aggregator": round(rate(ticks_total, hub_seconds) / bare_tps, 4),
            },
            **result,
        }
    market_end = runs["pipeline"].pop("market_time_end")
    runs["engine_only"].pop("market_time_end")
    report = {
        "benchmark": "strategy_throughput",
        "ticks": ticks_total,
        "instruments": len(specs),
        "steps": steps,
        "seconds_per_tick": 1,
        "market_time": {"start": START.isoformat(), "end": market_end},
        "users": args.users,
        "drain_every_steps": args.drain_every,
        **runs,
        "market_only": {
            "seconds": round(source_seconds, 3),
            "ticks_per_second": rate(ticks_total, source_seconds),
        },
        "bare_aggregator": {
            "seconds": round(bare_seconds, 4),
            "ticks_per_second": bare_tps,
            "bars_completed": bars_completed,
            "timeframes": [tf.value for tf in Timeframe],
            "runs_seconds": [round(r[0], 4) for r in bare_runs],
        },
        "python": platform.python_version(),
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    full, engine = report["pipeline"], report["engine_only"]
    print(
        f"{ticks_total:,} ticks ({len(specs)} instruments x {steps:,} one-second steps), "
        f"{sum(full['strategies'].values())} strategies, {full['on_bar_calls']:,} on_bar calls"
    )
    print(f"{'':36}{'seconds':>9}{'ticks/s':>11}{'bars/s':>9}{'vs bare':>9}")
    rows: list[tuple[str, dict[str, Any]]] = [
        ("pipeline: market -> hub -> on_bar", full),
        ("  of which the hub", full["hub"]),
        ("engine only (on_bar does nothing)", engine),
        ("market.step only", report["market_only"]),
        ("bare BarAggregator", report["bare_aggregator"]),
    ]
    for name, section in rows:
        bars = section.get("bars_per_second")
        ratio = section["ticks_per_second"] / bare_tps
        print(
            f"{name:36}{section['seconds']:>9.3f}{section['ticks_per_second']:>11,.0f}"
            f"{'' if bars is None else format(bars, ',.0f'):>9}{ratio:>9.4f}"
        )
    print(
        f"pipeline: {sum(full['orders_by_status'].values())} orders, {full['trades']} trades, "
        f"{sum(full['signal_log_by_kind'].values())} log entries, "
        f"{full['db_commits']:,} database commits -> {args.output}"
    )


if __name__ == "__main__":
    asyncio.run(main())
