"""The example plugin in examples/custom_strategy: it loads both ways the docs describe
(``STRATEGIES_DIR`` and the entry point) and trades exactly as its README says.

The entry-point test does not pip-install anything: it writes the ``.dist-info`` that an
install would write (its ``entry_points.txt`` taken from the example's ``pyproject.toml``)
into a temporary directory on ``sys.path``, which is all ``importlib.metadata`` reads.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.strategies.builtin_harness import T0, D, make_bars, run
from trading_backend.domain import BrokerOrder
from trading_backend.strategies.base import BaseStrategy
from trading_backend.strategies.registry import ENTRY_POINT_GROUP, StrategyRegistry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_strategy"
PACKAGE_DIR = EXAMPLE / "my_strategies"
KIND = "opening_range_breakout"


@pytest.fixture(autouse=True)
def _forget_example_modules() -> Iterator[None]:
    """Both loaders leave modules in ``sys.modules``; drop them so tests stay independent."""
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in ("my_strategies", "trading_backend_user_strategies"):
            del sys.modules[name]


@pytest.fixture
def orb(monkeypatch: pytest.MonkeyPatch) -> type[BaseStrategy]:
    """The strategy class, imported as the installed package would be."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("my_strategies.breakout")
    cls: type[BaseStrategy] = module.OpeningRangeBreakout
    return cls


# --- loading ------------------------------------------------------------------------


