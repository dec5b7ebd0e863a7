"""The runtime: builds every service from the settings and runs the background tasks.

One ``Runtime`` per process. ``serve`` runs it with everything embedded (API, order worker,
simulated market, session health monitor, strategy runner); ``worker`` runs only the
worker part, ``strategies run`` only the strategy runner (with the market it needs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_backend.accounts.login import LoginService
from trading_backend.accounts.service import AccountService
from trading_backend.accounts.sessions import SessionService
from trading_backend.accounts.tokens import TokenService
from trading_backend.accounts.vault import Vault
from trading_backend.brokers.base import BrokerContext
from trading_backend.brokers.paper import SimulatedMarket
from trading_backend.brokers.sessions import BrokerSession, BrokerSessionManager
from trading_backend.domain import DomainError, ErrorCode, Exchange
from trading_backend.domain.calendar import next_session_close
from trading_backend.execution.events import EventBus, create_event_bus  # -- events (#7)
from trading_backend.execution.locks import KeyedLocks
from trading_backend.execution.order_feed import OrderFeed
from trading_backend.execution.order_service import OrderService
from trading_backend.execution.recorder import OrderRecorder
from trading_backend.execution.worker import OrderWorker
from trading_backend.risk import RiskCheck, RiskEngine, RiskLimits, TradingCalendar
from trading_backend.risk.service import RiskService
from trading_backend.settings import Settings, ensure_secrets
from trading_backend.storage.database import (
    check_database,
    create_engine,
    session_factory,
    upgrade_database,
)
from trading_backend.storage.state_store import DatabaseStateStore

if TYPE_CHECKING:
    from redis.asyncio import Redis  # leases (issue #7)

    from trading_backend.accounts.api_keys import ApiKeyService
    from trading_backend.accounts.two_factor import TwoFactorService
    from trading_backend.analytics.portfolio import PortfolioService  # portfolio (#8)
    from trading_backend.backtest.jobs import BacktestJobs  # backtests (#8)
    from trading_backend.execution.leases import Lease  # leases (issue #7)
    from trading_backend.marketdata.candles import CandleService, Fetch
    from trading_backend.marketdata.distribution import MarketDistribution  # mdrole (#7)
    from trading_backend.marketdata.hub import MarketHub
    from trading_backend.marketdata.instruments import InstrumentStore
    from trading_backend.marketdata.live import LiveMarket
    from trading_backend.marketdata.reader import MarketDataReader
    from trading_backend.strategies.registry import StrategyRegistry
    from trading_backend.strategies.runner import StrategyRunner
    from trading_backend.strategies.service import StrategyService

log = structlog.get_logger(__name__)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        risk: RiskCheck | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``clock``: the paper market's clock (tests drive time with it)."""
        self._clock = clock
        self.settings = ensure_secrets(settings)
        self.engine: AsyncEngine = create_engine(settings.effective_database_url)
        self.db = session_factory(self.engine)
        self.vault = Vault(settings.encryption_keys())
        self.accounts = AccountService(self.db, self.vault)
        assert settings.jwt_secret_key is not None
        self.tokens = TokenService(
            settings.jwt_secret_key, settings.jwt_algorithm, settings.access_token_minutes
        )
        self.auth_sessions = SessionService(self.db, self.tokens, settings.refresh_token_days)
        self.logins = LoginService(
            self.db,
            self.auth_sessions,
            self._second_factor,
            max_failures=settings.login_max_failures,
            lockout_minutes=settings.login_lockout_minutes,
            ip_max_failures=settings.login_ip_max_failures,
            ip_window_minutes=settings.login_ip_window_minutes,
        )
        self.market = SimulatedMarket(
            seed=settings.market_seed, smiles=settings.option_smiles(), clock=clock
        )
        self.broker_context = BrokerContext(
            market=self.market, state_store=DatabaseStateStore(self.db)
        )
        # Real adapters map our symbols to their tokens through the instrument master.
        self.broker_context.extras["instrument_resolver"] = self.instruments.resolver("angel_one")
        self.live_market: LiveMarket | None = None
        if settings.market_data_source != "paper":
            from trading_backend.marketdata.live import FeedUpstream, LiveMarket

            resolver = self.instruments.resolver(settings.market_data_source)
            self.live_market = LiveMarket(resolver, fetch=self._live_quote, clock=clock)
            self.feed_upstream = FeedUpstream(resolver)
        self._live_feed: Any = None
        self.live_feed_ready = asyncio.Event()  # set once the live feed serves the hub
        self.locks = KeyedLocks()
        # -- events (issue #7): order updates and risk state changes for every process
        self.events: EventBus = create_event_bus(
            settings.event_bus, settings.redis_url, prefix=f"{settings.queue_prefix}events:"
        )
        self.order_feed = OrderFeed(self.events)
        # -- end events
        self.recorder = OrderRecorder(self.db, self.locks)
        self.recorder.add_listener(self.order_feed.publish)
        # -- shared sessions (issue #7): logins serialised per broker account across
        # processes (a Redis lock with REDIS_URL); tokens shared through the database
        from trading_backend.brokers.session_store import LoginLocks

        self.sessions = BrokerSessionManager(
            self.db,
            self.vault,
            self.broker_context,
            on_update=self.recorder.handle_update,
            login_locks=LoginLocks(settings.redis_url, prefix=settings.queue_prefix),
        )
        # -- end shared sessions
        # -- queue (issue #7): QUEUE_BACKEND (auto: Redis Streams when REDIS_URL is set)
        from trading_backend.execution.redis_queue import build_queue

        self.queue = build_queue(settings, self.db)
        # -- end queue
        self.risk_engine = RiskEngine(
            default_limits=RiskLimits.from_dict(settings.risk_default_limits),
            calendar=(
                TradingCalendar.always_open()
                if settings.effective_market_hours == "always"
                else None
            ),
        )
        self.risk_service = RiskService(
            self.db,
            self.risk_engine,
            self.market_view,
            self.sessions,
            lambda: self.market_hub,
            clock=clock,
            stop_strategies=self._stop_strategies,
        )
        # -- events (issue #7): trading-state changes go to the users' WebSockets
        self.risk_service.state_listeners.append(
            lambda change: self.events.publish("risk", change.as_payload())
        )
        # -- end events
        # -- cluster risk (issue #7): users' checks serialised across processes; loss
        # limits judged by the risk monitor's lease holder only
        if settings.redis_url:
            self.risk_service.user_lock = self._risk_user_lock
            self.risk_service.acts_on_breaches = False
        # -- end cluster risk
        self.risk: RiskCheck = risk or self.risk_service
        self.orders = OrderService(self.db, self.queue, self.risk, self.recorder, self.locks)
        self.risk_service.orders = self.orders
        self.recorder.add_listener(self.risk_service.on_order)
        self.worker = OrderWorker(
            self.db,
            self.queue,
            self.sessions,
            self.recorder,
            self.locks,
            concurrency=settings.worker_concurrency,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner_task: asyncio.Task[Any] | None = None
        self._stop = asyncio.Event()
        self.started = False
        # Whether this process hosts the strategies (see ``strategies.runner``); decided
        # in ``start`` before anything touches ``strategy_runner``.
        self.hosts_strategies = False

    @cached_property
    def two_factor(self) -> TwoFactorService:
        from trading_backend.accounts.two_factor import TwoFactorService

        return TwoFactorService(self.db, self.vault)

    @cached_property
    def api_keys(self) -> ApiKeyService:
        from trading_backend.accounts.api_keys import ApiKeyService

        return ApiKeyService(self.db)

    @cached_property
    def instruments(self) -> InstrumentStore:
        """Brokers' instrument masters (Angel One's scrip master): search and tokens."""
        from trading_backend.marketdata.instruments import InstrumentStore

        return InstrumentStore(self.db, min_ratio=self.settings.instruments_min_ratio)

    @property
    def market_view(self) -> Any:
        """The market the API and the risk engine read instruments and quotes from: the
        live one with a broker market-data source, else the simulated one."""
        return self.live_market or self.market

    @cached_property
    def market_hub(self) -> MarketHub:
        """Shared, reference-counted market subscriptions (strategies, WebSockets)."""
        from trading_backend.marketdata.hub import MarketHub

        if self.live_market is not None:
            return MarketHub(self.market, self.feed_upstream, paper_prices=False)
        return MarketHub(self.market)

    @cached_property
    def candles(self) -> CandleService:
        """Historical candles, cached in the database."""
        from trading_backend.marketdata.candles import CandleService

        return CandleService(self.db, clock=self._clock)

    @cached_property
    def history_source(self) -> Fetch:
        """Where missing candles come from: the market's broker (the paper broker's
        synthetic history today), public data needing no user's session."""
        from trading_backend.brokers.base import BrokerConfigData
        from trading_backend.brokers.paper import PaperBroker

        if self.live_market is not None:

            async def from_broker(*args: Any) -> Any:
                session = await self.market_data_session()
                return await session.broker.get_historical_candles(*args)

            return from_broker
        broker = PaperBroker(
            BrokerConfigData(config_id="market-history", user_id="system", broker="paper"),
            self.broker_context,
        )
        return broker.get_historical_candles

    @cached_property
    def market_reader(self) -> MarketDataReader:
        """Quotes, recent bars (topped up from the candle cache) and option chains for
        strategies."""
        from trading_backend.marketdata.reader import MarketDataReader, candle_history

        source = self.settings.market_data_source
        history = candle_history(self.candles, source, self.history_source)
        return MarketDataReader(self.market_view, self.market_hub, history)

    # -- a broker's live market data (MARKET_DATA_SOURCE) ---------------------------------
    async def market_data_session(self) -> BrokerSession:
        """The session of MARKET_DATA_CONFIG_ID, which feeds everybody's market data
        (the broker limits feed connections per account, so one account serves all)."""
        from sqlalchemy import select

        from trading_backend.storage.models import BrokerConfig

        config_id = self.settings.market_data_config_id
        if not config_id:
            raise DomainError(
                "MARKET_DATA_CONFIG_ID must name the broker config whose session feeds "
                f"market data when MARKET_DATA_SOURCE={self.settings.market_data_source}",
                ErrorCode.VALIDATION_ERROR,
            )
        async with self.db() as db:
            row = await db.scalar(select(BrokerConfig).where(BrokerConfig.id == config_id))
        if row is None or row.broker != self.settings.market_data_source:
            raise DomainError(
                f"MARKET_DATA_CONFIG_ID {config_id!r} is not an active "
                f"{self.settings.market_data_source} broker config",
                ErrorCode.CONFIG_NOT_FOUND,
            )
        return await self.sessions.open(row.user_id, row.id)

    async def _live_quote(self, symbol: str, exchange: Exchange) -> dict[str, Any]:
        session = await self.market_data_session()
        data: dict[str, Any] = await session.broker.get_market_data(symbol, exchange.value)
        return data

    # -- mdrole (issue #7): the live feed, alone (embedded) or as a cluster singleton --
    @cached_property
    def market_distribution(self) -> MarketDistribution | None:
        """With a live source, REDIS_URL and the Redis event bus: the shared feed's local
        part (quotes from the holder, this process's watched instruments to it), see
        ``marketdata.distribution``; None otherwise (every process then runs its own feed,
        which is right for a single process only)."""
        if self.live_market is None or not self.events.remote or self.lease_redis is None:
            return None
        from trading_backend.marketdata.distribution import MarketDistribution

        live, hub = self.live_market, self.market_hub

        async def apply(quotes: list[Any]) -> None:
            await live.record(quotes)
            await hub.publish(quotes)

        return MarketDistribution(
            self.events,
            self.lease_redis,
            feed=self.settings.market_data_config_id or "unconfigured",
            prefix=self.settings.queue_prefix,
            sink=apply,
            refresh=self.settings.lease_renew_seconds,
            ttl=self.settings.lease_ttl_seconds,
        )

    async def _open_live_feed(self, sink: Callable[[Any], Awaitable[None]]) -> Any:
        """Log in the market-data account and open its feed, its quotes going to ``sink``;
        retried with back-off while the broker or the config is not usable. Returns the
        ``AngelOneFeedUpstream`` (its ``feed`` running), or None once ``stop()`` is set."""
        from trading_backend.brokers.angel_one.feed import AngelOneFeed, FeedCredentials
        from trading_backend.marketdata.feeds import AngelOneFeedUpstream

        assert self.live_market is not None
        resolver = self.live_market.resolver

        async def credentials() -> FeedCredentials:
            session = await self.market_data_session()
            if not await session.broker.is_session_valid():
                await session.broker.authenticate()
            found = session.broker.feed_credentials()
            return FeedCredentials(
                client_code=found["client_code"],
                feed_token=found["feed_token"],
                api_key=found["api_key"],
                auth_token=found["jwt"],
            )

        async def resolve(key: str) -> tuple[str | int, str] | None:
            found = resolver.resolve_key(key)
            return (found[0].value, found[1]) if found is not None else None

        delay = 1.0
        while not self._stop.is_set():
            try:
                session = await self.market_data_session()
                url = session.broker.feed_credentials()["url"]
                feed = AngelOneFeed(await credentials(), url=url, refresh_credentials=credentials)
                upstream = AngelOneFeedUpstream(feed, resolve)
                upstream.bind(sink)
                await feed.start()
            except Exception as exc:  # noqa: BLE001 - logged and retried, never fatal
                message = exc.message if isinstance(exc, DomainError) else type(exc).__name__
                log.warning("live_feed_start_failed", error=message, retry_in=delay)
                await self._wait_stop(delay)
                delay = min(delay * 2, 60.0)
                continue
            return upstream
        return None

    async def _run_live_feed(self) -> None:
        """Embedded mode: this process's own feed becomes its hub's upstream."""
        assert self.live_market is not None
        hub, live = self.market_hub, self.live_market

        async def sink(quotes: Any) -> None:
            quotes = list(quotes)
            await live.record(quotes)
            await hub.publish(quotes)

        upstream = await self._open_live_feed(sink)
        if upstream is None:
            return
        self._live_feed = upstream.feed
        await self.feed_upstream.attach(upstream)
        self.live_feed_ready.set()
        log.info("live_feed_started", source=self.settings.market_data_source)

    async def _hold_live_feed(self, token: int) -> None:
        """The feed singleton's work while this process holds ``feed:<config id>``: open
        the feed, apply its quotes here and publish them to the cluster, subscribe what
        the cluster watches; the feed is closed when the lease is lost or at shutdown."""
        distribution = self.market_distribution
        assert self.live_market is not None and distribution is not None
        hub, live = self.market_hub, self.live_market

        async def sink(quotes: Any) -> None:
            quotes = list(quotes)
            distribution.publish(quotes, token)
            await live.record(quotes)
            await hub.publish(quotes)

        upstream = await self._open_live_feed(sink)
        if upstream is None:
            return
        self._live_feed = upstream.feed
        self.live_feed_ready.set()
        log.info("live_feed_started", source=self.settings.market_data_source, token=token)
        try:
            await distribution.follow_wants(upstream, token)
        finally:
            self.live_feed_ready.clear()
            self._live_feed = None
            with contextlib.suppress(Exception):
                await upstream.feed.close()
            log.info("live_feed_stopped", token=token)

    async def _start_live_feed(self, *, market: bool, feed: bool) -> None:
        """Embedded: this process runs its own feed (with ``feed``). Cluster (Redis): every
        process with a market receives the holder's quotes and publishes what its hub
        watches; those with ``feed`` stand by for the lease ``feed:<config id>``."""
        distribution = self.market_distribution if (market or feed) else None
        if distribution is None:
            if feed:
                self._spawn(self._run_live_feed(), "live-feed")
            return
        await distribution.start()
        await self.feed_upstream.attach(distribution.wanted)
        if feed:
            name = f"feed:{self.settings.market_data_config_id or 'unconfigured'}"
            self._spawn(self._run_singleton(name, self._hold_live_feed), "live-feed")

    # -- end mdrole

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- dbdown (issue #7): the order worker outlives a database outage
    @cached_property
    def worker_failed(self) -> asyncio.Event:
        """Set each time the order worker's loop failed and is about to start again (tests
        wait on it; clear it to wait for the next one)."""
        return asyncio.Event()

    async def _run_worker(self, first_delay: float = 0.5, max_delay: float = 5.0) -> None:
        """The order worker's loop, started again after it failed (PostgreSQL away: claiming
        an entry raises) with back-off, until ``stop()``. Without this the task would end
        and orders accepted after the database came back would wait for a restart."""
        delay = first_delay
        while not self._stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                await self.worker.run(self._stop)
                return
            except Exception as exc:  # noqa: BLE001 - logged and retried, never fatal
                if asyncio.get_running_loop().time() - started > 60:
                    delay = first_delay  # a fresh failure after a long healthy run
                log.warning("order_worker_failed", error=type(exc).__name__, retry_in=delay)
                self.worker_failed.set()
                await self._wait_stop(delay)
                delay = min(delay * 2, max_delay)

    # -- end dbdown

    @cached_property
    def strategy_registry(self) -> StrategyRegistry:
        """Built-ins, entry-point strategies and ``STRATEGIES_DIR``."""
        from trading_backend.strategies.registry import StrategyRegistry

        return StrategyRegistry(self.settings.strategies_dir)

    @cached_property
    def strategy_runner(self) -> StrategyRunner:
        """Hosting in the process that runs strategies; elsewhere start and stop only
        change the row and the hosting process's sync loop acts on it."""
        from trading_backend.strategies.runner import StrategyRunner

        return StrategyRunner(
            self.db,
            self.strategy_registry,
            self.market_hub,
            self.market_reader,
            self.orders,
            self.recorder,
            order_wait=self.settings.order_wait_seconds,
            hosting=self.hosts_strategies,
        )

    @cached_property
    def strategies(self) -> StrategyService:
        from trading_backend.strategies.service import StrategyService

        return StrategyService(self.db, self.strategy_registry, self.strategy_runner)

    async def _stop_strategies(self, user_id: str | None, config_id: str | None) -> int:
        """Stop the RUNNING strategies of a user, an account, or everyone (kill switch)."""
        from sqlalchemy import select

        from trading_backend.storage.models import StrategyRow

        query = select(StrategyRow.id).where(StrategyRow.status == "RUNNING")
        if user_id is not None:
            query = query.where(StrategyRow.user_id == user_id)
        if config_id is not None:
            query = query.where(StrategyRow.config_id == config_id)
        async with self.db() as session:
            ids = list((await session.scalars(query)).all())
        for strategy_id in ids:
            await self.strategy_runner.stop_strategy(strategy_id)
        return len(ids)

    async def _second_factor(self, user_id: str, code: str, ip: str | None) -> None:
        await self.two_factor.verify_second_factor(user_id, code, ip=ip)

    @property
    def background_tasks(self) -> int:
        return sum(not t.done() for t in self._tasks)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    # -- leases (issue #7) --
    @cached_property
    def leases(self) -> dict[str, Lease]:
        """The cluster singletons' leases by name (``session-health``), as built so far."""
        return {}

    @cached_property
    def lease_holder_id(self) -> str:
        """This process in a lease's value: host, pid and a random suffix (several Runtime
        instances may share a process in tests)."""
        import os
        import socket
        import uuid

        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @cached_property
    def lease_redis(self) -> Redis | None:
        """The Redis client the leases use (None without REDIS_URL: embedded mode)."""
        if not self.settings.redis_url:
            return None
        from redis.asyncio import Redis

        return Redis.from_url(self.settings.redis_url)

    def lease(self, name: str) -> Lease:
        """The lease ``<QUEUE_PREFIX>lease:<name>`` with REDIS_URL, else a ``LocalLease``."""
        if name not in self.leases:
            from trading_backend.execution.leases import LocalLease, RedisLease

            key = f"{self.settings.queue_prefix}lease:{name}"
            redis = self.lease_redis
            self.leases[name] = (
                LocalLease(key)
                if redis is None
                else RedisLease(
                    redis,
                    key,
                    self.lease_holder_id,
                    ttl=self.settings.lease_ttl_seconds,
                    renew_every=self.settings.lease_renew_seconds,
                )
            )
        return self.leases[name]

    # -- cluster risk (issue #7)
    def _risk_user_lock(self, user_id: str) -> AbstractAsyncContextManager[Any]:
        from trading_backend.execution.leases import RedisLock

        redis = self.lease_redis
        assert redis is not None  # set only with REDIS_URL
        return RedisLock(
            redis,
            f"{self.settings.queue_prefix}risk:user:{user_id}",
            ttl=self.settings.risk_lock_ttl_seconds,
            timeout=self.settings.risk_lock_timeout_seconds,
            backoff=0.002,
            max_backoff=0.05,
        )

    async def _risk_monitor(self, _token: int) -> None:
        """The cluster's risk monitor: loss limits, breaches, and the intraday square-off
        (once across the cluster, not once per worker)."""
        work = [self.risk_service.run_monitor(self.settings.risk_monitor_seconds)]
        square_off = self.risk_engine.default_limits.intraday_square_off
        if square_off is not None:
            work.append(self.risk_service.run_intraday_square_off(square_off))
        await asyncio.gather(*work)

    # -- end cluster risk

    async def _run_singleton(
        self, name: str, work: Callable[[int], Coroutine[Any, Any, object]]
    ) -> None:
        """Run ``work(fencing token)`` in one process of the cluster (standbys retry every
        renewal interval), until ``stop()``."""
        from trading_backend.execution.leases import run_singleton

        await run_singleton(
            self.lease(name), work, self._stop, retry_every=self.settings.lease_renew_seconds
        )

    # -- end leases

    # -- portfolio analytics (issue #8) --
    @cached_property
    def portfolio(self) -> PortfolioService:
        """Live P&L, equity snapshots and metrics per user, account and strategy."""
        from trading_backend.analytics.portfolio import PortfolioService

        return PortfolioService(self.db, self.market_view, clock=self._clock)

    # -- end portfolio analytics

    # -- backtests (issue #8) --
    @cached_property
    def backtests(self) -> BacktestJobs:
        """The REST API's backtest jobs run in this process (made on first use)."""
        from trading_backend.backtest.jobs import build_jobs

        return build_jobs(self)

    # -- end backtests

    async def start(
        self,
        *,
        migrate: bool = True,
        worker: bool = True,
        market: bool = True,
        health_monitor: bool = True,
        strategies: bool = False,
        market_feed: bool | None = None,  # -- mdrole (issue #7)
    ) -> None:
        """``strategies``: host the strategy runner here (resume RUNNING strategies, then
        follow start/stop requests from other processes). ``market_feed``: with a live
        market-data source, run (embedded) or stand by for (cluster) the broker feed;
        default: with ``market`` and EMBEDDED_MARKET_FEED."""
        if self.started:
            return
        if strategies and "strategy_runner" in self.__dict__:
            raise RuntimeError("the strategy runner was built before start(strategies=True)")
        self.hosts_strategies = strategies
        if migrate:
            await upgrade_database(self.engine)
        # Adapters (reconciliation below) and a live market need the instrument master.
        await self.instruments.resolver("angel_one").refresh()
        # -- events (issue #7): subscribed before anything publishes (a Redis that is down
        # does not stop the start; the bus keeps reconnecting)
        await self.events.start()
        # -- end events
        await self.risk_service.start()
        # -- queue (issue #7): Redis Streams: publish committed entries nobody published,
        # follow other processes' outcomes; recovery claims for this process's worker
        from trading_backend.execution.redis_queue import RedisStreamsQueue

        if isinstance(self.queue, RedisStreamsQueue):
            self.queue.consumer_name = self.worker.worker_id
            self._spawn(self.queue.run_relay(self._stop), "queue-relay")
            self._spawn(self.queue.run_outcome_listener(self._stop), "queue-outcomes")
        # -- end queue
        if worker:
            # Embedded mode: this process is the only worker, so anything claimed by a
            # previous run of it was interrupted: put it back, then ask brokers what happened.
            self.queue.has_local_worker = True
            recovered = await self.queue.recover()
            if recovered:
                log.warning("queue_entries_recovered", count=recovered)
            await self.worker.reconcile_all()
            self._spawn(self._run_worker(), "order-worker")  # -- dbdown (issue #7)
        if market:
            self._spawn(self.market.run(self.settings.market_tick_seconds), "paper-market")
        if market:
            self._spawn(self._expire_day_orders_at_each_close(), "session-close")
            square_off = self.risk_engine.default_limits.intraday_square_off
            if worker and square_off is not None and not self.settings.redis_url:
                self._spawn(
                    self.risk_service.run_intraday_square_off(square_off), "intraday-square-off"
                )
        # -- mdrole (issue #7): the live feed; shared through Redis when a cluster has it
        if self.live_market is not None:
            await self._start_live_feed(
                market=market,
                feed=(
                    (market and self.settings.embedded_market_feed)
                    if market_feed is None
                    else market_feed
                ),
            )
        # -- end mdrole
        # -- instruments (issue #6): daily Angel One scrip-master refresh, only when enabled
        if market and self.settings.instruments_auto_refresh:
            from trading_backend.marketdata.instruments import run_daily_refresh

            self._spawn(
                run_daily_refresh(self.instruments, self.settings, self._stop),
                "instruments-refresh",
            )
        # -- end instruments
        # -- cluster risk (issue #7): one risk monitor across the cluster
        if self.settings.redis_url:
            self._spawn(self._run_singleton("risk-monitor", self._risk_monitor), "risk-monitor")
        # -- end cluster risk
        if health_monitor:
            # -- leases (issue #7): one health monitor across the cluster (a Redis lease)
            interval = self.settings.health_check_seconds
            self._spawn(
                self._run_singleton(
                    "session-health", lambda _token: self.sessions.run_health_monitor(interval)
                ),
                "session-health",
            )
            # -- end leases
            # -- portfolio analytics (issue #8): equity snapshots, once across the cluster
            every = self.settings.portfolio_snapshot_seconds
            if every > 0:
                self._spawn(
                    self._run_singleton(
                        "portfolio-snapshots", lambda _token: self.portfolio.run_snapshots(every)
                    ),
                    "portfolio-snapshots",
                )
            # -- end portfolio analytics
        if strategies:
            runner = self.strategy_runner
            await runner.start()
            self._runner_task = asyncio.create_task(
                runner.run(self._stop, self.settings.strategy_sync_seconds), name="strategies"
            )
        self.started = True
        log.info("runtime_started", database=self.engine.url.render_as_string(hide_password=True))

    async def expire_day_orders(self, now: datetime | None = None) -> int:
        """Expire DAY orders at every open broker session; returns how many expired."""
        now = now or datetime.now(UTC)
        expired = 0
        for session in self.sessions.sessions():
            try:
                expired += len(await session.broker.expire_day_orders(now))
            except Exception:
                log.exception("expire_day_orders_failed", config_id=session.config_id)
        if expired:
            log.info("day_orders_expired", count=expired)
        return expired

    async def _expire_day_orders_at_each_close(self) -> None:
        while True:
            now = datetime.now(UTC)
            await asyncio.sleep((next_session_close(now) - now).total_seconds() + 1)
            await self.expire_day_orders()

    async def wait_for_signal(self, ready: Callable[[], object] | None = None) -> None:
        """Block until SIGINT or SIGTERM: how the ``worker`` and ``strategies run`` roles
        wait, so that a process manager's SIGTERM (Docker, PM2, systemd) stops them
        gracefully through ``stop()`` like Ctrl-C does."""
        import signal

        loop = asyncio.get_running_loop()
        received = asyncio.Event()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, received.set)
                installed.append(sig)
        if ready is not None:  # told only once a signal can no longer kill us uncleanly
            ready()
        try:
            await received.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        log.info("shutdown_signal_received")

    async def stop(self) -> None:
        self._stop.set()
        if self._runner_task is not None:
            # Strategies stop first (on_stop, state saved) while orders still flow.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._runner_task, timeout=30)
            self._runner_task = None
        # Graceful: the worker takes no new entry once ``_stop`` is set and finishes the
        # orders it holds (their outcome recorded, the entry acknowledged) before the rest
        # shuts down; only past SHUTDOWN_GRACE_SECONDS is it cancelled (its orders are then
        # reconciled at the next start, never resent).
        self.queue.notify()
        worker_tasks = [t for t in self._tasks if t.get_name() == "order-worker"]
        if worker_tasks:
            _, late = await asyncio.wait(worker_tasks, timeout=self.settings.shutdown_grace_seconds)
            if late:
                log.warning("worker_shutdown_grace_exceeded", in_flight=self.worker.in_flight)
        await self.risk_service.close()
        if "backtests" in self.__dict__:  # -- backtests (issue #8): running jobs end here
            await self.backtests.close()
        if "market_hub" in self.__dict__:
            await self.market_hub.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # -- queue (issue #7): entries read but not claimed go back; Redis disconnects
        from trading_backend.execution.redis_queue import RedisStreamsQueue

        if isinstance(self.queue, RedisStreamsQueue):
            await self.queue.close()
        # -- end queue
        # -- mdrole (issue #7): withdraw this process's watched instruments (before the
        # Redis client closes)
        distribution = self.__dict__.pop("market_distribution", None)
        if distribution is not None:
            with contextlib.suppress(Exception):
                await distribution.close()
        # -- end mdrole
        # -- leases (issue #7): singletons have released their leases above; close the client
        lease_redis = self.__dict__.pop("lease_redis", None)
        self.__dict__.pop("leases", None)
        if lease_redis is not None:
            with contextlib.suppress(Exception):
                await lease_redis.aclose()
        # -- end leases
        if self._live_feed is not None:
            with contextlib.suppress(Exception):
                await self._live_feed.close()
            self._live_feed = None
        await self.sessions.close_all()
        await self.events.close()  # -- events (issue #7): sends what is pending, disconnects
        await self.engine.dispose()
        self.started = False
        log.info("runtime_stopped")

    async def health(self) -> dict[str, Any]:
        database_ok = await check_database(self.engine)
        try:
            depth = await self.queue.depth() if database_ok else {}
            queue_ok = database_ok
        except Exception:  # noqa: BLE001 - reported in the health answer, not raised
            depth, queue_ok = {}, False
        status = self.sessions.system_status(self.background_tasks)
        healthy = database_ok and queue_ok
        distribution = self.__dict__.get("market_distribution")  # -- mdrole (issue #7)
        return {
            "status": "healthy" if healthy else "unhealthy",
            "database": {"ok": database_ok, "backend": self.engine.dialect.name},
            "queue": {
                "ok": queue_ok,
                "backend": getattr(self.queue, "backend", "embedded"),  # -- queue (issue #7)
                **depth,
            },
            "events": self.events.status(),  # -- events (issue #7)
            "broker_sessions": {
                "total": status["total_sessions"],
                "healthy": status["healthy_sessions"],
                "error": status["error_sessions"],
                "expired": status["expired_sessions"],
            },
            "market": {
                "source": self.settings.market_data_source,
                "ticks": self.market_view.tick_count,
                **(
                    {"feed_connected": bool(self._live_feed.connected)}
                    if self._live_feed is not None
                    else {}
                ),
                # -- mdrole (issue #7): the shared feed (holder here or not, batches)
                **(distribution.status() if distribution is not None else {}),
                # -- end mdrole
            },
        }
