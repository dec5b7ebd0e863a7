"""The backtest engine's rules: delivery and fills without look-ahead, the price path,
partial fills, charges, determinism, several instruments, and its errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.backtest.probes import Script, at, bars_from, registry
from tests.backtest.synthetic import daily_bars
from trading_backend.backtest import Backtest, BacktestResult, InMemorySource, parse_config
from trading_backend.backtest.market import resolve_instrument
from trading_backend.brokers.paper.charges import ChargeRates, charges_for_fill
from trading_backend.domain import Bar, DomainError, ErrorCode, Exchange, OrderStatus, ProductType

D = Decimal
# Five 15-minute bars; bar 2's path is 100 -> 104 (nearer) -> 95 -> 101.
ROWS = [
    (100, 101, 99, 100),
    (100, 102, 98, 101),
    (100, 104, 95, 101),
    (101, 103, 100, 102),
    (102, 103, 101, 102),
]


def config(orders: dict[str, list[dict[str, Any]]] | None = None, **extra: Any) -> dict[str, Any]:
    params = {"orders": orders or {}, **extra.pop("params", {})}
    return {"strategy": "script", "params": params, "charges": False, **extra}


async def backtest(cfg: dict[str, Any], bars: list[Bar]) -> tuple[BacktestResult, Script]:
    engine = Backtest(cfg, InMemorySource(bars), registry=registry())
    result = await engine.run()
    assert result.error is None, result.error
    strategy = engine.strategy
    assert isinstance(strategy, Script)
    return result, strategy


def market(side: str = "BUY", quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "side": side,
        "order_type": "MARKET",
        "product_type": "INTRADAY",
        "quantity": quantity,
        **extra,
    }


async def test_no_look_ahead_and_a_market_order_fills_at_the_next_open() -> None:
    bars = bars_from(ROWS)
    result, strategy = await backtest(config({"INFY:1": [market()]}), bars)
    # Bar i is delivered at bar i+1's open: it sees bars 0..i, the clock and the quote
    # are at that open; the last bar is delivered when its window ends.
    assert [s.bar for s in strategy.seen] == bars
    for i, seen in enumerate(strategy.seen):
        assert seen.history == bars[: i + 1]
        if i + 1 < len(bars):
            assert seen.now == bars[i + 1].start
            assert seen.quotes["INFY"] == bars[i + 1].open
        else:
            assert seen.now == bars[-1].end
            assert seen.quotes["INFY"] == bars[-1].close
    [fill] = result.fills
    assert (fill.timestamp, fill.side.value, fill.price, fill.quantity) == (
        bars[2].start,
        "BUY",
        D(100),
        1,
    )
    [placed] = strategy.placed
    assert placed.status is OrderStatus.FILLED  # at once, on the current point
    assert placed.created_at == bars[2].start
    assert [u.status for u in strategy.updates] == [OrderStatus.OPEN, OrderStatus.FILLED]


async def test_limit_and_stop_orders_fill_where_the_path_crosses_them() -> None:
    bars = bars_from(ROWS)
    orders = [
        {
            "side": "BUY",
            "order_type": "LIMIT",
            "price": "96",
            "product_type": "INTRADAY",
            "quantity": 1,
        },
        {
            "side": "BUY",
            "order_type": "SL_M",
            "trigger_price": "103",
            "product_type": "INTRADAY",
            "quantity": 2,
        },
        {
            "side": "SELL",
            "order_type": "LIMIT",
            "price": "102",
            "product_type": "INTRADAY",
            "quantity": 3,
        },
        {
            "side": "BUY",
            "order_type": "LIMIT",
            "price": "90",
            "product_type": "INTRADAY",
            "quantity": 4,
        },
    ]
    result, _ = await backtest(config({"INFY:1": orders}), bars[:4])
    got = [(f.timestamp, f.side.value, f.price, f.quantity) for f in result.fills]
    assert got == [
        (at(bars[2], 1), "BUY", D(104), 2),  # the stop triggers at 104 and fills there
        (at(bars[2], 1), "SELL", D(104), 3),  # the sell limit at 102 trades at the better 104
        (at(bars[2], 2), "BUY", D(95), 1),  # the buy limit at 96 trades at the low, 95
    ]
    statuses = {o.quantity: o.status for o in result.orders}
    assert statuses[4] is OrderStatus.OPEN  # never crossed: still working at the end


async def test_day_orders_expire_at_the_session_close() -> None:
    bars = daily_bars(4)
    low = {
        "side": "BUY",
        "order_type": "LIMIT",
        "price": "1",
        "product_type": "INTRADAY",
        "quantity": 1,
    }
    ioc = {**low, "validity": "IOC"}
    cfg = config({"INFY:0": [low, ioc]}, params={"timeframe": "1d"})
    result, strategy = await backtest(cfg, bars)
    day, immediate = result.orders
    assert immediate.status is OrderStatus.CANCELLED and immediate.updated_at == bars[1].start
    # Placed at day 1's open, it could trade all day 1; at day 2's open it has expired.
    assert day.status is OrderStatus.EXPIRED and day.updated_at == bars[2].start
    assert [u.status for u in strategy.updates if u.order_id == day.order_id] == [
        OrderStatus.OPEN,
        OrderStatus.EXPIRED,
    ]


async def test_the_path_visits_the_low_first_when_it_is_nearer() -> None:
    bars = bars_from(
        [(100, 101, 99, 100), (100, 101, 99, 100), (100, 110, 97, 105), (105, 106, 104, 105)]
    )
    limit_buy = {
        "side": "BUY",
        "order_type": "LIMIT",
        "price": "98",
        "product_type": "INTRADAY",
        "quantity": 1,
    }
    limit_sell = {
        "side": "SELL",
        "order_type": "LIMIT",
        "price": "109",
        "product_type": "INTRADAY",
        "quantity": 1,
    }
    result, _ = await backtest(config({"INFY:1": [limit_sell, limit_buy]}), bars)
    got = [(f.timestamp, f.side.value, f.price) for f in result.fills]
    assert got == [(at(bars[2], 1), "BUY", D(97)), (at(bars[2], 2), "SELL", D(110))]


async def test_partial_fills_take_a_share_of_each_points_volume() -> None:
    bars = bars_from(ROWS, volume=400)  # 100 a point; a quarter of it, 25, per order
    cfg = config({"INFY:1": [market(quantity=60)]}, partial_fills=True, participation="0.25")
    result, strategy = await backtest(cfg, bars)
    got = [(f.timestamp, f.price, f.quantity) for f in result.fills]
    assert got == [
        (bars[2].start, D(100), 25),
        (at(bars[2], 1), D(104), 25),
        (at(bars[2], 2), D(95), 10),
    ]
    statuses = [u.status for u in strategy.updates]
    assert statuses == [
        OrderStatus.OPEN,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
    ]
    [order] = result.orders
    assert order.average_price == D("100.8333")  # (100 x 25 + 104 x 25 + 95 x 10) / 60, as reported


async def test_slippage_and_spread_move_market_fills_against_the_order() -> None:
    bars = bars_from(ROWS)
    cfg = config(
        {"INFY:1": [market()], "INFY:3": [market("SELL")]}, slippage_bps="10", half_spread_ticks=2
    )
    result, _ = await backtest(cfg, bars)
    buy, sell = result.fills
    # ask = 100 + 2 ticks = 100.10, plus 10 bps = 100.2001 -> up to the tick: 100.25
    assert buy.price == D("100.25")
    # bid = 102 - 0.10 = 101.90, less 10 bps = 101.7981 -> down to the tick: 101.75
    assert sell.price == D("101.75")


async def test_charges_are_the_paper_brokers() -> None:
    bars = bars_from(ROWS)
    orders = {
        "INFY:0": [market(quantity=7), market(quantity=3, product_type="DELIVERY")],
        "INFY:2": [market("SELL", 7), market("SELL", 3, product_type="DELIVERY")],
    }
    result, _ = await backtest({**config(orders), "charges": True}, bars)
    instrument = resolve_instrument("INFY", Exchange.NSE)
    assert len(result.fills) == 4
    for fill in result.fills:
        expected = charges_for_fill(
            instrument, fill.product_type, fill.side, fill.quantity, fill.price
        )
        assert fill.charges == expected.total > 0
        assert result.charges_detail[fill.trade_id]["total"] == str(expected.total)
    assert result.total_charges == sum(f.charges for f in result.fills)
    realised = sum(
        (f.price * f.quantity * (1 if f.side.value == "SELL" else -1) for f in result.fills), D(0)
    )
    assert result.final_equity == result.initial_capital + realised - result.total_charges
    assert result.metrics is not None and result.metrics.total_charges == result.total_charges


async def test_crypto_limits_resting_on_the_book_pay_the_maker_fee() -> None:
    bars = bars_from(ROWS, symbol="BTCUSDT", exchange=Exchange.CRYPTO)
    orders = {
        "BTCUSDT:1": [
            {"side": "BUY", "order_type": "MARKET", "product_type": "DELIVERY", "quantity": 1},
            {
                "side": "BUY",
                "order_type": "LIMIT",
                "price": "96",
                "product_type": "DELIVERY",
                "quantity": 1,
            },
        ]
    }
    rates = {"crypto_taker_fee": "0.002", "crypto_maker_fee": "0.0005"}
    cfg = {
        **config(orders, params={"instruments": ["CRYPTO:BTCUSDT"]}),
        "charges": True,
        "charge_rates": rates,
    }
    result, _ = await backtest(cfg, bars)
    taker, maker = result.fills
    assert taker.charges == D("0.20")  # 100 x 0.2%
    assert maker.charges == D("0.05")  # 95 x 0.05%, rounded to the paisa
    expected = charges_for_fill(
        resolve_instrument("BTCUSDT", Exchange.CRYPTO),
        ProductType.DELIVERY,
        maker.side,
        1,
        maker.price,
        ChargeRates.from_overrides(rates),
        is_maker=True,
    )
    assert maker.charges == expected.total


async def test_same_config_and_data_give_the_same_result() -> None:
    bars = daily_bars(300, seed=3)
    cfg = {
        "strategy": "sma_crossover",
        "params": {
            "symbol": "INFY",
            "timeframe": "1d",
            "fast_period": 5,
            "slow_period": 20,
            "quantity": 50,
            "allow_short": True,
        },
        "partial_fills": True,
        "slippage_bps": "3",
        "half_spread_ticks": 1,
        "seed": 9,
    }

    def stable(result: BacktestResult) -> dict[str, Any]:
        data = result.to_dict(max_points=10_000)
        data.pop("elapsed_seconds")
        data.pop("bars_per_second")
        return data

    first = await Backtest(cfg, InMemorySource(bars)).run()
    second = await Backtest(cfg, InMemorySource(list(bars))).run()
    assert len(first.fills) > 10
    assert stable(first) == stable(second)
    assert first.equity_values == second.equity_values


async def test_the_lean_loop_and_the_general_loop_agree() -> None:
    bars = daily_bars(300, seed=4)
    cfg = {
        "strategy": "sma_crossover",
        "params": {
            "symbol": "INFY",
            "timeframe": "1d",
            "fast_period": 5,
            "slow_period": 20,
            "quantity": 500,
        },
        "partial_fills": True,
    }
    lean = await Backtest(cfg, InMemorySource(bars)).run()
    general = Backtest(cfg, InMemorySource(bars))
    general.lean = False
    other = await general.run()
    assert len(lean.fills) > 10
    assert lean.fills == other.fills
    assert lean.equity_values == other.equity_values
    assert lean.equity_times == other.equity_times
    assert lean.metrics == other.metrics


async def test_the_lazy_curve_equals_the_explicit_one_within_days() -> None:
    # 15-minute bars around the clock: several points a day, so the daily closes the
    # metrics use come from the middle of the curve.
    daily = daily_bars(300, seed=6)
    rows = [(b.open, b.high, b.low, b.close) for b in daily]
    bars = bars_from(rows)
    cfg = {
        "strategy": "sma_crossover",
        "params": {"symbol": "INFY", "timeframe": "15m", "fast_period": 4, "slow_period": 9},
        "charges": True,
    }
    lean = Backtest(cfg, InMemorySource(bars))
    lazy = await lean.run()
    general = Backtest(cfg, InMemorySource(bars))
    general.lean = False
    explicit = await general.run()
    assert lazy.curve.lazy and not explicit.curve.lazy
    assert len(lazy.fills) > 10 and lazy.fills == explicit.fills
    assert lazy.equity_times == explicit.equity_times
    assert lazy.equity_values == explicit.equity_values
    assert lazy.daily_equity() == explicit.daily_equity() and len(lazy.daily_equity()) == 4
    assert lazy.metrics == explicit.metrics
    assert lazy.equity_curve(7) == explicit.equity_curve(7)
    assert lazy.final_equity == explicit.final_equity == lazy.equity_values[-1]


async def test_several_instruments_replay_in_time_order() -> None:
    infy = bars_from(ROWS)
    tcs = bars_from(
        [(r[0] + 1000, r[1] + 1000, r[2] + 1000, r[3] + 1000) for r in ROWS], symbol="TCS"
    )
    late = bars_from([(50, 51, 49, 50)] * 3, symbol="SBIN", start=infy[1].start)
    params = {"instruments": ["NSE:INFY", "NSE:TCS", "NSE:SBIN"]}
    orders = {"TCS:1": [market()], "INFY:1": [market()]}
    cfg = {**config(orders, params=params), "symbols": ["NSE:INFY", "NSE:TCS", "NSE:SBIN"]}
    result, strategy = await backtest(cfg, [*late, *tcs, *infy])
    order = [(s.bar.start, s.bar.symbol) for s in strategy.seen]
    assert order == sorted(order, key=lambda e: (e[0], ["INFY", "TCS", "SBIN"].index(e[1])))
    assert len(order) == 13
    # At each time every instrument's open is published before any bar is delivered.
    second = next(s for s in strategy.seen if s.bar == infy[1])
    assert second.quotes == {"INFY": infy[2].open, "TCS": tcs[2].open, "SBIN": late[1].open}
    fills = [(f.symbol, f.timestamp, f.price) for f in result.fills]
    assert fills == [("INFY", infy[2].start, D(100)), ("TCS", tcs[2].start, D(1100))]
    assert result.instruments == ["NSE:INFY", "NSE:TCS", "NSE:SBIN"]
    assert len(result.equity_times) == 1 + 5  # the opening point, then one per time


async def test_tick_watchers_see_every_point_of_the_path() -> None:
    bars = bars_from(ROWS[:2])
    _, strategy = await backtest(config(params={"ticks": True}), bars)
    prices = [t.ltp for t in strategy.ticks]
    assert prices == [D(100), D(101), D(99), D(100), D(100), D(102), D(98), D(101)]
    assert [t.timestamp for t in strategy.ticks[:4]] == [at(bars[0], k) for k in range(4)]


async def test_a_failing_strategy_returns_what_happened_until_then() -> None:
    bars = bars_from(ROWS)
    engine = Backtest(
        config({"INFY:0": [market()]}, params={"fail_on": 2}),
        InMemorySource(bars),
        registry=registry(),
    )
    result = await engine.run()
    assert result.error == "RuntimeError: scripted failure"
    assert not result.completed
    assert len(result.fills) == 1
    assert [e.kind for e in result.log][-1] == "error"
    assert result.bars_processed == 3


async def test_context_limits() -> None:
    bars = bars_from(ROWS[:2])
    engine = Backtest(config(), InMemorySource(bars), registry=registry())
    await engine.run()
    ctx = engine.ctx
    assert await ctx.bars("INFY", "NSE", "1d", 10) == []  # not the replayed timeframe
    with pytest.raises(DomainError) as chain:
        await ctx.option_chain("NIFTY")
    assert chain.value.code is ErrorCode.VALIDATION_ERROR
    with pytest.raises(DomainError) as other:
        await ctx.quote("TCS", "NSE")
    assert other.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
    with pytest.raises(DomainError) as missing:
        await ctx.cancel_order("PAPER-99")
    assert missing.value.code is ErrorCode.ORDER_NOT_FOUND


async def test_orders_the_paper_broker_refuses_raise_in_the_strategy() -> None:
    bars = bars_from(ROWS)
    orders = {
        "INFY:1": [market(quantity=10**6), market(quantity=2, product_type="DELIVERY", side="SELL")]
    }
    result, strategy = await backtest({**config(orders), "initial_capital": "1000"}, bars)
    assert [e.code for e in strategy.refused] == [
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.INVALID_ORDER,
    ]
    assert result.fills == [] and result.orders == []


@pytest.mark.parametrize(
    ("cfg", "code"),
    [
        ({"strategy": "nope"}, ErrorCode.VALIDATION_ERROR),
        ({"strategy": "sma_crossover", "params": {"fast_period": 50}}, ErrorCode.VALIDATION_ERROR),
        (
            {"strategy": "sma_crossover", "start": "2025-02-01", "end": "2025-01-01"},
            ErrorCode.VALIDATION_ERROR,
        ),
        ({"strategy": "sma_crossover", "slippage_bps": "-1"}, ErrorCode.VALIDATION_ERROR),
        (
            {"strategy": "sma_crossover", "charge_rates": {"stt_everything": "1"}},
            ErrorCode.VALIDATION_ERROR,
        ),
        ({"strategy": "sma_crossover", "symbols": ["MOON:INFY"]}, ErrorCode.VALIDATION_ERROR),
        ({"strategy": "sma_crossover", "initial_capital": "0"}, ErrorCode.VALIDATION_ERROR),
        (
            {"strategy": "sma_crossover", "broker_settings": {"intraday_leverage": "0.5"}},
            ErrorCode.VALIDATION_ERROR,
        ),
        ({"strategy": "sma_crossover", "surprise": True}, ErrorCode.VALIDATION_ERROR),
    ],
)
def test_a_bad_config_is_a_clear_error(cfg: dict[str, Any], code: ErrorCode) -> None:
    with pytest.raises(DomainError) as caught:
        Backtest(cfg, InMemorySource([]))
    assert caught.value.code is code
    assert caught.value.message


@pytest.mark.parametrize(
    ("cfg", "code", "words"),
    [
        (
            {"strategy": "sma_crossover", "params": {"symbol": "TCS", "timeframe": "15m"}},
            ErrorCode.INSTRUMENT_NOT_FOUND,
            "no NSE:TCS bars",
        ),
        (
            {"strategy": "sma_crossover", "params": {"timeframe": "15m"}, "timeframe": "1h"},
            ErrorCode.INSTRUMENT_NOT_FOUND,
            "no NSE:INFY bars",
        ),
        (
            {
                "strategy": "sma_crossover",
                "params": {"timeframe": "1h"},
                "symbols": ["INFY"],
                "timeframe": "15m",
            },
            ErrorCode.VALIDATION_ERROR,
            "wants 1h bars",
        ),
        (
            {
                "strategy": "sma_crossover",
                "params": {"symbol": "TCS", "timeframe": "15m"},
                "symbols": ["INFY"],
            },
            ErrorCode.VALIDATION_ERROR,
            "subscribes to NSE:TCS",
        ),
    ],
)
async def test_data_that_does_not_fit_is_a_clear_error(
    cfg: dict[str, Any], code: ErrorCode, words: str
) -> None:
    with pytest.raises(DomainError) as caught:
        await Backtest(cfg, InMemorySource(bars_from(ROWS))).run()
    assert caught.value.code is code
    assert words in caught.value.message


async def test_bars_out_of_order_are_refused() -> None:
    bars = bars_from(ROWS)
    shuffled = {("INFY", Exchange.NSE): [bars[0], bars[2], bars[1], bars[3]]}
    cfg = {"strategy": "sma_crossover", "params": {"timeframe": "15m"}}
    for lean in (True, False):
        engine = Backtest(cfg, InMemorySource(shuffled))
        engine.lean = lean
        with pytest.raises(DomainError) as caught:
            await engine.run()
        assert caught.value.code is ErrorCode.VALIDATION_ERROR
        assert "out of order or overlapping" in caught.value.message


def test_parse_config_lists_every_bad_field() -> None:
    with pytest.raises(DomainError) as caught:
        parse_config({"strategy": "", "half_spread_ticks": -1})
    fields = {tuple(e["loc"]) for e in caught.value.details["errors"]}  # type: ignore[union-attr]
    assert fields == {("strategy",), ("half_spread_ticks",)}
