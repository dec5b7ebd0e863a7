"""Built-in derivatives strategies (options_selling, futures_arbitrage)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from tests.strategies.builtin_harness import T0, D, make_bars, run
from trading_backend.domain import BrokerOrder, Exchange, OrderSide, Timeframe
from trading_backend.strategies.base import OptionQuote
from trading_backend.strategies.builtin.futures_arbitrage import FuturesArbitrage
from trading_backend.strategies.builtin.options_selling import OptionsSelling

# --- options selling ------------------------------------------------------------------
# One-minute bars from 09:15 IST: bar i ends at 09:16 + i, so the 09:20 entry is step 4.

EXPIRY = datetime(2025, 12, 2, 10, 0, tzinfo=UTC)  # 15:30 IST
STRIKES = [25900, 25950, 26000, 26050, 26100]
CALL_DELTAS = [0.70, 0.60, 0.50, 0.35, 0.24]
PUT_DELTAS = [-0.27, -0.38, -0.50, -0.62, -0.73]
OLD_EXPIRY = EXPIRY - timedelta(days=7)  # already expired: must be ignored
FAR_EXPIRY = EXPIRY + timedelta(days=7)  # later expiry: not the nearest


def sym(strike: int, kind: str, expiry: datetime = EXPIRY) -> str:
    return f"NIFTY{expiry:%d%b%y}{strike}{kind}".upper()


def chain() -> list[OptionQuote]:
    rows = []
    for expiry in (OLD_EXPIRY, EXPIRY, FAR_EXPIRY):
        for strike, cd, pd in zip(STRIKES, CALL_DELTAS, PUT_DELTAS, strict=True):
            for kind, delta in (("CE", cd), ("PE", pd)):
                rows.append(
                    OptionQuote(
                        sym(strike, kind, expiry),
                        D(strike),
                        kind,
                        expiry,
                        D(100),
                        D("99.5"),
                        D("100.5"),
                        0.14,
                        delta,
                        0.001,
                        -5.0,
                        10.0,
                        75,
                    )
                )
    return rows


def nfo(symbol: str, closes: list[object], start: datetime = T0) -> list:
    return make_bars(symbol, closes, exchange=Exchange.NFO, timeframe=Timeframe.M1, start=start)


def nifty(n: int, start: datetime = T0) -> list:
    return make_bars("NIFTY", [26010] * n, timeframe=Timeframe.M1, start=start)


OPT = {"underlying": "NIFTY", "exit_time": time(9, 30)}
CE, PE = sym(26000, "CE"), sym(26000, "PE")


def test_short_straddle_leg_stop_then_time_exit() -> None:
    # Sold at step 4: CE 100, PE 90. CE reaches 130 = 100 * 1.3 at step 7 -> bought back.
    # The 09:30 bar (step 14) buys back the PE.
    ce = [100] * 7 + [130] * 10
    pe = [90] * 17
    bars = {"NIFTY": nifty(17), CE: nfo(CE, ce), PE: nfo(PE, pe)}
    result = run(OptionsSelling, OPT, bars, {"NIFTY": chain()})
    assert result.trades == [
        (4, "SELL", CE, 75, D(100)),
        (4, "SELL", PE, 75, D(90)),
        (7, "BUY", CE, 75, D(130)),
        (14, "BUY", PE, 75, D(90)),
    ]
    reasons = [d.get("reason") for d in result.logs_of("signal") if d["action"] == "BUY"]
    assert reasons == ["leg_stop", "time_exit"]


def test_short_straddle_combined_target_and_no_reentry_the_same_day() -> None:
    # Premium 75 * (100 + 90) = 14250; 50% target: the legs must cost <= 7125 to close.
    # Step 7: 75 * (60 + 50) = 8250, not yet; step 8: 75 * (50 + 45) = 7125 -> close both.
    ce = [100] * 7 + [60, 50] + [50] * 8
    pe = [90] * 7 + [50, 45] + [45] * 8
    bars = {"NIFTY": nifty(17), CE: nfo(CE, ce), PE: nfo(PE, pe)}
    result = run(OptionsSelling, {**OPT, "lots": 2}, bars, {"NIFTY": chain()})
    assert result.trades == [
        (4, "SELL", CE, 150, D(100)),
        (4, "SELL", PE, 150, D(90)),
        (8, "BUY", CE, 150, D(50)),
        (8, "BUY", PE, 150, D(45)),
    ]


def test_short_straddle_enters_again_the_next_day() -> None:
    day2 = T0 + timedelta(days=1)
    bars = {
        "NIFTY": nifty(17) + nifty(6, day2),
        CE: nfo(CE, [100] * 17) + nfo(CE, [80] * 6, day2),
        PE: nfo(PE, [90] * 17) + nfo(PE, [70] * 6, day2),
    }
    result = run(OptionsSelling, OPT, bars, {"NIFTY": chain()})
    assert result.trades == [
        (4, "SELL", CE, 75, D(100)),
        (4, "SELL", PE, 75, D(90)),
        (14, "BUY", CE, 75, D(100)),
        (14, "BUY", PE, 75, D(90)),
        (21, "SELL", CE, 75, D(80)),
        (21, "SELL", PE, 75, D(70)),
    ]


def test_strangle_by_strike_offset_with_limit_orders_at_the_bid() -> None:
    ce, pe = sym(26100, "CE"), sym(25900, "PE")
    bars = {"NIFTY": nifty(6), ce: nfo(ce, [40] * 6), pe: nfo(pe, [35] * 6)}
    params = {**OPT, "structure": "strangle", "strike_offset": 2, "order_type": "LIMIT"}
    result = run(OptionsSelling, params, bars, {"NIFTY": chain()})
    # The bid is the live price - 0.5: a marketable SELL LIMIT fills at its price.
    assert result.trades == [(4, "SELL", ce, 75, D("39.5")), (4, "SELL", pe, 75, D("34.5"))]
    assert result.order("O1").price == D("39.5")


def test_strangle_by_delta() -> None:
    # |delta| closest to 0.36: CE 26050 (0.35), PE 25950 (0.38).
    ce, pe = sym(26050, "CE"), sym(25950, "PE")
    bars = {"NIFTY": nifty(6), ce: nfo(ce, [70] * 6), pe: nfo(pe, [65] * 6)}
    params = {**OPT, "structure": "strangle", "strike_selection": "delta", "target_delta": 0.36}
    result = run(OptionsSelling, params, bars, {"NIFTY": chain()})
    assert result.trades == [(4, "SELL", ce, 75, D(70)), (4, "SELL", pe, 75, D(65))]


def test_pick_legs_atm_offset_and_delta_directly() -> None:
    strategy = OptionsSelling.__new__(OptionsSelling)
    now = T0
    for spot, atm in ((D(26010), 26000), (D(26030), 26050), (D(25925), 25900)):
        strategy.p = OptionsSelling.Params()
        assert [r.symbol for r in strategy.pick_legs(chain(), spot, now)] == [
            sym(atm, "CE"),
            sym(atm, "PE"),
        ]
    strategy.p = OptionsSelling.Params(structure="strangle", strike_offset=3)
    assert strategy.pick_legs(chain(), D(26010), now) is None  # not enough strikes
    strategy.p = OptionsSelling.Params(structure="strangle", strike_selection="delta")
    legs = strategy.pick_legs(chain(), D(26010), now)
    assert [r.symbol for r in legs] == [sym(26100, "CE"), sym(25900, "PE")]


def test_options_selling_closes_the_other_leg_when_one_is_refused() -> None:
    def refuse_put(order: BrokerOrder) -> str | None:
        return "raise" if order.symbol == PE and order.side is OrderSide.SELL else None

    bars = {"NIFTY": nifty(8), CE: nfo(CE, [100] * 8), PE: nfo(PE, [90] * 8)}
    result = run(OptionsSelling, OPT, bars, {"NIFTY": chain()}, fail=refuse_put)
    assert result.trades == [(4, "SELL", CE, 75, D(100)), (4, "BUY", CE, 75, D(100))]
    assert [d["event"] for d in result.logs_of("error")] == ["open_failed"]


@pytest.mark.parametrize("restart_at", [4, 5, 7, 8, 10])
def test_options_selling_state_survives_a_restart(restart_at: int) -> None:
    ce = [100] * 7 + [130] * 10
    pe = [90] * 17
    bars = {"NIFTY": nifty(17), CE: nfo(CE, ce), PE: nfo(PE, pe)}
    straight = run(OptionsSelling, OPT, bars, {"NIFTY": chain()})
    resumed = run(OptionsSelling, OPT, bars, {"NIFTY": chain()}, restart_at=restart_at)
    assert resumed.trades == straight.trades
    assert len(straight.trades) == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"entry_time": time(15, 20), "exit_time": time(15, 15)},
        {"entry_time": time(9, 0)},
        {"exit_time": time(16, 0)},
        {"lots": 0},
        {"target_delta": 1.2},
        {"leg_stop_loss_pct": 0},
        {"target_pct": 120},
        {"structure": "iron_condor"},
        {"order_type": "SL"},
    ],
)
def test_options_selling_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OptionsSelling.Params(**bad)


# --- futures arbitrage ----------------------------------------------------------------
# Paper futures exist for NIFTY/BANKNIFTY only, so these runs use an equity future that
# only the fake market knows. Expiry 31 Dec: 30 days from 1 Dec, basis = (F/S - 1) * 365/30.

FUT = "RELIANCE25DECFUT"
ARB = {
    "spot_symbol": "RELIANCE",
    "future_symbol": FUT,
    "expiry": date(2025, 12, 31),
    "lot_size": 250,
}


def pair(spot: list[object], future: list[object], start: datetime = T0) -> dict:
    return {
        "RELIANCE": make_bars("RELIANCE", spot, timeframe=Timeframe.M1, start=start),
        FUT: make_bars(FUT, future, exchange=Exchange.NFO, timeframe=Timeframe.M1, start=start),
    }


def test_arbitrage_enters_on_a_rich_basis_and_exits_when_it_converges() -> None:
    # Basis: 6.08% (no), 12.17% (enter), 9.73% (hold), 1.21% (< 2%: exit), 12.1% (again).
    bars = pair([1000, 1000, 1000, 1002, 1000], [1005, 1010, 1008, 1003, 1010])
    result = run(FuturesArbitrage, ARB, bars)
    assert result.trades == [
        (1, "BUY", "RELIANCE", 250, D(1000)),
        (1, "SELL", FUT, 250, D(1010)),
        (3, "SELL", "RELIANCE", 250, D(1002)),
        (3, "BUY", FUT, 250, D(1003)),
        (4, "BUY", "RELIANCE", 250, D(1000)),
        (4, "SELL", FUT, 250, D(1010)),
    ]
    assert result.state["phase"] == "open"
    assert result.state["pos"] == {"spot": 250, "future": -250}


def test_arbitrage_exits_days_before_expiry_whatever_the_basis() -> None:
    # Expiry 3 Dec: 2 days out on 1 Dec (basis 0.1% * 365/2 = 18.25%: enter), 1 day on 2 Dec.
    params = {**ARB, "expiry": date(2025, 12, 3), "lots": 2}
    bars = pair([1000], [1001])
    day2 = pair([1000], [1002], start=T0 + timedelta(days=1))
    series = {k: bars[k] + day2[k] for k in bars}
    result = run(FuturesArbitrage, params, series)
    assert result.trades == [
        (0, "BUY", "RELIANCE", 500, D(1000)),
        (0, "SELL", FUT, 500, D(1001)),
        (1, "SELL", "RELIANCE", 500, D(1000)),
        (1, "BUY", FUT, 500, D(1002)),
    ]
    assert [d["reason"] for d in result.logs_of("signal") if d["action"] == "EXIT"] == [
        "near_expiry"
    ]


def test_arbitrage_unwinds_the_spot_when_the_future_leg_raises() -> None:
    def refuse_future(order: BrokerOrder) -> str | None:
        return "raise" if order.symbol == FUT else None

    bars = pair([1000, 1000, 1000], [1005, 1010, 1010])
    result = run(FuturesArbitrage, ARB, bars, fail=refuse_future)
    assert result.trades == [
        (1, "BUY", "RELIANCE", 250, D(1000)),
        (1, "SELL", "RELIANCE", 250, D(1000)),
    ]
    (error,) = result.logs_of("error")
    assert error["event"] == "entry_leg_failed"
    assert error["spot"]["order_id"] == "O1"
    assert error["future"] == {"status": "NOT_PLACED", "error": "refused by the fake risk check"}
    assert result.state["phase"] == "halted"  # and it stays out: step 2 traded nothing


def test_arbitrage_unwinds_the_future_when_the_spot_leg_is_rejected() -> None:
    def reject_spot_buy(order: BrokerOrder) -> str | None:
        return "reject" if order.symbol == "RELIANCE" else None

    bars = pair([1000, 1000, 1000], [1005, 1010, 1010])
    result = run(FuturesArbitrage, ARB, bars, fail=reject_spot_buy)
    assert result.trades == [(1, "SELL", FUT, 250, D(1010)), (1, "BUY", FUT, 250, D(1010))]
    (error,) = result.logs_of("error")
    assert error["spot"]["status"] == "REJECTED"
    assert error["future"]["status"] == "OPEN"
    assert result.state["phase"] == "halted"
    assert result.state["pos"] == {"spot": 0, "future": 0}


@pytest.mark.parametrize("restart_at", [1, 2, 3, 4])
def test_arbitrage_state_survives_a_restart(restart_at: int) -> None:
    bars = pair([1000, 1000, 1000, 1002, 1000], [1005, 1010, 1008, 1003, 1010])
    straight = run(FuturesArbitrage, ARB, bars)
    assert run(FuturesArbitrage, ARB, bars, restart_at=restart_at).trades == straight.trades


def test_annualised_basis() -> None:
    assert FuturesArbitrage.annualised_basis(D(1000), D(1010), 365) == D(1)
    assert FuturesArbitrage.annualised_basis(D(100), D(101), 0) == D(365)  # at least a day


@pytest.mark.parametrize(
    "bad",
    [
        {"entry_basis_pct": 2.0, "exit_basis_pct": 2.0},
        {"lot_size": 0},
        {"lots": 0},
        {"future_symbol": "RELIANCE"},
        {"exit_days_before_expiry": -1},
        {"expiry": "soon"},
    ],
)
def test_arbitrage_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FuturesArbitrage.Params(**{**ARB, **bad})


def test_arbitrage_needs_its_future() -> None:
    with pytest.raises(ValidationError):
        FuturesArbitrage.Params(spot_symbol="RELIANCE")
