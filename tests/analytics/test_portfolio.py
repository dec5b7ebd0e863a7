"""Live portfolio analytics: P&L arithmetic, capital rules, snapshots and their curve."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import empyrical
import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.helpers import order, user_with_config
from trading_backend.analytics import returns as r
from trading_backend.analytics.metrics import EquityPoint
from trading_backend.analytics.pnl import pnl_from_fills
from trading_backend.analytics.portfolio import PortfolioService, downsample
from trading_backend.domain import DomainError, Exchange, Fill, OrderSide, ProductType
from trading_backend.runtime import Runtime
from trading_backend.storage.models import BrokerConfig, OrderRow, PortfolioSnapshotRow, TradeRow

DAY_START = datetime(2024, 3, 4, 18, 30, tzinfo=UTC)  # 00:00 IST on the 5th


def _fill(
    minutes: int, side: OrderSide, qty: int, price: str, charges: str = "0", **kw: str
) -> Fill:
    return Fill(
        trade_id=f"T{minutes}",
        broker_order_id=f"O{minutes}",
        symbol=kw.get("symbol", "TCS"),
        exchange=Exchange(kw.get("exchange", "NSE")),
        side=side,
        product_type=ProductType.DELIVERY,
        quantity=qty,
        price=Decimal(price),
        charges=Decimal(charges),
        timestamp=DAY_START + timedelta(minutes=minutes),
    )


def test_pnl_from_fills_hand_computed() -> None:
    fills = [
        _fill(-600, OrderSide.BUY, 10, "100", "1.5"),  # yesterday: held overnight
        _fill(60, OrderSide.SELL, 4, "110", "0.5"),  # today: realises 4 x 10
        _fill(90, OrderSide.BUY, 2, "50", "0.2", symbol="INFY"),  # today, no quote
    ]
    prices = {"TCS": (Decimal("112"), Decimal("105"))}  # last, previous close

    def lookup(symbol: str, exchange: Exchange) -> tuple[Decimal | None, Decimal | None]:
        return prices.get(symbol, (None, None))

    pnl = pnl_from_fills(fills, lookup, DAY_START)
    assert pnl.realised == Decimal("40")
    assert pnl.charges == Decimal("2.2")
    # TCS 6 x (112 - 100); INFY marked at its last fill price: 0.
    assert pnl.unrealised == Decimal("72")
    assert pnl.net == Decimal("109.8")
    # Today: cash +440 - 100, charges 0.7; TCS 6 x 112 now vs 10 x 105 at the open; INFY 2 x 50.
    assert pnl.day_pnl == Decimal("440") - Decimal("100") - Decimal("0.7") + 672 - 1050 + 100
    assert pnl.open_positions == 2 and pnl.fills == 3


def test_downsample_keeps_the_ends_and_at_most_the_limit() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    points = [EquityPoint(t0 + timedelta(minutes=i), Decimal(i)) for i in range(5000)]
    thin = downsample(points, 1000)
    assert len(thin) == 1000 and thin[0] == points[0] and thin[-1] == points[-1]
    assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(thin))
    assert downsample(points[:10], 1000) == points[:10]


def test_capital_rules() -> None:
    def config(broker: str, settings: dict[str, object]) -> BrokerConfig:
        return BrokerConfig(id="c", user_id="u", broker=broker, name="n", settings=settings)

    capital = PortfolioService._capital
    assert capital(config("paper", {}), None) == Decimal("1000000")
    assert capital(config("paper", {"initial_capital": "250000"}), None) == Decimal("250000")
    # The paper exchange's pinned opening capital wins over later settings changes.
    pinned = {"initial_capital": "300000"}
    assert capital(config("paper", {"initial_capital": "9"}), pinned) == Decimal("300000")
    assert capital(config("angel_one", {"capital": 500000}), None) == Decimal("500000")
    assert capital(config("angel_one", {}), None) is None
    assert capital(config("angel_one", {"capital": "-5"}), None) is None


async def _snapshots(runtime: Runtime, user_id: str) -> dict[str, list[PortfolioSnapshotRow]]:
    async with runtime.db() as session:
        rows = (
            await session.scalars(
                select(PortfolioSnapshotRow)
                .where(PortfolioSnapshotRow.user_id == user_id)
                .order_by(PortfolioSnapshotRow.taken_at)
            )
        ).all()
    out: dict[str, list[PortfolioSnapshotRow]] = {}
    for row in rows:
        out.setdefault(row.scope, []).append(row)
    return out


async def test_snapshots_per_scope_curve_and_metrics(runtime: Runtime) -> None:
    alice, alice_cfg = await user_with_config(runtime, "alice", initial_capital="200000")
    bob, _ = await user_with_config(runtime, "bob")
    idle, _ = await user_with_config(runtime, "idle")
    await runtime.market.set_price("TCS", "NSE", "3000")
    placed = await runtime.orders.place(alice, alice_cfg, order(quantity=10), wait=5)
    await runtime.orders.place(bob, (await _config_of(runtime, bob)), order(quantity=1), wait=5)
    fill_price = placed.order.average_price
    service = runtime.portfolio
    now = datetime.now(UTC)
    days = [now - timedelta(days=3), now - timedelta(days=2), now - timedelta(days=1)]
    for day, price in zip(days, ("3050", "2990", "3100"), strict=True):
        await runtime.market.set_price("TCS", "NSE", price)
        assert await service.snapshot(at=day) == 4  # alice: user + account; bob: the same
    # The same moment again is refused as a whole: the first snapshot stands.
    assert await service.snapshot(alice, at=days[0]) == 0

    rows = await _snapshots(runtime, alice)
    assert set(rows) == {f"user:{alice}", f"account:{alice_cfg}"}
    assert not await _snapshots(runtime, idle)  # never traded: nothing stored
    account = rows[f"account:{alice_cfg}"]
    charges = account[0].charges
    assert charges > 0
    expected = [
        Decimal("200000") + (Decimal(p) - fill_price) * 10 - charges
        for p in ("3050", "2990", "3100")
    ]
    assert [row.equity for row in account] == expected
    assert [row.equity for row in rows[f"user:{alice}"]] == expected
    assert {row.capital for row in account} == {Decimal("200000")}
    assert account[0].config_id == alice_cfg and rows[f"user:{alice}"][0].config_id is None

    report = await service.analytics(
        alice,
        config_id=alice_cfg,
        start=days[0] - timedelta(hours=1),
        end=days[-1] + timedelta(seconds=1),
        risk_free_rate=0.065,
    )
    assert [p["equity"] for p in report["equity_curve"]] == [str(e) for e in expected]
    metrics = report["metrics"]
    rets = np.array([float(b / a - 1) for a, b in itertools.pairwise(expected)])
    assert metrics["periods"] == 2
    daily_rf = r.daily_risk_free(0.065, 252)
    assert metrics["sharpe"] == pytest.approx(
        empyrical.sharpe_ratio(rets, risk_free=daily_rf, annualization=252), rel=1e-9
    )
    assert metrics["max_drawdown"] == pytest.approx(empyrical.max_drawdown(rets), rel=1e-9)
    assert metrics["start_equity"] == str(expected[0])
    with pytest.raises(DomainError) as denied:
        await service.analytics(bob, config_id=alice_cfg)
    assert denied.value.code.value == "CONFIG_NOT_FOUND"


async def _config_of(runtime: Runtime, user_id: str) -> str:
    async with runtime.db() as session:
        config_id = await session.scalar(
            select(BrokerConfig.id).where(BrokerConfig.user_id == user_id)
        )
    assert config_id is not None
    return config_id


@pytest.mark.parametrize(("seconds", "expected"), [(300.0, True), (0.0, False)])
async def test_snapshot_job_runs_with_the_background_tasks_unless_disabled(
    tmp_path: Path, database_url: str, seconds: float, expected: bool
) -> None:
    settings = make_settings(tmp_path, database_url, portfolio_snapshot_seconds=seconds)
    runtime = Runtime(settings)
    await runtime.start(worker=False, market=False, health_monitor=True)
    try:
        names = {task.get_name() for task in runtime._tasks if not task.done()}
        assert ("portfolio-snapshots" in names) is expected
        assert "session-health" in names
    finally:
        await runtime.stop()


async def test_account_without_known_capital_has_pnl_but_no_return_metrics(
    runtime: Runtime,
) -> None:
    """A real broker's account with no ``capital`` setting: its trades (written here as the
    recorder would) give P&L and trade statistics; returns need a base, so none."""
    user = await runtime.accounts.create_user("ravi", "correct-horse-battery")
    config = await runtime.accounts.create_config(user.id, "angel_one", "ravi angel")
    config_id = config["config_id"]
    at = datetime.now(UTC) - timedelta(minutes=5)
    async with runtime.db() as session, session.begin():
        for n, (side, price, charges) in enumerate((("BUY", "100", "1"), ("SELL", "112", "1"))):
            session.add(
                OrderRow(
                    id=f"o{n}",
                    user_id=user.id,
                    config_id=config_id,
                    client_order_id=f"c{n}",
                    symbol="TCS",
                    exchange="NSE",
                    side=side,
                    order_type="MARKET",
                    product_type="DELIVERY",
                    quantity=5,
                    status="FILLED",
                    filled_quantity=5,
                    average_price=Decimal(price),
                )
            )
            await session.flush()
            session.add(
                TradeRow(
                    user_id=user.id,
                    config_id=config_id,
                    order_id=f"o{n}",
                    trade_id=f"t{n}",
                    broker_order_id=f"b{n}",
                    symbol="TCS",
                    exchange="NSE",
                    side=side,
                    product_type="DELIVERY",
                    quantity=5,
                    price=Decimal(price),
                    charges=Decimal(charges),
                    executed_at=at + timedelta(minutes=n),
                )
            )
    service = runtime.portfolio
    assert await service.snapshot(user.id) == 2
    rows = await _snapshots(runtime, user.id)
    assert {row.capital for scope in rows.values() for row in scope} == {None}
    assert rows[f"account:{config_id}"][0].equity == Decimal("58")  # 5 x 12 - 2, no base
    report = await service.analytics(user.id, config_id=config_id)
    assert report["totals"]["capital"] is None and report["totals"]["equity"] == "58"
    assert report["totals"]["realised_pnl"] == "60" and report["totals"]["charges"] == "2"
    metrics = report["metrics"]
    assert metrics["trades"] == 1 and metrics["trades_net_pnl"] == "58"
    assert metrics["periods"] == 0 and metrics["sharpe"] is None and metrics["cagr"] is None
