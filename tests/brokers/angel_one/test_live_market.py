"""MARKET_DATA_SOURCE=angel_one end to end: the instrument master loaded from the fake's
scrip master, the hub fed by the account's SmartStream feed, and the risk engine valuing
orders at Angel's prices (a live feed tick, or a REST quote for an instrument nobody
watches), never at the simulated market's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.brokers.angel_one.test_adapter_support import credentials, fake_settings, tick_round
from trading_backend.api.app import create_app
from trading_backend.brokers.angel_one import packets, ratelimit
from trading_backend.brokers.angel_one.fake.server import RunningFake
from trading_backend.brokers.angel_one.protocol import SCRIP_MASTER_PATH
from trading_backend.domain import BrokerOrder, DomainError, ErrorCode, Exchange, OrderStatus
from trading_backend.marketdata.instruments import load_angel_one
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings
from trading_backend.strategies.base import Subscription, TickView

SBIN = ("NSE", "3045")
INFY = ("NSE", "1594")


@pytest.fixture(autouse=True)
def fresh_rate_budgets() -> Iterator[None]:
    ratelimit.reset_registry()
    yield
    ratelimit.reset_registry()


async def test_live_feed_prices_the_hub_and_the_risk_engine(
    settings: Settings, angel_fake: RunningFake
) -> None:
    fake = angel_fake.fake
    setup = Runtime(settings)
    await setup.start(worker=False, market=False, health_monitor=False)
    user = await setup.accounts.create_user("meera", "correct-horse-battery")
    config = await setup.accounts.create_config(
        user.id,
        "angel_one",
        "meera angel",
        credentials=credentials(),
        settings=fake_settings(angel_fake, timeout=2.0),
    )
    config_id = config["config_id"]
    summary = await load_angel_one(
        setup.instruments, url=f"{angel_fake.base_url}{SCRIP_MASTER_PATH}", in_thread=False
    )
    assert summary.rows_read > 0
    # Far from the simulated market's SBIN and INFY, so a paper-priced check would refuse.
    paper_sbin = setup.market.quote("SBIN", Exchange.NSE).ltp
    paper_infy = setup.market.quote("INFY", Exchange.NSE).ltp
    await setup.stop()

    live_settings = settings.model_copy(
        update={"market_data_source": "angel_one", "market_data_config_id": config_id}
    )
    rt = Runtime(live_settings)
    await rt.start(worker=True, market=True, health_monitor=False)
    try:
        await asyncio.wait_for(rt.live_feed_ready.wait(), 15)

        # Ticks: one SmartStream subscription for the hub's consumer, Angel's prices.
        ticks: list[TickView] = []
        got = asyncio.Event()

        async def on_tick(tick: TickView) -> None:
            ticks.append(tick)
            got.set()

        handle = await rt.market_hub.subscribe(
            Subscription("SBIN", Exchange.NSE, ticks=True), on_tick=on_tick
        )
        await fake.feed.wait_until(
            lambda: any(token == SBIN[1] for _, token, _ in fake.feed.subscriptions())
        )
        live_sbin = tick_round(paper_sbin * Decimal("1.5"))
        fake.set_price(*SBIN, live_sbin)
        await asyncio.wait_for(got.wait(), 10)
        assert ticks[-1].ltp == live_sbin
        assert {m for _, t, m in fake.feed.subscriptions() if t == SBIN[1]} == {
            packets.MODE_SNAP_QUOTE
        }

        # Risk: a limit 1% under Angel's price passes the band; 20% over is refused.
        ok = await rt.orders.place(
            user.id,
            config_id,
            BrokerOrder(
                "SBIN",
                "NSE",
                "BUY",
                "LIMIT",
                "INTRADAY",
                1,
                price=tick_round(live_sbin * Decimal("0.99")),
            ),
            wait=10,
        )
        assert ok.order.status is OrderStatus.OPEN
        with pytest.raises(DomainError) as refused:
            await rt.orders.place(
                user.id,
                config_id,
                BrokerOrder(
                    "SBIN",
                    "NSE",
                    "BUY",
                    "LIMIT",
                    "INTRADAY",
                    1,
                    price=tick_round(live_sbin * Decimal("1.2")),
                ),
            )
        assert refused.value.code is ErrorCode.RISK_REJECTED
        assert refused.value.details["rule"] == "price_band"

        # An instrument nobody watches is priced once through Angel's REST quote.
        live_infy = tick_round(paper_infy * Decimal("0.6"))
        fake.set_price(*INFY, live_infy)
        bought = await rt.orders.place(
            user.id,
            config_id,
            BrokerOrder(
                "INFY",
                "NSE",
                "BUY",
                "LIMIT",
                "INTRADAY",
                1,
                price=tick_round(live_infy * Decimal("1.01")),
            ),
            wait=10,
        )
        assert bought.order.status in (OrderStatus.OPEN, OrderStatus.FILLED)
        assert rt.live_market is not None
        assert rt.live_market.quote("INFY", Exchange.NSE).ltp == live_infy

        # The API reads the same live market: quotes at Angel's price, candles from
        # Angel's candle API, and no simulated option chain passed off as live.
        app = create_app(runtime=rt, start_background=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            login = await http.post(
                "/api/v1/auth/login",
                json={"username": "meera", "password": "correct-horse-battery"},
            )
            auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
            quote = await http.get("/api/v1/market/quote/SBIN?exchange=NSE", headers=auth)
            assert quote.status_code == 200, quote.text
            assert Decimal(str(quote.json()["ltp"])) == fake.ltp(*SBIN)
            before = len(fake.calls("candles"))
            candles = await http.get(
                "/api/v1/market/candles/SBIN?exchange=NSE&timeframe=1d&limit=5", headers=auth
            )
            assert candles.status_code == 200, candles.text
            assert len(fake.calls("candles")) > before
            chain = await http.get("/api/v1/market/option-chain/NIFTY", headers=auth)
            assert chain.status_code == 422
            assert chain.json()["error_code"] == "BROKER_NOT_SUPPORTED"
            unknown = await http.get("/api/v1/market/quote/NOPE?exchange=NSE", headers=auth)
            assert unknown.status_code == 404
            assert unknown.json()["error_code"] == "INSTRUMENT_NOT_FOUND"

        health = await rt.health()
        assert health["market"]["source"] == "angel_one"
        assert health["market"]["feed_connected"] is True
        await handle.close()
    finally:
        await rt.stop()


async def test_unknown_instrument_is_refused_by_the_live_hub(
    settings: Settings, angel_fake: RunningFake
) -> None:
    live_settings = settings.model_copy(
        update={"market_data_source": "angel_one", "market_data_config_id": "missing"}
    )
    rt = Runtime(live_settings)
    await rt.start(worker=False, market=False, health_monitor=False)
    try:
        with pytest.raises(DomainError) as unknown:
            await rt.market_hub.subscribe(Subscription("NOPE", Exchange.NSE, ticks=True))
        assert unknown.value.code is ErrorCode.INSTRUMENT_NOT_FOUND
        with pytest.raises(DomainError) as missing:
            await rt.market_data_session()
        assert missing.value.code is ErrorCode.CONFIG_NOT_FOUND
    finally:
        await rt.stop()
