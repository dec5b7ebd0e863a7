"""The built-in catalogue, the shared indicators and order bookkeeping."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest

from tests.strategies.builtin_harness import D, FakeContext, FakeMarket
from trading_backend.domain import Exchange, Order, OrderSide, OrderStatus, OrderType, ProductType
from trading_backend.strategies.base import BaseStrategy, StrategyParams
from trading_backend.strategies.builtin import BUILTINS, indicators
from trading_backend.strategies.builtin._common import observe, track

REQUIRED = {
    "futures_arbitrage": {
        "future_symbol": "RELIANCE25DECFUT",
        "expiry": date(2025, 12, 31),
        "lot_size": 250,
    },
    "grid": {"lower": 80000, "upper": 100000},
}


def test_catalogue() -> None:
    names = [cls.name for cls in BUILTINS]
    assert names == [
        "mean_reversion",
        "momentum",
        "options_selling",
        "futures_arbitrage",
        "grid",
        "dca",
        "sma_crossover",
    ]
    for cls in BUILTINS:
        assert issubclass(cls, BaseStrategy)
        assert cls.description
        assert cls.category in ("equity", "derivatives", "crypto")
        assert issubclass(cls.Params, StrategyParams) and cls.Params is not StrategyParams
        assert cls.Params.model_json_schema()["properties"]


@pytest.mark.parametrize("cls", BUILTINS, ids=lambda c: c.name)
async def test_defaults_build_and_subscribe(cls: type[BaseStrategy]) -> None:
    params = cls.Params(**REQUIRED.get(cls.name, {}))
    strategy = cls(FakeContext(FakeMarket([])), params)
    await strategy.on_start()
    subscriptions = list(strategy.subscriptions())
    assert subscriptions
    # Parameters round-trip through JSON, as the API stores them.
    assert cls.Params.model_validate_json(params.model_dump_json()) == params


def test_indicators_by_hand() -> None:
    values = [1, 2, 3, 4, 5]
    assert np.allclose(indicators.sma(values, 3)[2:], [2, 3, 4])
    assert math.isnan(indicators.sma(values, 3)[1])
    ema = indicators.ema(values, 3)  # alpha 0.5, seeded with SMA 2
    assert np.allclose(ema[2:], [2, 3, 4])
    assert np.allclose(indicators.stddev([100, 100, 100, 100, 90], 5)[-1], 4)
    assert np.allclose(indicators.zscore([100, 100, 100, 100, 90], 5)[-1], -2)
    assert indicators.zscore([5, 5, 5], 3)[-1] == 0  # flat: no division by zero
    lower, middle, upper = indicators.bollinger([100, 100, 100, 100, 90], 5, 2)
    assert (lower[-1], middle[-1], upper[-1]) == (90, 98, 106)
    tr = indicators.true_range([11, 13, 12], [9, 11, 8], [10, 12, 9])
    assert list(tr) == [2, 3, 4]
    assert np.allclose(indicators.atr([11, 13, 12], [9, 11, 8], [10, 12, 9], 2)[-1], 3.5)
    with pytest.raises(ValueError):
        indicators.sma(values, 0)
    assert np.allclose(indicators.sma([D("1.5"), D("2.5")], 2)[-1], 2)


def order(filled: int, price: str, status: OrderStatus) -> Order:
    return Order(
        "O1",
        "u",
        "c",
        "TCS",
        Exchange.NSE,
        OrderSide.BUY,
        OrderType.MARKET,
        ProductType.INTRADAY,
        10,
        status=status,
        filled_quantity=filled,
        average_price=D(price),
    )


def test_fills_are_counted_once_by_delta() -> None:
    state: dict = {}
    track(state, order(0, "0", OrderStatus.OPEN), role="entry")
    first = observe(state, order(4, "100", OrderStatus.PARTIALLY_FILLED))
    assert (first.fill_quantity, first.fill_value, first.final) == (4, D(400), False)
    again = observe(state, order(4, "100", OrderStatus.PARTIALLY_FILLED))
    assert again.fill_quantity == 0
    last = observe(state, order(10, "103", OrderStatus.FILLED))
    assert (last.fill_quantity, last.fill_value, last.fill_price, last.final) == (
        6,
        D(630),
        D(105),
        True,
    )
    assert last.meta == {"role": "entry"}
    assert observe(state, order(10, "103", OrderStatus.FILLED)) is None  # forgotten
