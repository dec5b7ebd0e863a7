"""Built-in equity strategies (mean_reversion, momentum) on crafted price series."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.strategies.builtin_harness import D, make_bars, run
from trading_backend.domain import ProductType
from trading_backend.strategies.builtin.mean_reversion import MeanReversion
from trading_backend.strategies.builtin.momentum import Momentum

MR = {"symbol": "TCS", "lookback": 5, "entry_z": 1.5}


def reasons(result, role: str) -> list[str]:
    return [d["reason"] for d in result.logs_of("signal") if d.get("role") == role]


# --- mean reversion -------------------------------------------------------------------
# Window [100, 100, 100, 100, 90]: mean 98, population std 4, so z = -2.


def test_mean_reversion_enters_below_and_exits_at_the_mean() -> None:
    bars = make_bars("TCS", [100, 100, 100, 100, 90, 95, 97, 97])
    result = run(MeanReversion, MR, {"TCS": bars})
    # step 5: 95 is still below the mean 97; step 6: 97 >= mean 96.4 -> exit.
    assert result.trades == [(4, "BUY", "TCS", 1, D(90)), (6, "SELL", "TCS", 1, D(97))]
    assert reasons(result, "exit") == ["mean_reached"]
    assert result.order("O1").product_type is ProductType.INTRADAY
    assert result.state["side"] is None


def test_mean_reversion_shorts_only_when_allowed() -> None:
    bars = make_bars("TCS", [100, 100, 100, 100, 110, 104, 100])
    assert run(MeanReversion, MR, {"TCS": bars}).trades == []
    result = run(MeanReversion, {**MR, "allow_short": True, "quantity": 5}, {"TCS": bars})
    assert result.trades == [(4, "SELL", "TCS", 5, D(110)), (6, "BUY", "TCS", 5, D(100))]


def test_mean_reversion_stop_loss() -> None:
    # Long at 90 with a 2% stop: 88 <= 88.2 even though z is still negative.
    bars = make_bars("TCS", [100, 100, 100, 100, 90, 88, 100])
    result = run(MeanReversion, MR, {"TCS": bars})
    assert result.trades == [(4, "BUY", "TCS", 1, D(90)), (5, "SELL", "TCS", 1, D(88))]
    assert reasons(result, "exit") == ["stop_loss"]


def test_mean_reversion_max_holding_bars() -> None:
    bars = make_bars("TCS", [100, 100, 100, 100, 90, "89.5", "89.5", "89.5"])
    result = run(MeanReversion, {**MR, "max_holding_bars": 2}, {"TCS": bars})
    assert result.trades == [
        (4, "BUY", "TCS", 1, D(90)),
        (6, "SELL", "TCS", 1, D("89.5")),
    ]
    assert reasons(result, "exit") == ["max_holding"]


def test_mean_reversion_bollinger_waits_for_the_close_back_inside_the_band() -> None:
    # Step 4 closes below the lower band (92); step 5 closes back inside (95 >= 91).
    bars = make_bars("TCS", [100, 100, 100, 100, 90, 95, 98])
    result = run(MeanReversion, {**MR, "mode": "bollinger"}, {"TCS": bars})
    assert result.trades == [(5, "BUY", "TCS", 1, D(95)), (6, "SELL", "TCS", 1, D(98))]


@pytest.mark.parametrize("restart_at", [3, 4, 5, 6])
def test_mean_reversion_state_survives_a_restart(restart_at: int) -> None:
    closes = [100, 100, 100, 100, 90, "89.5", "89.5", 100, 100, 100, 100, 90, 95, 97]
    bars = make_bars("TCS", closes)
    params = {**MR, "max_holding_bars": 2}
    straight = run(MeanReversion, params, {"TCS": bars})
    resumed = run(MeanReversion, params, {"TCS": bars}, restart_at=restart_at)
    assert len(straight.trades) == 4
    assert resumed.trades == straight.trades


@pytest.mark.parametrize(
    "bad",
    [
        {"lookback": 1},
        {"entry_z": 0},
        {"stop_loss_pct": 0},
        {"stop_loss_pct": 100},
        {"quantity": 0},
        {"max_holding_bars": 0},
        {"mode": "rsi"},
        {"symbol": ""},
        {"unknown": 1},
    ],
)
def test_mean_reversion_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        MeanReversion.Params(**bad)


# --- momentum -------------------------------------------------------------------------
# Bars from (open, high, low, close) with high = close + 1, low = close - 1, so each true
# range is 2 while closes move by at most 1: ATR(2) = 2 and the stop sits 1.5 * 2 = 3 away.

MOM = {
    "symbol": "INFY",
    "timeframe": "5m",
    "fast_period": 2,
    "slow_period": 3,
    "atr_period": 2,
    "atr_multiplier": 1.5,
}


def ohlc(closes: list[float]) -> list[tuple[float, float, float, float]]:
    rows, previous = [], closes[0]
    for close in closes:
        rows.append((previous, close + 1, close - 1, close))
        previous = close
    return rows


def test_momentum_crossover_entry_and_atr_trailing_stop() -> None:
    # SMA2 crosses SMA3 up at step 4 (101); the stop trails 98, 99, 100, 101, 101;
    # step 9 closes at 100 <= 101.
    closes = [100, 100, 100, 100, 101, 102, 103, 104, 103, 100]
    result = run(Momentum, MOM, {"INFY": make_bars("INFY", ohlc(closes))})
    assert result.trades == [(4, "BUY", "INFY", 1, D(101)), (9, "SELL", "INFY", 1, D(100))]
    assert reasons(result, "exit") == ["trailing_stop"]


def test_momentum_exits_on_the_opposite_crossover() -> None:
    closes = [100, 100, 100, 100, 101, 102, 103, 104, 103, 102]
    result = run(Momentum, MOM, {"INFY": make_bars("INFY", ohlc(closes))})
    assert result.trades == [(4, "BUY", "INFY", 1, D(101)), (9, "SELL", "INFY", 1, D(102))]
    assert reasons(result, "exit") == ["reversal"]


def test_momentum_flips_short_when_allowed_and_trails_above() -> None:
    # Short at 102 (step 9) with the stop at 105, trailing down to 104 (101 + 3) at step
    # 10; step 11 closes at 104 >= 104.
    closes = [100, 100, 100, 100, 101, 102, 103, 104, 103, 102, 101, 104]
    bars = make_bars("INFY", ohlc(closes))
    result = run(Momentum, {**MOM, "allow_short": True}, {"INFY": bars})
    assert result.trades == [
        (4, "BUY", "INFY", 1, D(101)),
        (9, "SELL", "INFY", 1, D(102)),
        (9, "SELL", "INFY", 1, D(102)),
        (11, "BUY", "INFY", 1, D(104)),
    ]
    assert reasons(result, "exit") == ["reversal", "trailing_stop"]


def test_momentum_breakout() -> None:
    # Step 4 closes at 102 above the 3-bar high 101: ATR(2) = (2 + 3) / 2 = 2.5, stop
    # 102 - 3.75 = 98.25, then 99.25 after step 5; step 6 closes at 99.
    bars = make_bars(
        "INFY",
        [
            (100, 101, 99, 100),
            (100, 101, 99, 100),
            (100, 101, 99, 100),
            (100, 101, 99, 100),
            (100, 103, 101, 102),
            (102, 104, 102, 103),
            (103, 103, 98, 99),
        ],
    )
    params = {**MOM, "mode": "breakout", "breakout_period": 3}
    result = run(Momentum, params, {"INFY": bars})
    assert result.trades == [(4, "BUY", "INFY", 1, D(102)), (6, "SELL", "INFY", 1, D(99))]
    assert result.state["side"] is None


@pytest.mark.parametrize("restart_at", [4, 6, 9, 10])
def test_momentum_state_survives_a_restart(restart_at: int) -> None:
    closes = [100, 100, 100, 100, 101, 102, 103, 104, 103, 102, 101, 104]
    bars = make_bars("INFY", ohlc(closes))
    params = {**MOM, "allow_short": True}
    straight = run(Momentum, params, {"INFY": bars})
    assert run(Momentum, params, {"INFY": bars}, restart_at=restart_at).trades == straight.trades


def test_momentum_ema_mode_trades_the_same_simple_cross() -> None:
    closes = [100, 100, 100, 100, 101, 102, 103, 104, 103, 100]
    result = run(Momentum, {**MOM, "ma_type": "ema"}, {"INFY": make_bars("INFY", ohlc(closes))})
    assert result.trades[0] == (4, "BUY", "INFY", 1, D(101))


@pytest.mark.parametrize(
    "bad",
    [
        {"fast_period": 21, "slow_period": 21},
        {"fast_period": 30},
        {"atr_multiplier": 0},
        {"atr_period": 0},
        {"mode": "rsi"},
        {"quantity": -1},
    ],
)
def test_momentum_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Momentum.Params(**bad)
