"""Risk check benchmark: latency of ``RiskEngine.check_and_reserve`` (+ ``release``).

    python benchmarks/risk_checks.py [--orders 100000] [--users 200] [--positions 400]
        [--open-orders 400] [--output benchmarks/results/risk_checks.json]

The book: the paper exchange's universe with its option chains (the Nifty 50 equities,
NIFTY/BANKNIFTY futures and about 250 index options, with their freeze quantities, lot
and tick sizes), ``--users`` users with one or two broker accounts each (about 1.5 per
user), default limits (every rule on) plus a daily loss limit, funds fed for every
account, ``--positions`` positions and ``--open-orders`` working orders spread over the
accounts (loaded as at start-up) and a last price for every instrument.

The orders: ``--orders`` LIMIT and MARKET orders (equities and index derivatives, buys and
sells, DELIVERY and INTRADAY, whole lots, prices on the tick inside the price band) from
random accounts, one millisecond of market time apart from 10:00 IST on a trading day, all
prepared before timing. Each is timed with ``time.perf_counter_ns`` around
``check_and_reserve`` (every rule runs for an accepted order) and around the ``release``
that follows it, so the book stays the same size throughout (the order is checked against
the realistic book, not an ever-growing one). Orders the rules refuse are timed too (the
exception path) and reported separately. The garbage collector stays on, as in
production. Results go to ``--output`` (with python, machine and timestamp).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trading_backend.brokers.paper.universe import default_universe  # noqa: E402
from trading_backend.domain import (  # noqa: E402
    BrokerOrder,
    Exchange,
    Instrument,
    Order,
    OrderStatus,
)
from trading_backend.domain.money import round_to_tick  # noqa: E402
from trading_backend.risk import RiskEngine, RiskLimits, RiskRejected  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TODAY = date(2026, 11, 25)  # a Wednesday, not a holiday
START = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # 10:00 IST
GOAL_P99_US = 50.0


def build(
    rng: random.Random, users: int, positions: int, open_orders: int
) -> tuple[RiskEngine, list[tuple[str, str]], list[Instrument], dict[str, Decimal], Counter[str]]:
    specs = [s for s in default_universe(TODAY, options=True) if s.instrument.tradable]
    specs = [s for s in specs if s.instrument.exchange is not Exchange.CRYPTO]
    instruments = [s.instrument for s in specs]
    prices = {s.instrument.key: s.initial_price for s in specs}
    limits = RiskLimits(daily_loss_limit=Decimal("50000"))
    engine = RiskEngine(instruments=instruments, default_limits=limits)
    for instrument in instruments:
        engine.on_price(instrument.symbol, instrument.exchange, prices[instrument.key], START)
    accounts: list[tuple[str, str]] = []
    for u in range(users):
        for a in range(rng.choice((1, 2))):
            accounts.append((f"user{u}", f"cfg{u}-{a}"))
    for _, config in accounts:
        engine.set_funds(config, Decimal("5000000"))
    equities = [i for i in instruments if i.lot_size == 1]
    held: Counter[str] = Counter()
    for n in range(positions):
        user, config = accounts[n % len(accounts)]
        instrument = rng.choice(equities)
        price = prices[instrument.key]
        quantity = rng.choice((-1, 1)) * rng.randint(1, 20)
        engine.load_position(user, config, instrument.symbol, instrument.exchange, quantity, price)
        held[instrument.key] += 1
    for n in range(open_orders):
        user, config = accounts[(n * 7) % len(accounts)]
        instrument = rng.choice(equities)
        price = prices[instrument.key]
        request = BrokerOrder(
            symbol=instrument.symbol,
            exchange=instrument.exchange,
            side=rng.choice(("BUY", "SELL")),
            order_type="LIMIT",
            product_type="INTRADAY",
            quantity=rng.randint(1, 10),
            price=round_to_tick(price * Decimal("0.99"), instrument.tick_size),
        )
        order = Order.from_request(f"working{n}", user, config, request)
        order.status = OrderStatus.OPEN
        engine.load_open_order(order)
    return engine, accounts, instruments, prices, held


def prepare(
    rng: random.Random,
    count: int,
    accounts: list[tuple[str, str]],
    instruments: list[Instrument],
    prices: dict[str, Decimal],
) -> list[tuple[str, str, str, BrokerOrder, datetime]]:
    equities = [i for i in instruments if i.lot_size == 1]
    derivatives = [i for i in instruments if i.lot_size > 1]
    orders = []
    for n in range(count):
        user, config = rng.choice(accounts)
        instrument = rng.choice(equities) if rng.random() < 0.7 else rng.choice(derivatives)
        last = prices[instrument.key]
        limit = rng.random() < 0.8
        price = None
        if limit:
            price = round_to_tick(
                last * (1 + Decimal(rng.randint(-300, 300)) / 10000), instrument.tick_size
            )
            price = max(price, instrument.tick_size)
        if instrument.lot_size > 1:
            quantity = instrument.lot_size * rng.randint(1, 2)
        else:
            quantity = rng.randint(1, 50)
        request = BrokerOrder(
            symbol=instrument.symbol,
            exchange=instrument.exchange,
            side=rng.choice(("BUY", "SELL")),
            order_type="LIMIT" if limit else "MARKET",
            product_type=rng.choice(("DELIVERY", "INTRADAY")),
            quantity=quantity,
            price=price,
        )
        orders.append((user, config, f"bench{n}", request, START + timedelta(milliseconds=n)))
    return orders


def percentile(sorted_values: list[int], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


def summary(values_ns: list[int]) -> dict[str, float | int]:
    if not values_ns:
        return {"count": 0}
    ordered = sorted(values_ns)
    return {
        "count": len(ordered),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "p50_us": round(percentile(ordered, 50), 2),
        "p90_us": round(percentile(ordered, 90), 2),
        "p99_us": round(percentile(ordered, 99), 2),
        "p999_us": round(percentile(ordered, 99.9), 2),
        "max_us": round(ordered[-1] / 1000, 2),
    }


def run(
    engine: RiskEngine, orders: list[tuple[str, str, str, BrokerOrder, datetime]]
) -> tuple[list[int], list[int], list[int], list[int], Counter[str]]:
    check = engine.check_and_reserve
    release = engine.release
    clock = time.perf_counter_ns
    accepted: list[int] = []
    accepted_total: list[int] = []
    released: list[int] = []
    refused: list[int] = []
    reasons: Counter[str] = Counter()
    for user, config, order_id, request, now in orders:
        started = clock()
        try:
            check(user, config, order_id, request, now=now)
        except RiskRejected as error:
            refused.append(clock() - started)
            reasons[str(error.details.get("rule"))] += 1
            continue
        checked = clock()
        release(order_id)
        done = clock()
        accepted.append(checked - started)
        released.append(done - checked)
        accepted_total.append(done - started)
    return accepted, accepted_total, released, refused, reasons


def run_prices(
    engine: RiskEngine,
    instruments: list[Instrument],
    prices: dict[str, Decimal],
    count: int,
    rng: random.Random,
) -> list[int]:
    """``on_price`` latency: a tick of a random instrument, one tick size up or down."""
    ticks = []
    current = dict(prices)
    for n in range(count):
        instrument = rng.choice(instruments)
        step = instrument.tick_size * rng.choice((-1, 1))
        current[instrument.key] = max(current[instrument.key] + step, instrument.tick_size)
        ticks.append((instrument.symbol, instrument.exchange, current[instrument.key], n))
    on_price = engine.on_price
    clock = time.perf_counter_ns
    out = []
    for symbol, exchange, price, n in ticks:
        now = START + timedelta(seconds=200, milliseconds=n)
        started = clock()
        on_price(symbol, exchange, price, now)
        out.append(clock() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--positions", type=int, default=400)
    parser.add_argument("--open-orders", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS / "risk_checks.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    engine, accounts, instruments, prices, held = build(
        rng, args.users, args.positions, args.open_orders
    )
    orders = prepare(rng, args.orders, accounts, instruments, prices)
    # Warm up on a separate copy of the book (caches, the calendar's session window).
    warm_engine, *_ = build(random.Random(args.seed), args.users, args.positions, args.open_orders)
    run(warm_engine, orders[: min(2000, len(orders))])
    gc.collect()
    started = time.perf_counter()
    accepted, accepted_total, released, refused, reasons = run(engine, orders)
    elapsed = time.perf_counter() - started
    most_held = {key for key, _ in held.most_common(20)}
    ticked = [i for i in instruments if i.key in most_held]
    price_ns = run_prices(engine, ticked, prices, min(args.orders, 100_000), rng)
    check_stats = summary(accepted)
    result = {
        "benchmark": "risk_checks",
        "orders": len(orders),
        "book": {
            "users": args.users,
            "accounts": len(accounts),
            "instruments": len(instruments),
            "positions": args.positions,
            "open_orders": args.open_orders,
            "rules": [rule.name for rule in engine.rules],
        },
        "check_and_reserve_accepted": check_stats,
        "release": summary(released),
        "check_and_reserve_plus_release": summary(accepted_total),
        "check_rejected": summary(refused),
        "on_price_held_instruments": summary(price_ns),
        "rejections_by_rule": dict(reasons.most_common()),
        "seconds": round(elapsed, 3),
        "orders_per_second": round(len(orders) / elapsed),
        "goal_p99_us": GOAL_P99_US,
        "goal_met": bool(check_stats.get("p99_us", 0) < GOAL_P99_US)
        and bool(summary(accepted_total).get("p99_us", 0) < GOAL_P99_US),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    pair = result["check_and_reserve_plus_release"]
    ticks = result["on_price_held_instruments"]
    print(
        f"check_and_reserve (accepted, {check_stats['count']:,}): p50 {check_stats['p50_us']} µs,"
        f" p99 {check_stats['p99_us']} µs, mean {check_stats['mean_us']} µs\n"
        f"check_and_reserve + release: p50 {pair['p50_us']} µs, p99 {pair['p99_us']} µs,"
        f" mean {pair['mean_us']} µs\n"
        f"rejected ({len(refused):,}): {dict(reasons.most_common())}\n"
        f"on_price (the 20 most held instruments): p50 {ticks['p50_us']} µs,"
        f" p99 {ticks['p99_us']} µs\n"
        f"goal p99 < {GOAL_P99_US} µs: {'met' if result['goal_met'] else 'NOT met'}"
        f" -> {args.output}"
    )


if __name__ == "__main__":
    main()
