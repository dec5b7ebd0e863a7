"""The sma_crossover built-in on a crafted series (fast 2, slow 4).

    step   3    4     5     6    7    8    9    10   11    12   13
    close  10   12    13    9    8    8    12   14   15    11   9
    fast   10   11    12.5  11   8.5  8    10   13   14.5  13   10
    slow   10   10.5  11.25 11   10.5 9.5  9.25 10.5 12.25 13   12.25
    sign   0s   +     +     0    -    -    +    +    +     0    -
    cross                        dn        up                    dn

``0s``: the first comparison seeds the remembered sign with 0, so step 4 (0 -> +) is not
a cross (backtrader's rule); step 6 is a tie, which keeps the remembered + and makes
step 7 a cross down. The harness fills market orders at the step's close.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from tests.strategies.builtin_harness import D, make_bars, run
from trading_backend.domain import BrokerOrder
from trading_backend.strategies.builtin import BUILTINS
from trading_backend.strategies.builtin.sma_crossover import SmaCrossover, SmaCrossoverParams

CLOSES = [10, 10, 10, 10, 12, 13, 9, 8, 8, 12, 14, 15, 11, 9]
PARAMS = {"symbol": "TCS", "fast_period": 2, "slow_period": 4, "timeframe": "5m"}


def test_long_only_enters_on_the_cross_up_and_exits_on_the_cross_down() -> None:
    result = run(SmaCrossover, PARAMS, {"TCS": make_bars("TCS", CLOSES)})
    assert result.trades == [(9, "BUY", "TCS", 1, D(12)), (13, "SELL", "TCS", 1, D(9))]
    assert result.state["position"] == 0 and result.state["pending"] is None
    reasons = [d["reason"] for d in result.logs_of("signal")]
    assert reasons == ["cross_up", "cross_down"]


def test_allow_short_reverses_with_one_order() -> None:
    params = {**PARAMS, "allow_short": True, "quantity": 5}
    result = run(SmaCrossover, params, {"TCS": make_bars("TCS", CLOSES)})
    assert result.trades == [
        (7, "SELL", "TCS", 5, D(8)),
        (9, "BUY", "TCS", 10, D(12)),
        (13, "SELL", "TCS", 10, D(9)),
    ]
    assert result.state["position"] == -5


def test_the_indicator_is_exact_and_incremental() -> None:
    strategy = SmaCrossover(None, SmaCrossoverParams(**PARAMS))  # type: ignore[arg-type]
    crosses = [strategy.update(Decimal(c)) for c in CLOSES]
    assert crosses == [0, 0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, -1]
    # The window holds slow_period closes, whatever the length of the series.
    assert len(strategy._closes) == 4
    assert strategy._fast_sum == Decimal(20) and strategy._slow_sum == Decimal(49)
    # Decimal sums stay exact where floats drift (0.1 + 0.2 ...).
    tiny = SmaCrossover(None, SmaCrossoverParams(**{**PARAMS, "fast_period": 1}))  # type: ignore[arg-type]
    for value in ["0.1", "0.2", "0.3", "0.1", "0.2", "0.3"]:
        tiny.update(Decimal(value))
    assert tiny._slow_sum == Decimal("0.9")


def test_no_signal_while_an_order_is_working() -> None:
    # The broker refuses the entry: the position stays flat, and the next cross is acted on.
    calls: list[BrokerOrder] = []

    def refuse_first(order: BrokerOrder) -> str | None:
        calls.append(order)
        return "raise" if len(calls) == 1 else None

    params = {**PARAMS, "allow_short": True}
    result = run(SmaCrossover, params, {"TCS": make_bars("TCS", CLOSES)}, fail=refuse_first)
    assert result.trades == [(9, "BUY", "TCS", 1, D(12)), (13, "SELL", "TCS", 2, D(9))]
    assert [d["event"] for d in result.logs_of("error")] == ["order_refused"]


@pytest.mark.parametrize("restart_at", [10, 12])
def test_a_restart_keeps_the_position(restart_at: int) -> None:
    # Restarted while long: the position survives in the state; the averages are rebuilt
    # from the bars after the restart, and the next cross down closes the long.
    closes = [*CLOSES, 10, 10, 10, 10, 12, 13, 9, 8]
    resumed = run(SmaCrossover, PARAMS, {"TCS": make_bars("TCS", closes)}, restart_at=restart_at)
    assert resumed.trades[0] == (9, "BUY", "TCS", 1, D(12))
    assert [t[1] for t in resumed.trades] == ["BUY", "SELL"]
    assert resumed.trades[1][0] > restart_at + 3  # after slow_period new bars
    assert resumed.state["position"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"fast_period": 30, "slow_period": 30},
        {"fast_period": 0},
        {"slow_period": 1},
        {"quantity": 0},
        {"exchange": "MOON"},
        {"timeframe": "2m"},
        {"surprise": 1},
    ],
)
def test_bad_params_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SmaCrossoverParams(**{**PARAMS, **bad})


def test_registered_as_a_builtin() -> None:
    assert SmaCrossover in BUILTINS
    assert SmaCrossover.name == "sma_crossover"
    assert SmaCrossoverParams(symbol=" infy ").symbol == "INFY"
