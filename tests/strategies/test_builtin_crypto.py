"""Built-in crypto strategies (grid, dca). Quantities are whole coins."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.strategies.builtin_harness import D, make_bars, run
from trading_backend.domain import Exchange, OrderStatus, Timeframe
from trading_backend.strategies.builtin.dca import Dca
from trading_backend.strategies.builtin.grid import Grid


def btc(rows: list[object], timeframe: Timeframe = Timeframe.M1) -> dict:
    return {"BTCUSDT": make_bars("BTCUSDT", rows, exchange=Exchange.CRYPTO, timeframe=timeframe)}


# --- grid -----------------------------------------------------------------------------
# Levels 100, 110, 120, 130, 140; the first close 121 leaves 120 (the nearest) empty.

GRID = {"lower": 100, "upper": 140, "levels": 5, "stop_outside_pct": 5}
START = (121, 121, 121, 121)


def working(result) -> list[tuple[str, str, object]]:
    return sorted((o.order_id, o.side.value, o.price) for o in result.working_orders())


def test_grid_arms_below_and_above_the_price() -> None:
    result = run(Grid, GRID, btc([START]))
    assert result.trades == []
    assert working(result) == [
        ("O1", "BUY", D(100)),
        ("O2", "BUY", D(110)),
        ("O3", "SELL", D(130)),
        ("O4", "SELL", D(140)),
    ]


def test_grid_rearms_one_level_away_on_each_fill() -> None:
    rows = [
        START,
        (121, 122, 109, 115),  # BUY 110 fills -> SELL 120 (O5)
        (115, 121, 114, 118),  # SELL 120 fills -> BUY 110 (O6)
        (118, 131, 117, 129),  # SELL 130 fills -> BUY 120 (O7)
        (129, 129, 119, 125),  # BUY 120 fills -> SELL 130 (O8)
    ]
    result = run(Grid, GRID, btc(rows))
    assert result.trades == [
        (1, "BUY", "BTCUSDT", 1, D(110)),
        (2, "SELL", "BTCUSDT", 1, D(120)),
        (3, "SELL", "BTCUSDT", 1, D(130)),
        (4, "BUY", "BTCUSDT", 1, D(120)),
    ]
    assert working(result) == [
        ("O1", "BUY", D(100)),
        ("O4", "SELL", D(140)),
        ("O6", "BUY", D(110)),
        ("O8", "SELL", D(130)),
    ]
    assert result.state["fills"] == 4


def test_grid_halts_when_the_price_closes_beyond_the_margin() -> None:
    rows = [
        START,
        (121, 131, 120, 129),  # SELL 130 fills -> BUY 120 (O5)
        (129, 146, 128, 145),  # SELL 140 fills -> BUY 130 (O6); 145 is within 5% of 140
        (145, 150, 144, 148),  # 148 > 147: cancel everything, halt
        (148, 148, 90, 95),  # nothing trades any more
    ]
    result = run(Grid, {**GRID, "quantity_per_level": 3}, btc(rows))
    assert result.trades == [
        (1, "SELL", "BTCUSDT", 3, D(130)),
        (2, "SELL", "BTCUSDT", 3, D(140)),
    ]
    assert sorted(result.cancels) == [(3, "O1"), (3, "O2"), (3, "O5"), (3, "O6")]
    assert result.working_orders() == []
    assert result.state["halted"] is True
    assert all(result.order(i).status is OrderStatus.CANCELLED for i in ("O1", "O2", "O5", "O6"))


def test_grid_halts_below_the_lower_bound_too() -> None:
    result = run(Grid, GRID, btc([START, (121, 121, 94, 94)]))
    # Both buys fill on the way down (step 1), then 94 < 95 halts.
    assert result.trades == [(1, "BUY", "BTCUSDT", 1, D(100)), (1, "BUY", "BTCUSDT", 1, D(110))]
    assert result.state["halted"] is True
    assert result.working_orders() == []


def test_grid_geometric_levels() -> None:
    strategy = Grid.__new__(Grid)
    strategy.p = Grid.Params(lower=100, upper=1600, levels=5, spacing="geometric")
    assert strategy.level_prices() == [D(100), D(200), D(400), D(800), D(1600)]
    result = run(
        Grid,
        {"lower": 100, "upper": 400, "levels": 3, "spacing": "geometric"},
        btc([(190, 190, 190, 190)]),
    )
    assert working(result) == [("O1", "BUY", D(100)), ("O2", "SELL", D(400))]


@pytest.mark.parametrize("restart_at", [1, 2, 3, 4])
def test_grid_state_survives_a_restart(restart_at: int) -> None:
    rows = [
        START,
        (121, 122, 109, 115),
        (115, 121, 114, 118),
        (118, 131, 117, 129),
        (129, 129, 119, 125),
        (125, 160, 125, 150),
    ]
    straight = run(Grid, GRID, btc(rows))
    resumed = run(Grid, GRID, btc(rows), restart_at=restart_at)
    assert resumed.trades == straight.trades
    assert resumed.cancels == straight.cancels


@pytest.mark.parametrize(
    "bad",
    [
        {"lower": 140, "upper": 100},
        {"lower": 100, "upper": 100},
        {"lower": 0, "upper": 100},
        {"lower": 100, "upper": 140, "levels": 2},
        {"lower": 100, "upper": 140, "quantity_per_level": 0},
        {"lower": 100, "upper": 140, "spacing": "fibonacci"},
        {"lower": 100, "upper": 140, "stop_outside_pct": -1},
        {"upper": 140},
    ],
)
def test_grid_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Grid.Params(**bad)


# --- dca ------------------------------------------------------------------------------
# Hourly bars, a buy every 2 bars of 1000 USDT; dip 10% below the average cost buys 2x.

DCA = {"timeframe": "1h", "interval_bars": 2, "amount": 1000}
SERIES = [500, 480, 440, 450, 470, 532, 520]


def test_dca_schedule_dip_buy_and_take_profit() -> None:
    # step 0: 1000 // 500 = 2 coins, avg 500
    # step 2: 440 <= 450 is a dip: budget 2000 -> 4 coins (240 left), avg 460
    # step 4: budget 1240 -> 2 coins at 470 (300 left), avg 462.5
    # step 5: 532 >= 462.5 * 1.15 = 531.875 -> sell all 8
    # step 6: the schedule goes on: budget 1300 -> 2 coins at 520
    result = run(Dca, DCA, btc(SERIES, Timeframe.H1))
    assert result.trades == [
        (0, "BUY", "BTCUSDT", 2, D(500)),
        (2, "BUY", "BTCUSDT", 4, D(440)),
        (4, "BUY", "BTCUSDT", 2, D(470)),
        (5, "SELL", "BTCUSDT", 8, D(532)),
        (6, "BUY", "BTCUSDT", 2, D(520)),
    ]
    reasons = [d["reason"] for d in result.logs_of("signal")]
    assert reasons == ["scheduled_buy", "dip_buy", "scheduled_buy", "take_profit", "scheduled_buy"]
    assert result.state["holding"] == 2
    assert D(result.state["budget"]) == D(260)
    assert D(result.state["realised"]) == D(8 * 532 - 3700)


def test_dca_saves_until_a_whole_coin_is_affordable() -> None:
    result = run(Dca, {**DCA, "amount": 300}, btc([500] * 7, Timeframe.H1))
    # Budget 300 (step 0), 600 -> 1 coin (step 2), 400 (step 4), 700 -> 1 coin (step 6).
    assert result.trades == [(2, "BUY", "BTCUSDT", 1, D(500)), (6, "BUY", "BTCUSDT", 1, D(500))]
    assert D(result.state["budget"]) == D(200)
    assert [d["event"] for d in result.logs_of("info")] == ["saving", "saving"]


def test_dca_ignores_other_timeframes() -> None:
    assert run(Dca, DCA, btc(SERIES, Timeframe.M1)).trades == []


@pytest.mark.parametrize("restart_at", [1, 2, 3, 5, 6])
def test_dca_state_survives_a_restart(restart_at: int) -> None:
    straight = run(Dca, DCA, btc(SERIES, Timeframe.H1))
    resumed = run(Dca, DCA, btc(SERIES, Timeframe.H1), restart_at=restart_at)
    assert resumed.trades == straight.trades
    assert resumed.state == straight.state


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 0},
        {"interval_bars": 0},
        {"dip_pct": 0},
        {"dip_pct": 100},
        {"dip_multiplier": 0.5},
        {"take_profit_pct": 0},
        {"timeframe": "2h"},
    ],
)
def test_dca_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Dca.Params(**bad)