def test_loads_from_the_strategies_directory() -> None:
    registry = StrategyRegistry(PACKAGE_DIR, include_builtins=False)
    assert registry.names() == [KIND]  # __init__.py is skipped, breakout.py is loaded
    cls = registry.get(KIND)
    assert cls.__module__ == "trading_backend_user_strategies.breakout"
    [kind] = registry.kinds()
    assert kind["name"] == KIND and kind["category"] == "equity"
    assert "opening range" in kind["description"]
    schema = kind["params_schema"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert set(properties) == {
        "symbol",
        "exchange",
        "timeframe",
        "range_minutes",
        "target_multiple",
        "allow_short",
        "exit_time",
        "quantity",
        "product_type",
    }
    assert properties["range_minutes"]["default"] == 15
    assert properties["target_multiple"]["default"] == 2.0
    assert properties["exit_time"]["default"] == "15:15:00"


def test_loads_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = declared["entry-points"][ENTRY_POINT_GROUP]
    assert entry_points == {KIND: "my_strategies.breakout:OpeningRangeBreakout"}

    dist_info = tmp_path / "my_strategies-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {declared['name']}\nVersion: {declared['version']}\n"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the "site-packages" holding the metadata
    monkeypatch.syspath_prepend(str(EXAMPLE))  # where an install would put the package

    registry = StrategyRegistry()  # no directory: only built-ins and entry points
    cls = registry.get(KIND)
    assert cls.__module__ == "my_strategies.breakout"
    assert cls is importlib.import_module("my_strategies").OpeningRangeBreakout
    assert {"mean_reversion", "dca", KIND} <= set(registry.names())


# --- trading ------------------------------------------------------------------------
# M5 bars from Monday 09:15 IST. With range_minutes=15 the first three bars (09:15, 09:20,
# 09:25) make the range: high 102, low 98, height 4.

RANGE = [(100, 101, 99, 100), (100, 102, 99.5, 101), (101, 101.5, 98, 100)]


def sbin(rows: list[Any], day: int = 0) -> list[Any]:
    return make_bars("SBIN", rows, start=T0 + timedelta(days=day))


def test_long_breakout_to_target_then_done_for_the_day(orb: type[BaseStrategy]) -> None:
    rows = [
        *RANGE,
        (100, 101.8, 100, 101.5),  # 3: inside the range
        (101.5, 103, 101, 102.5),  # 4: closes above 102: BUY at 102.5
        (102.5, 104, 102, 103.5),  # 5: stop 98, target 102 + 1 x 4 = 106: hold
        (103.5, 106.5, 103, 106.2),  # 6: close >= 106: SELL
        (106.2, 110, 106, 109),  # 7: above the range again, but one trade a day
    ]
    result = run(orb, {"target_multiple": 1}, sbin(rows))
    assert result.trades == [(4, "BUY", "SBIN", 1, D("102.5")), (6, "SELL", "SBIN", 1, D("106.2"))]
    assert [(d["action"], d["reason"]) for d in result.logs_of("signal")] == [
        ("BUY", "breakout_up"),
        ("SELL", "target"),
    ]
    assert result.state["side"] is None and result.state["traded"] is True


def test_stop_at_the_range_low_and_no_second_entry(orb: type[BaseStrategy]) -> None:
    rows = [
        *RANGE,
        (100, 103, 100, 102.5),  # 3: BUY 5 at 102.5; stop 98, target 102 + 2 x 4 = 110
        (102.5, 102.5, 97, 97.5),  # 4: close <= 98: SELL
        (97.5, 104, 97, 103),  # 5: a new breakout, ignored
    ]
    result = run(orb, {"quantity": 5}, sbin(rows))
    assert result.trades == [(3, "BUY", "SBIN", 5, D("102.5")), (4, "SELL", "SBIN", 5, D("97.5"))]
    assert result.logs_of("signal")[-1]["reason"] == "stop"


def test_short_breakdown_squared_off_at_exit_time(orb: type[BaseStrategy]) -> None:
    rows = [
        *RANGE,
        (100, 100, 97, 97.5),  # 3 (09:30-09:35): closes below 98: SELL short
        (97.5, 99, 97, 98.5),  # 4: stop 102, target 98 - 2 x 4 = 90: hold
        (98.5, 99, 96, 96.5),  # 5 (09:40-09:45): ends at exit_time: BUY back
        (96.5, 97, 90, 91),  # 6: too late to trade
    ]
    params = {"allow_short": True, "exit_time": "09:45"}
    result = run(orb, params, sbin(rows))
    assert result.trades == [(3, "SELL", "SBIN", 1, D("97.5")), (5, "BUY", "SBIN", 1, D("96.5"))]
    assert result.logs_of("signal")[-1]["reason"] == "time_exit"
    # Without allow_short the same break below the range is no trade.
    assert run(orb, {"exit_time": "09:45"}, sbin(rows)).trades == []


def test_each_session_has_its_own_range_and_an_overnight_position_is_closed(
    orb: type[BaseStrategy],
) -> None:
    monday = sbin([*RANGE, (100, 103, 100, 102.5), (102.5, 104, 102, 103)])  # BUY, then data ends
    tuesday = sbin(
        [
            (110, 111, 109, 110),  # 09:15: the overnight long is sold at once
            (110, 112, 109, 111),
            (111, 111, 108, 110),  # Tuesday's range: 108-112
            (110, 111, 109, 110.5),  # 102 would have been Monday's breakout level: nothing
            (110.5, 113, 110, 112.5),  # closes above 112: BUY
        ],
        day=1,
    )
    result = run(orb, {}, [*monday, *tuesday])
    assert result.trades == [
        (3, "BUY", "SBIN", 1, D("102.5")),
        (5, "SELL", "SBIN", 1, D("110")),
        (9, "BUY", "SBIN", 1, D("112.5")),
    ]
    assert result.logs_of("signal")[1]["reason"] == "overnight"
    assert (result.state["day"], result.state["high"], result.state["low"]) == (
        "2025-12-02",
        "112",
        "108",
    )


def test_a_flat_range_gives_no_trade(orb: type[BaseStrategy]) -> None:
    flat = [(100, 100, 100, 100)] * 3
    assert run(orb, {}, sbin([*flat, (100, 105, 100, 104)])).trades == []


def test_a_refused_entry_is_not_retried_the_same_day(orb: type[BaseStrategy]) -> None:
    def refuse(order: BrokerOrder) -> str:
        return "raise"

    rows = [*RANGE, (100, 103, 100, 102.5), (102.5, 104, 102, 103.5)]
    result = run(orb, {}, sbin(rows), fail=refuse)
    assert result.trades == []
    assert [d["event"] for d in result.logs_of("error")] == ["order_refused"]
    assert result.state["side"] is None and result.state["pending"] is None


@pytest.mark.parametrize("restart_at", range(1, 9))
def test_a_restart_changes_nothing(orb: type[BaseStrategy], restart_at: int) -> None:
    rows = [
        *RANGE,
        (100, 101.8, 100, 101.5),
        (101.5, 103, 101, 102.5),
        (102.5, 104, 102, 103.5),
        (103.5, 106.5, 103, 106.2),
        (106.2, 110, 106, 109),
    ]
    params = {"target_multiple": 1}
    assert (
        run(orb, params, sbin(rows), restart_at=restart_at).trades
        == run(orb, params, sbin(rows)).trades
    )


def test_params_are_checked(orb: type[BaseStrategy]) -> None:
    params = orb.Params
    assert params().model_dump(mode="json")["exit_time"] == "15:15:00"
    for bad in (
        {"range_minutes": 360},  # the range would end after the exit time
        {"exit_time": "09:20"},
        {"exit_time": "15:45"},
        {"quantity": 0},
        {"target_multiple": 0},
        {"stop_pct": 1},  # unknown
    ):
        with pytest.raises(ValidationError):
            params(**bad)
