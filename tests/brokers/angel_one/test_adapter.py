"""``AngelOneBroker`` against the fake SmartAPI: every call, the order-update channel,
and every fault the real service is known for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.brokers.angel_one.support import CLIENT_CODE, SBIN
from tests.brokers.angel_one.test_adapter_support import Updates, make_broker, tick_round
from trading_backend.brokers.angel_one import ratelimit
from trading_backend.brokers.angel_one.broker import AngelOneBroker
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.base import (
    BrokerAuthError,
    BrokerRejected,
    BrokerTimeout,
    BrokerUnavailable,
)
from trading_backend.domain import BrokerOrder, ErrorCode, OrderStatus, Timeframe
from trading_backend.execution.ids import new_order_id


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    """Each test starts with untouched client-side budgets (one fake per test)."""
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


def market(quantity: int = 1, **kw: object) -> BrokerOrder:
    values: dict[str, object] = {
        "symbol": "SBIN",
        "exchange": "NSE",
        "side": "BUY",
        "order_type": "MARKET",
        "product_type": "INTRADAY",
        "quantity": quantity,
        "client_order_id": new_order_id(),
    }
    values.update(kw)
    return BrokerOrder(**values)  # type: ignore[arg-type]


def limit_below(server: RunningFake, quantity: int = 1, **kw: object) -> BrokerOrder:
    price = tick_round(server.fake.ltp(*SBIN) * Decimal("0.98"))
    return market(quantity, order_type="LIMIT", price=price, **kw)


async def started(server: RunningFake, **settings: object) -> tuple[AngelOneBroker, Updates]:
    broker = make_broker(server, **settings)  # type: ignore[arg-type]
    updates = Updates()
    broker.set_order_update_handler(updates)
    assert await broker.authenticate() is True
    return broker, updates


# -- session -----------------------------------------------------------------------------
async def test_login_profile_status_and_logout(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        assert await broker.is_session_valid()
        profile = await broker.profile()
        assert profile["clientcode"] == CLIENT_CODE
        login = angel_fake.fake.calls("login")[0]
        assert "Authorization" not in login.headers and "authorization" not in login.headers
        status = broker.status()
        assert status["session_valid"] and status["logins"] == 1
        text = repr(status) + repr(broker) + repr(broker.session) + repr(broker.credentials)
        session = broker.session
        for secret in ("JBSWY3DPEHPK3PXP", "test-api-key", session.jwt, session.refresh_token):
            assert secret and secret not in text
        assert "pin" not in text.lower()  # (the PIN itself is a substring of the client code)
        await broker.logout()
        assert not await broker.is_session_valid()
        assert [r.outcome for r in angel_fake.fake.calls("logout")] == ["ok"]
    finally:
        await broker.close()


async def test_refresh_uses_generate_tokens(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        old = broker.session.jwt
        await broker.refresh_session()
        assert broker.session.jwt != old
        assert len(angel_fake.fake.calls("generate_tokens")) == 1
        assert len(angel_fake.fake.calls("login")) == 1
        assert (await broker.get_balance())["available_cash"] > 0  # the new token works
    finally:
        await broker.close()


async def test_bad_totp_waits_for_the_next_step_retries_once_then_invalid_totp(
    angel_fake: RunningFake,
) -> None:
    from tests.brokers.angel_one.test_adapter_support import credentials

    waits: list[float] = []

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    broker = make_broker(
        angel_fake,
        sleep=record_sleep,
        creds=credentials(totp_secret="KRSXG5CTMVRXEZLU"),  # a valid secret, not this user's
        order_updates="off",
    )
    try:
        with pytest.raises(BrokerAuthError) as info:
            await broker.authenticate()
        assert info.value.code is ErrorCode.INVALID_TOTP
        assert [r.outcome for r in angel_fake.fake.calls("login")] == ["AB1050", "AB1050"]
        assert len(waits) == 1 and 0 < waits[0] <= 30.5
        assert "KRSXG5CTMVRXEZLU" not in info.value.message
        assert not await broker.is_session_valid()
    finally:
        await broker.close()


async def test_wrong_pin_is_auth_error(angel_fake: RunningFake) -> None:
    from tests.brokers.angel_one.test_adapter_support import credentials

    broker = make_broker(angel_fake, creds=credentials(pin="0000"), order_updates="off")
    try:
        with pytest.raises(BrokerAuthError) as info:
            await broker.authenticate()
        assert info.value.code is ErrorCode.AUTH_ERROR
        assert "0000" not in info.value.message
        assert len(angel_fake.fake.calls("login")) == 1  # no retry for a wrong PIN
    finally:
        await broker.close()


def test_missing_credentials_and_bad_settings_are_clear_errors(angel_fake: RunningFake) -> None:
    from tests.brokers.angel_one.test_adapter_support import credentials

    with pytest.raises(BrokerAuthError) as info:
        make_broker(angel_fake, creds={k: v for k, v in credentials().items() if k != "pin"})
    assert "pin" in info.value.message
    for bad in ({"root_url": "ftp://x"}, {"timeout": -1}, {"timeout": "soon"}, {"rooturl": "x"}):
        with pytest.raises(BrokerRejected) as rejected:
            AngelOneBroker.validate_settings(bad)
        assert rejected.value.code is ErrorCode.VALIDATION_ERROR
    AngelOneBroker.validate_settings({"root_url": "http://127.0.0.1:1", "timeout": 3})


async def test_ag8001_mid_session_relogs_in_once_and_succeeds(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.invalidate_tokens(CLIENT_CODE)
        balance = await broker.get_balance()
        assert balance["available_cash"] > 0
        assert len(angel_fake.fake.calls("login")) == 2
        assert [r.outcome for r in angel_fake.fake.calls("rms")] == ["AG8001", "ok"]
    finally:
        await broker.close()


async def test_repeated_session_error_fails_with_auth_error_after_one_relogin(
    angel_fake: RunningFake,
) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.error("AG8001", times=2, route="rms")
        with pytest.raises(BrokerAuthError) as info:
            await broker.get_balance()
        assert info.value.code is ErrorCode.AUTH_ERROR
        assert len(angel_fake.fake.calls("login")) == 2  # exactly one re-login
        assert not await broker.is_session_valid()  # the health monitor takes over
    finally:
        await broker.close()


async def test_plain_text_403_is_rate_limited_and_never_relogs_in(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.rate_limit(route="rms")
        with pytest.raises(ratelimit.RateLimited) as info:
            await broker.get_balance()
        assert info.value.code is ErrorCode.RATE_LIMITED
        assert len(angel_fake.fake.calls("login")) == 1
        assert [r.outcome for r in angel_fake.fake.calls("rms")] == ["rate_limited"]
        # Backing off: the next call is refused here, not sent to dig the hole deeper.
        with pytest.raises(ratelimit.RateLimited):
            await broker.get_balance()
        assert len(angel_fake.fake.calls("rms")) == 1
        assert await broker.is_session_valid()
    finally:
        await broker.close()


# -- orders ------------------------------------------------------------------------------
async def test_market_order_fills_and_updates_carry_the_fill(angel_fake: RunningFake) -> None:
    broker, updates = await started(angel_fake)
    try:
        order = market(2)
        broker_order_id = await broker.place_order(order)
        await updates.wait_for(
            lambda items: any(
                u.state.broker_order_id == broker_order_id and u.state.status is OrderStatus.FILLED
                for u in items
            )
        )
        filled = next(u for u in updates.items if u.state.status is OrderStatus.FILLED)
        assert filled.state.client_order_id == order.client_order_id
        assert filled.config_id == broker.config.config_id
        assert sum(f.quantity for f in filled.fills) == 2
        assert {f.client_order_id for f in filled.fills} == {order.client_order_id}
        placed = angel_fake.fake.calls("place_order")
        assert len(placed) == 1
        assert placed[0].body["ordertag"] == order.client_order_id[1:]
        assert placed[0].body["tradingsymbol"] == "SBIN-EQ"
        state = await broker.get_order(broker_order_id)
        assert (state.status, state.filled_quantity, state.symbol) == (
            OrderStatus.FILLED,
            2,
            "SBIN",
        )
        trades = await broker.get_trades()
        assert sum(t.quantity for t in trades if t.broker_order_id == broker_order_id) == 2
        found = await broker.find_order_by_client_id(order.client_order_id)
        assert found is not None and found.broker_order_id == broker_order_id
        assert await broker.find_order_by_client_id(new_order_id()) is None
        positions = await broker.get_positions()
        assert [(p["symbol"], p["quantity"]) for p in positions] == [("SBIN", 2)]
    finally:
        await broker.close()


async def test_limit_order_modify_cancel(angel_fake: RunningFake) -> None:
    broker, updates = await started(angel_fake)
    try:
        order = limit_below(angel_fake, 3)
        broker_order_id = await broker.place_order(order)
        await updates.wait_for(lambda items: "OPEN" in updates.statuses(broker_order_id))
        new_price = order.price - Decimal("1")  # type: ignore[operator]
        await broker.modify_order(broker_order_id, quantity=5, price=new_price)
        state = await broker.get_order(broker_order_id)
        assert (state.quantity, state.price, state.status) == (5, new_price, OrderStatus.OPEN)
        await broker.cancel_order(broker_order_id)
        await updates.wait_for(lambda items: "CANCELLED" in updates.statuses(broker_order_id))
        assert (await broker.get_order(broker_order_id)).status is OrderStatus.CANCELLED
        with pytest.raises(BrokerRejected) as info:
            await broker.get_order("999999999999999")
        assert info.value.code is ErrorCode.ORDER_NOT_FOUND
    finally:
        await broker.close()


async def test_unknown_symbol_is_instrument_not_found_without_placing(
    angel_fake: RunningFake,
) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        with pytest.raises(BrokerRejected) as info:
            await broker.place_order(market(symbol="NOSUCHSYMBOL"))
        assert info.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
        assert angel_fake.fake.calls("place_order") == []
    finally:
        await broker.close()


async def test_resolver_port_from_the_runtime_is_used(angel_fake: RunningFake) -> None:
    class Store:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []

        def resolve(self, exchange: str, symbol: str) -> tuple[str, str, int, Decimal] | None:
            self.asked.append((exchange, symbol))
            return ("SBIN-EQ", "3045", 1, Decimal("0.05")) if symbol == "SBIN" else None

    from trading_backend.brokers.base import BrokerContext

    store = Store()
    broker = make_broker(angel_fake, order_updates="off")
    broker._external_resolver = store
    broker.context = BrokerContext(extras={"instrument_resolver": store})
    try:
        await broker.authenticate()
        await broker.place_order(market())
        assert store.asked == [("NSE", "SBIN")]
        assert angel_fake.fake.calls("search_scrip") == []
    finally:
        await broker.close()


# -- faults on the order path ------------------------------------------------------------
async def test_place_timeout_with_the_order_placed_is_found_by_tag(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off", timeout=0.5)
    try:
        angel_fake.fake.faults.timeout_after_effect(hold=5)
        order = market()
        broker_order_id = await broker.place_order(order)
        placed = angel_fake.fake.orders(CLIENT_CODE)
        assert [o.orderid for o in placed] == [broker_order_id]
        assert len(angel_fake.fake.calls("place_order")) == 1  # never resent
    finally:
        await broker.close()


async def test_empty_place_body_is_found_by_tag(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.empty_body()
        broker_order_id = await broker.place_order(market())
        assert [o.orderid for o in angel_fake.fake.orders(CLIENT_CODE)] == [broker_order_id]
        assert [r.outcome for r in angel_fake.fake.calls("place_order")] == ["empty"]
    finally:
        await broker.close()


async def test_place_timeout_with_the_order_not_placed_is_broker_timeout(
    angel_fake: RunningFake,
) -> None:
    broker, _ = await started(angel_fake, order_updates="off", timeout=0.5)
    try:
        angel_fake.fake.faults.timeout(route="place_order", hold=5)
        order = market()
        with pytest.raises(BrokerTimeout) as info:
            await broker.place_order(order)
        assert info.value.code is ErrorCode.TIMEOUT
        assert angel_fake.fake.orders(CLIENT_CODE) == []
        assert len(angel_fake.fake.calls("place_order")) == 1
        assert len(angel_fake.fake.calls("order_book")) >= 2  # looked up, twice
        assert await broker.find_order_by_client_id(order.client_order_id) is None
    finally:
        await broker.close()


async def test_transient_error_on_place_is_looked_up_not_resent(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.error("AB2001", route="place_order")
        with pytest.raises(BrokerTimeout):
            await broker.place_order(market())
        assert len(angel_fake.fake.calls("place_order")) == 1
    finally:
        await broker.close()


async def test_business_rejection_is_raised_not_looked_up(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.error("AB1012", route="place_order", message="Invalid Product Type")
        with pytest.raises(BrokerRejected) as info:
            await broker.place_order(market())
        assert info.value.code is ErrorCode.INVALID_ORDER
        assert angel_fake.fake.calls("order_book") == angel_fake.fake.calls("order_book")[:1]
    finally:
        await broker.close()


async def test_5xx_on_reads_is_retried(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        angel_fake.fake.faults.http_error(times=1, route="positions")
        assert await broker.get_positions() == []
        assert [r.outcome for r in angel_fake.fake.calls("positions")] == ["http_503", "ok"]
        angel_fake.fake.faults.http_error(times=3, route="rms", status=502)
        with pytest.raises(BrokerUnavailable) as info:
            await broker.get_balance()
        assert info.value.code is ErrorCode.BROKER_UNAVAILABLE
        assert len(angel_fake.fake.calls("rms")) == 3
    finally:
        await broker.close()


async def test_latency_below_and_above_the_timeout(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off", timeout=0.5, read_retries=1)
    try:
        angel_fake.fake.faults.latency(0.2, route="rms")
        assert (await broker.get_balance())["available_cash"] > 0
        angel_fake.fake.faults.latency(2.0, route="rms")
        with pytest.raises(BrokerUnavailable):
            await broker.get_balance()
        assert len(angel_fake.fake.calls("rms")) == 3
    finally:
        await broker.close()


# -- order updates -----------------------------------------------------------------------
async def test_websocket_drop_polling_fallback_then_reconnection(angel_fake: RunningFake) -> None:
    broker = make_broker(angel_fake, poll_interval=0.1)
    seen_while: list[bool] = []
    updates = Updates(observe=lambda: bool(broker._stream and broker._stream.connected.is_set()))
    broker.set_order_update_handler(updates)
    await broker.authenticate()
    try:
        stream = broker._stream
        assert stream is not None
        await asyncio.wait_for(stream.connected.wait(), 5)
        stream.backoff_initial = 3.0  # keep it down long enough to see the polling
        order = limit_below(angel_fake, 2)
        broker_order_id = await broker.place_order(order)
        await updates.wait_for(lambda items: "OPEN" in updates.statuses(broker_order_id))
        assert angel_fake.fake.faults.drop_websockets() >= 1
        await asyncio.wait_for(stream.disconnected.wait(), 5)
        angel_fake.fake.set_price(*SBIN, order.price - Decimal("1"))  # type: ignore[operator]
        await updates.wait_for(lambda items: "FILLED" in updates.statuses(broker_order_id))
        index = next(
            i
            for i, u in enumerate(updates.items)
            if u.state.broker_order_id == broker_order_id and u.state.status is OrderStatus.FILLED
        )
        seen_while.append(updates.observed[index])
        assert seen_while == [False]  # delivered by the poller while the socket was down
        assert broker.polls >= 1
        assert sum(f.quantity for f in updates.items[index].fills) == 2
        await asyncio.wait_for(stream.connected.wait(), 10)
        assert stream.connections == 2
        # And the socket delivers again.
        second = await broker.place_order(market())
        await updates.wait_for(lambda items: "FILLED" in updates.statuses(second))
    finally:
        await broker.close()


# -- portfolio and market data -----------------------------------------------------------
async def test_portfolio_and_market_data_calls(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        balance = await broker.get_balance()
        assert balance["available_cash"] == Decimal("1000000") or balance["available_cash"] > 0
        assert isinstance(balance["available_cash"], Decimal)
        assert await broker.get_holdings() == [] or isinstance(await broker.get_holdings(), list)
        everything = await broker.get_all_holdings()
        assert set(everything) == {"holdings", "totals"}
        ltp = await broker.get_ltp("SBIN", "NSE")
        assert ltp["ltp"] == angel_fake.fake.ltp(*SBIN)
        data = await broker.get_market_data("SBIN", "NSE")
        assert data["ltp"] == angel_fake.fake.ltp(*SBIN) and data["symbol"] == "SBIN"
        quotes = await broker.quote([("NSE", "SBIN"), ("NSE", "RELIANCE")], "LTP")
        assert set(quotes) == {"NSE:SBIN", "NSE:RELIANCE"}
        found = await broker.search_scrip("NSE", "SBIN")
        assert {"exchange": "NSE", "tradingsymbol": "SBIN-EQ", "symboltoken": "3045"} in found
        with pytest.raises(BrokerRejected):
            await broker.quote([("NSE", "SBIN")], "DEPTH")
    finally:
        await broker.close()


async def test_quote_batches_fifty_tokens_per_request(angel_fake: RunningFake) -> None:
    from trading_backend.brokers.angel_one.resolver import ResolvedSymbol

    broker, _ = await started(angel_fake, order_updates="off")
    try:
        # 60 distinct instruments, all resolving to tokens the fake knows or not: the
        # batching is what is under test (unknown tokens are simply not fetched).
        symbols = [f"SYM{i}" for i in range(60)]
        for i, symbol in enumerate(symbols):
            token = "3045" if i == 0 else str(900000 + i)
            broker.search_resolver.remember("NSE", symbol, ResolvedSymbol(f"{symbol}-EQ", token))
        quotes = await broker.quote([("NSE", s) for s in symbols], "LTP")
        calls = angel_fake.fake.calls("quote")
        assert [len(c.body["exchangeTokens"]["NSE"]) for c in calls] == [50, 10]
        assert "NSE:SYM0" in quotes
    finally:
        await broker.close()


async def test_convert_position(angel_fake: RunningFake) -> None:
    broker, updates = await started(angel_fake)
    try:
        broker_order_id = await broker.place_order(market(3))
        await updates.wait_for(lambda items: "FILLED" in updates.statuses(broker_order_id))
        await broker.convert_position(
            "SBIN", "NSE", side="BUY", quantity=3, from_product="INTRADAY", to_product="DELIVERY"
        )
        call = angel_fake.fake.calls("convert_position")[0]
        assert call.outcome == "ok"
        positions = await broker.get_positions()
        assert [(p["product_type"], p["quantity"]) for p in positions if p["quantity"]] == [
            ("DELIVERY", 3)
        ]
    finally:
        await broker.close()


async def test_historical_candles_chunked_and_mapped(angel_fake: RunningFake) -> None:
    from datetime import UTC, datetime, timedelta

    broker, _ = await started(angel_fake, order_updates="off")
    try:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(days=45)
        bars = await broker.get_historical_candles("SBIN", "NSE", Timeframe.M1, start, end)
        calls = angel_fake.fake.calls("candles")
        assert len(calls) == 2  # 45 days of 1-minute bars: two 30-day requests
        assert {c.body["interval"] for c in calls} == {"ONE_MINUTE"}
        assert all(start <= b.start < end and b.end <= end + timedelta(minutes=1) for b in bars)
        assert [b.start for b in bars] == sorted({b.start for b in bars})
        assert all(isinstance(b.close, Decimal) for b in bars)
        with pytest.raises(BrokerRejected):
            await broker.get_historical_candles("SBIN", "NSE", "2h", start, end)  # type: ignore[arg-type]
    finally:
        await broker.close()


async def test_gtt_lifecycle(angel_fake: RunningFake) -> None:
    broker, _ = await started(angel_fake, order_updates="off")
    try:
        ltp = angel_fake.fake.ltp(*SBIN)
        trigger = tick_round(ltp * Decimal("0.9"))
        rule_id = await broker.gtt_create(
            "SBIN",
            "NSE",
            side="BUY",
            product_type="DELIVERY",
            price=trigger,
            quantity=2,
            trigger_price=trigger,
        )
        details = await broker.gtt_details(rule_id)
        assert (details["id"], details["symbol"], details["quantity"]) == (rule_id, "SBIN", 2)
        await broker.gtt_modify(
            rule_id, "SBIN", "NSE", price=trigger - 1, quantity=3, trigger_price=trigger - 1
        )
        assert (await broker.gtt_details(rule_id))["quantity"] == 3
        listed = await broker.gtt_list(["FORALL"])
        assert rule_id in {r["id"] for r in listed}
        await broker.gtt_cancel(rule_id, "SBIN", "NSE")
        assert str((await broker.gtt_details(rule_id))["status"]).upper() == "CANCELLED"
        with pytest.raises(BrokerRejected):
            await broker.gtt_create(
                "SBIN",
                "NFO",
                side="BUY",
                product_type="DELIVERY",
                price=Decimal(1),
                quantity=1,
                trigger_price=Decimal(1),
            )
    finally:
        await broker.close()
