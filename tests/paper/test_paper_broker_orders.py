"""PaperBroker order handling: every order type, rejections, updates, funds."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from tests.paper.paper_helpers import NIFTY_FUT, BrokerFactory, Recorder, d
from trading_backend.brokers.base import (
    BrokerAuthError,
    BrokerConfigData,
    BrokerContext,
    BrokerOrder,
    BrokerRejected,
    InsufficientFunds,
    OrderUpdate,
)
from trading_backend.brokers.paper import PaperBroker, SimulatedMarket
from trading_backend.brokers.registry import BrokerRegistry
from trading_backend.domain import ErrorCode, OrderStatus, OrderType, ProductType


def order(**kw: object) -> BrokerOrder:
    values: dict[str, object] = {
        "symbol": "RELIANCE",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "INTRADAY",
        "quantity": 10,
    }
    values.update(kw)
    return BrokerOrder(**values)  # type: ignore[arg-type]


@pytest.fixture
async def reliance(market: SimulatedMarket) -> SimulatedMarket:
    """RELIANCE at 1500.00 (bid 1499.95, ask 1500.05) with plenty of volume."""
    await market.set_price("RELIANCE", "NSE", "1500", volume=100_000)
    return market


async def test_registry_and_session(make_broker: BrokerFactory) -> None:
    assert BrokerRegistry.get("paper") is PaperBroker
    broker = await make_broker()
    assert await broker.is_session_valid()
    await broker.logout()
    assert not await broker.is_session_valid()
    with pytest.raises(BrokerAuthError):
        await broker.get_orders()
    assert await broker.authenticate()
    assert await broker.is_session_valid()


async def test_private_market_when_none_is_shared() -> None:
    config = BrokerConfigData("solo", "u", "paper", settings={"seed": 5})
    broker = PaperBroker(config)
    assert await broker.authenticate()
    assert broker.market.seed == 5
    data = await broker.get_market_data("tcs", "nse")
    assert data["symbol"] == "TCS" and isinstance(data["ltp"], Decimal)
    assert set(data) >= {"ltp", "change", "change_percent", "open", "high", "low", "close"}
    assert isinstance(data["timestamp"], str)
    await broker.close()
    assert not await broker.is_session_valid()


async def test_market_buy_and_sell_at_touch_with_slippage(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    broker = await make_broker(settings={"slippage_bps": 10})
    buy = await broker.place_order(order())
    state = await broker.get_order(buy)
    assert state.status is OrderStatus.FILLED
    assert state.average_price == d("1501.60")  # 1500.05 * 1.001 = 1501.55005, up to tick
    sell = await broker.place_order(order(side="SELL"))
    assert (await broker.get_order(sell)).average_price == d("1498.45")  # 1499.95 * 0.999


async def test_updates_open_then_fill_with_charges_and_ids(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(client_order_id="cid-1", tag="t1"))
    assert recorder.statuses(oid) == ["OPEN", "FILLED"]
    open_update, fill_update = recorder.for_order(oid)
    assert open_update.fills == [] and open_update.config_id == "acc1"
    assert open_update.state.client_order_id == "cid-1"
    (fill,) = fill_update.fills
    assert fill.trade_id == "PT-acc1-1"
    assert fill.client_order_id == "cid-1"
    assert fill.quantity == 10 and fill.price == d("1500.05")
    assert fill.charges > 0
    breakdown = broker.charges_breakdown(fill.trade_id)
    assert breakdown is not None and Decimal(breakdown["total"]) == fill.charges
    found = await broker.find_order_by_client_id("cid-1")
    assert found is not None and found.broker_order_id == oid
    assert oid.startswith("PAPER-")


async def test_limit_rests_then_fills_when_price_crosses(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(order_type="LIMIT", price="1490"))
    assert (await broker.get_order(oid)).status is OrderStatus.OPEN
    await reliance.set_price("RELIANCE", "NSE", "1490", volume=1000)  # ask 1490.05: not yet
    assert (await broker.get_order(oid)).status is OrderStatus.OPEN
    await reliance.set_price("RELIANCE", "NSE", "1489.95", volume=1000)  # ask 1490.00
    state = await broker.get_order(oid)
    assert state.status is OrderStatus.FILLED and state.average_price == d("1490.00")
    assert recorder.statuses(oid) == ["OPEN", "FILLED"]


async def test_limit_sell_fills_at_better_bid(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    broker = await make_broker()
    oid = await broker.place_order(order(side="SELL", order_type="LIMIT", price="1450"))
    assert (await broker.get_order(oid)).average_price == d("1499.95")


async def test_stop_limit_and_stop_market(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    broker = await make_broker()
    buy_stop = await broker.place_order(order(order_type="SL", price="1512", trigger_price="1510"))
    sell_stop = await broker.place_order(
        order(side="SELL", order_type="SL", price="1489", trigger_price="1490")
    )
    sell_stop_m = await broker.place_order(
        order(side="SELL", order_type="SL_M", trigger_price="1480")
    )
    for oid in (buy_stop, sell_stop, sell_stop_m):
        assert (await broker.get_order(oid)).status is OrderStatus.OPEN
    await reliance.set_price("RELIANCE", "NSE", "1510", volume=1000)
    state = await broker.get_order(buy_stop)
    assert state.status is OrderStatus.FILLED and state.average_price == d("1510.05")
    # Gap down through both sell stops: the stop-market fills at the bid, the
    # stop-limit triggers but its limit (1489) is above the bid, so it waits...
    await reliance.set_price("RELIANCE", "NSE", "1470", volume=1000)
    assert (await broker.get_order(sell_stop_m)).average_price == d("1469.95")
    assert (await broker.get_order(sell_stop)).status is OrderStatus.OPEN
    # ... and fills as a plain limit once the bid is back at 1489, below its trigger.
    await reliance.set_price("RELIANCE", "NSE", "1489.05", volume=1000)
    state = await broker.get_order(sell_stop)
    assert state.status is OrderStatus.FILLED and state.average_price == d("1489.00")


async def test_ioc_fills_what_it_can_and_cancels_the_rest(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    await market.set_price("RELIANCE", "NSE", "1500", volume=400)  # 25% -> 100 per tick
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(quantity=250, validity="IOC"))
    state = await broker.get_order(oid)
    assert state.status is OrderStatus.CANCELLED
    assert state.filled_quantity == 100
    assert recorder.statuses(oid) == ["OPEN", "PARTIALLY_FILLED", "CANCELLED"]
    missed = await broker.place_order(order(order_type="LIMIT", price="1400", validity="IOC"))
    assert (await broker.get_order(missed)).status is OrderStatus.CANCELLED
    assert (await broker.get_order(missed)).filled_quantity == 0


async def test_large_order_fills_across_several_ticks(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    await market.set_price("RELIANCE", "NSE", "1500", volume=400)
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(quantity=250))
    assert (await broker.get_order(oid)).filled_quantity == 100
    await market.set_price("RELIANCE", "NSE", "1501", volume=400)
    assert (await broker.get_order(oid)).filled_quantity == 200
    await market.set_price("RELIANCE", "NSE", "1502", volume=400)
    state = await broker.get_order(oid)
    assert state.status is OrderStatus.FILLED and state.filled_quantity == 250
    fills = [f for u in recorder.for_order(oid) for f in u.fills]
    assert [f.quantity for f in fills] == [100, 100, 50]
    assert [f.price for f in fills] == [d("1500.05"), d("1501.05"), d("1502.05")]
    expected_avg = (d("1500.05") * 100 + d("1501.05") * 100 + d("1502.05") * 50) / 250
    assert state.average_price == expected_avg
    assert len({f.trade_id for f in fills}) == 3
    assert recorder.statuses(oid) == ["OPEN", "PARTIALLY_FILLED", "PARTIALLY_FILLED", "FILLED"]


async def test_large_order_fills_on_market_steps(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    broker = await make_broker()
    oid = await broker.place_order(order(symbol="MARUTI", quantity=60))  # ~4 shares per tick
    steps = 0
    while (await broker.get_order(oid)).status is not OrderStatus.FILLED:
        await market.step()
        steps += 1
        assert steps < 100
    assert steps > 3
    trades = [t for t in await broker.get_trades() if t.broker_order_id == oid]
    assert sum(t.quantity for t in trades) == 60


async def test_futures_lot_size_and_partial_lots(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    broker = await make_broker()
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(
            order(symbol=NIFTY_FUT, exchange="NFO", quantity=50, product_type="CARRYFORWARD")
        )
    assert err.value.code is ErrorCode.INVALID_ORDER
    assert "lot size 75" in err.value.message
    await market.set_price(NIFTY_FUT, "NFO", "26100", volume=500)  # 125 -> one lot per tick
    oid = await broker.place_order(
        order(symbol=NIFTY_FUT, exchange="NFO", quantity=225, product_type="CARRYFORWARD")
    )
    assert (await broker.get_order(oid)).filled_quantity == 75
    await market.set_price(NIFTY_FUT, "NFO", "26100", volume=500)
    assert (await broker.get_order(oid)).filled_quantity == 150
    (position,) = await broker.get_positions()
    assert position["quantity"] == 150 and position["product_type"] == "CARRYFORWARD"
    with pytest.raises(BrokerRejected):  # futures are not DELIVERY
        await broker.place_order(
            order(symbol=NIFTY_FUT, exchange="NFO", quantity=75, product_type="DELIVERY")
        )


async def test_modify_then_fill(make_broker: BrokerFactory, reliance: SimulatedMarket) -> None:
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(order_type="LIMIT", price="1480"))
    await broker.modify_order(oid, quantity=20, price=d("1485"))
    state = await broker.get_order(oid)
    assert (state.quantity, state.price, state.status) == (20, d("1485"), OrderStatus.OPEN)
    await broker.modify_order(oid, order_type=OrderType.MARKET)
    state = await broker.get_order(oid)
    assert state.status is OrderStatus.FILLED and state.average_price == d("1500.05")
    assert state.price is None
    assert recorder.statuses(oid) == ["OPEN", "OPEN", "OPEN", "FILLED"]
    with pytest.raises(BrokerRejected) as err:
        await broker.modify_order(oid, price=d("1490"))
    assert err.value.code is ErrorCode.ORDER_NOT_MODIFIABLE
    with pytest.raises(BrokerRejected) as err:
        await broker.cancel_order(oid)
    assert err.value.code is ErrorCode.ORDER_NOT_CANCELLABLE


async def test_modify_validation(make_broker: BrokerFactory, reliance: SimulatedMarket) -> None:
    broker = await make_broker()
    oid = await broker.place_order(order(order_type="LIMIT", price="1480"))
    with pytest.raises(BrokerRejected) as err:
        await broker.modify_order(oid, price=d("1480.02"))
    assert err.value.code is ErrorCode.INVALID_ORDER
    with pytest.raises(BrokerRejected) as err:
        await broker.modify_order(oid, order_type=OrderType.SL)  # SL needs a trigger
    assert err.value.code is ErrorCode.INVALID_ORDER
    with pytest.raises(InsufficientFunds):
        await broker.modify_order(oid, quantity=100_000)
    assert (await broker.get_order(oid)).quantity == 10  # unchanged by the failures


async def test_cancel_and_unknown_orders(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    oid = await broker.place_order(order(order_type="LIMIT", price="1400"))
    await broker.cancel_order(oid)
    assert (await broker.get_order(oid)).status is OrderStatus.CANCELLED
    assert recorder.statuses(oid) == ["OPEN", "CANCELLED"]
    await reliance.set_price("RELIANCE", "NSE", "1300", volume=1000)
    assert (await broker.get_order(oid)).filled_quantity == 0
    for call in (
        broker.get_order("PAPER-999"),
        broker.cancel_order("PAPER-999"),
        broker.modify_order("PAPER-999", price=d("1")),
    ):
        with pytest.raises(BrokerRejected) as err:
            await call
        assert err.value.code is ErrorCode.ORDER_NOT_FOUND


async def test_rejections(make_broker: BrokerFactory, reliance: SimulatedMarket) -> None:
    broker = await make_broker()
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(order(symbol="NOSUCH"))
    assert err.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(order(symbol="NIFTY"))
    assert err.value.code is ErrorCode.INVALID_ORDER and "index" in err.value.message
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(order(order_type="LIMIT", price="1500.03"))
    assert err.value.code is ErrorCode.INVALID_ORDER and "tick" in err.value.message
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(order(product_type="CARRYFORWARD"))
    assert err.value.code is ErrorCode.INVALID_ORDER
    assert await broker.get_orders() == []  # rejected orders never reach the book


async def test_insufficient_funds(make_broker: BrokerFactory, reliance: SimulatedMarket) -> None:
    broker = await make_broker()
    with pytest.raises(InsufficientFunds) as err:  # 1000 x 1500 = 15 lakh > 10 lakh
        await broker.place_order(order(quantity=1000, product_type="DELIVERY"))
    assert err.value.code is ErrorCode.INSUFFICIENT_FUNDS
    # The same order intraday needs a fifth of that.
    oid = await broker.place_order(order(quantity=1000, product_type="INTRADAY"))
    assert (await broker.get_order(oid)).status is OrderStatus.FILLED
    balance = await broker.get_balance()
    assert balance["used_margin"] == d("300010.00")  # 1000 x 1500.05 / 5
    # Working orders block margin too.
    await broker.place_order(order(quantity=2000, order_type="LIMIT", price="1000"))  # 4 lakh
    with pytest.raises(InsufficientFunds):
        await broker.place_order(order(quantity=1100, order_type="LIMIT", price="1400"))
    # Reducing the position needs no margin, even when funds are short.
    sell = await broker.place_order(order(side="SELL", quantity=1000))
    assert (await broker.get_order(sell)).status is OrderStatus.FILLED


async def test_delivery_short_sell_rejected(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    broker = await make_broker()
    with pytest.raises(BrokerRejected) as err:
        await broker.place_order(order(side="SELL", product_type="DELIVERY"))
    assert err.value.code is ErrorCode.INVALID_ORDER and "short" in err.value.message
    await broker.place_order(order(product_type="DELIVERY", quantity=10))
    await broker.place_order(
        order(side="SELL", product_type="DELIVERY", quantity=6, order_type="LIMIT", price="1600")
    )
    with pytest.raises(BrokerRejected):  # 10 held, 6 already on a working sell
        await broker.place_order(order(side="SELL", product_type="DELIVERY", quantity=5))
    oid = await broker.place_order(order(side="SELL", product_type="DELIVERY", quantity=4))
    assert (await broker.get_order(oid)).status is OrderStatus.FILLED
    # Intraday shorts are fine.
    short = await broker.place_order(order(side="SELL", quantity=5))
    assert (await broker.get_order(short)).status is OrderStatus.FILLED


async def test_positions_and_balance_accounting(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    broker = await make_broker()
    await broker.place_order(order(quantity=100))  # buy @ 1500.05
    await reliance.set_price("RELIANCE", "NSE", "1510", volume=100_000)
    await broker.place_order(order(side="SELL", quantity=40))  # sell @ 1509.95
    (pos,) = await broker.get_positions()
    trades = await broker.get_trades()
    charges = sum(t.charges for t in trades)
    assert pos["quantity"] == 60
    assert pos["buy_quantity"] == 100 and pos["sell_quantity"] == 40
    assert pos["average_price"] == d("1500.05")
    assert pos["last_price"] == d("1510.00")
    assert pos["realised_pnl"] == d("396.00")  # 40 x 9.90
    assert pos["unrealised_pnl"] == d("597.00")  # 60 x 9.95
    assert pos["charges"] == charges
    assert pos["pnl"] == d("396.00") + d("597.00") - charges
    balance = await broker.get_balance()
    assert balance["cash"] == d("1000000") + d("396.00") - charges
    assert balance["total_balance"] == balance["cash"] + d("597.00")
    assert balance["used_margin"] == d("18000.60")  # 60 x 1500.05 / 5
    assert balance["available_cash"] == balance["cash"] - balance["used_margin"]
    assert balance["buying_power"] == balance["available_cash"] * 5
    assert balance["currency"] == "INR"


async def test_expire_day_orders(make_broker: BrokerFactory, reliance: SimulatedMarket) -> None:
    recorder = Recorder()
    broker = await make_broker(handler=recorder)
    resting = await broker.place_order(order(order_type="LIMIT", price="1400"))
    done = await broker.place_order(order())
    expired = await broker.expire_day_orders()
    assert [s.broker_order_id for s in expired] == [resting]
    assert (await broker.get_order(resting)).status is OrderStatus.EXPIRED
    assert (await broker.get_order(done)).status is OrderStatus.FILLED
    assert recorder.statuses(resting)[-1] == "EXPIRED"
    assert (await broker.get_balance())["used_margin"] == d("3000.10")  # only the position


async def test_handler_may_call_back_into_the_broker(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    seen: list[tuple[str, str]] = []
    holder: dict[str, PaperBroker] = {}

    async def handler(update: OrderUpdate) -> None:
        broker = holder["b"]
        current = await broker.get_order(update.state.broker_order_id)
        seen.append((update.state.status.value, current.status.value))
        if update.state.status is OrderStatus.FILLED and update.state.side == "BUY":
            # Protect the fill with a stop, from inside the handler.
            await broker.place_order(
                order(side="SELL", quantity=10, order_type="SL_M", trigger_price="1450")
            )

    broker = await make_broker()
    holder["b"] = broker
    broker.set_order_update_handler(handler)
    await broker.place_order(order())
    orders = await broker.get_orders()
    assert len(orders) == 2 and orders[1].order_type is OrderType.SL_M
    assert [s for s, _ in seen] == ["OPEN", "FILLED", "OPEN"]
    await reliance.set_price("RELIANCE", "NSE", "1440", volume=1000)
    assert (await broker.get_order(orders[1].broker_order_id)).status is OrderStatus.FILLED


async def test_a_failing_handler_does_not_break_the_broker(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    async def handler(update: OrderUpdate) -> None:
        raise RuntimeError("handler bug")

    broker = await make_broker()
    broker.set_order_update_handler(handler)
    oid = await broker.place_order(order())
    assert (await broker.get_order(oid)).status is OrderStatus.FILLED


async def test_accounts_share_prices_but_not_books(
    make_broker: BrokerFactory, reliance: SimulatedMarket
) -> None:
    a = await make_broker("acc-a")
    b = await make_broker("acc-b")
    await a.place_order(order())
    assert await b.get_positions() == []
    assert (await a.get_market_data("RELIANCE", "NSE"))["ltp"] == (
        await b.get_market_data("RELIANCE", "NSE")
    )["ltp"]
    assert (await a.get_trades())[0].trade_id == "PT-acc-a-1"


async def test_settings_validation(market: SimulatedMarket) -> None:
    def make(settings: dict[str, object]) -> PaperBroker:
        config = BrokerConfigData("x", "u", "paper", settings=settings)
        return PaperBroker(config, BrokerContext(market=market))

    for bad, key in (
        ({"initial_capital": 0}, "initial_capital"),
        ({"initial_capital": "lots"}, "initial_capital"),
        ({"slippage_bps": -1}, "slippage_bps"),
        ({"intraday_leverage": 0.5}, "intraday_leverage"),
        ({"participation": 2}, "participation"),
        ({"margin_fractions": {"NOPE": 0.5}}, "margin_fractions"),
        ({"margin_fractions": {"DELIVERY": 0}}, "margin_fractions"),
        ({"charges": {"typo": 1}}, "charges"),
        ({"seed": "abc"}, "seed"),
    ):
        with pytest.raises(BrokerRejected) as err:
            make(bad)
        assert err.value.code is ErrorCode.VALIDATION_ERROR
        assert key in err.value.message
    broker = make(
        {
            "initial_capital": "250000",
            "intraday_leverage": 4,
            "margin_fractions": {"carryforward": "0.2"},
            "charges": {"brokerage_cap": 0},
            "unrelated": True,
        }
    )
    assert broker.settings.initial_capital == d("250000")
    assert broker.settings.margin_fraction(ProductType.INTRADAY) == d("0.25")
    assert broker.settings.margin_fraction(ProductType.CARRYFORWARD) == d("0.2")
    assert broker.settings.margin_fraction(ProductType.DELIVERY) == d("1")
    assert broker.settings.charges.brokerage_cap == d("0")


async def test_concurrent_orders_and_ticks(market: SimulatedMarket) -> None:
    class SlowStore:
        """Yields to the loop inside every save so operations interleave."""

        def __init__(self) -> None:
            self.data: dict[str, dict[str, object]] = {}

        async def load(self, key: str) -> dict[str, object] | None:
            return self.data.get(key)

        async def save(self, key: str, state: dict[str, object]) -> None:
            await asyncio.sleep(0)
            self.data[key] = state

    recorder = Recorder()
    config = BrokerConfigData("conc", "u", "paper")
    broker = PaperBroker(config, BrokerContext(market=market, state_store=SlowStore()))  # type: ignore[arg-type]
    broker.set_order_update_handler(recorder)
    await broker.authenticate()
    await market.set_price("SBIN", "NSE", "950", volume=40)  # 10 shares per order per tick
    jobs = [
        broker.place_order(order(symbol="SBIN", quantity=25, client_order_id=f"c{i}"))
        for i in range(10)
    ]
    jobs += [market.step() for _ in range(5)]
    results = await asyncio.gather(*jobs)
    ids = [r for r in results if isinstance(r, str)]
    assert len(set(ids)) == 10
    for _ in range(5):
        await market.step()
    trades = await broker.get_trades()
    assert len({t.trade_id for t in trades}) == len(trades)
    for oid in ids:
        state = await broker.get_order(oid)
        assert state.status is OrderStatus.FILLED
        assert sum(t.quantity for t in trades if t.broker_order_id == oid) == 25
        # Per order, the handler saw OPEN first and the fills in order.
        statuses = recorder.statuses(oid)
        assert statuses[0] == "OPEN" and statuses[-1] == "FILLED"
    (position,) = await broker.get_positions()
    assert position["quantity"] == 250
    await broker.close()


async def test_crypto_spot_pays_taker_then_maker_fees(
    make_broker: BrokerFactory, market: SimulatedMarket
) -> None:
    await market.set_price("ETHUSDT", "CRYPTO", "3000", volume=1000)
    broker = await make_broker(settings={"charges": {"crypto_maker_fee": "0.0005"}})
    taker = await broker.place_order(order(symbol="ETHUSDT", exchange="CRYPTO", quantity=2))
    maker = await broker.place_order(
        order(symbol="ETHUSDT", exchange="CRYPTO", quantity=2, order_type="LIMIT", price="2990")
    )
    await market.set_price("ETHUSDT", "CRYPTO", "2989.99", volume=1000)
    fills = {t.broker_order_id: t for t in await broker.get_trades()}
    assert fills[taker].price == d("3000.01") and fills[taker].charges == d("6.00")  # 0.1%
    assert fills[maker].price == d("2990.00") and fills[maker].charges == d("2.99")  # 0.05%


async def test_market_data_for_unknown_instrument(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    with pytest.raises(BrokerRejected) as err:
        await broker.get_market_data("NOSUCH", "NSE")
    assert err.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
    data = await broker.get_market_data(NIFTY_FUT, "NFO")
    assert data["exchange"] == "NFO" and data["ltp"] > 0


def test_validate_settings_classmethod() -> None:
    PaperBroker.validate_settings({"initial_capital": 5000, "slippage_bps": "2.5"})
    with pytest.raises(BrokerRejected) as err:
        PaperBroker.validate_settings({"participation": 0})
    assert err.value.code is ErrorCode.VALIDATION_ERROR
