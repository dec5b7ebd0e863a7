"""Settings from the environment (and ``.env``), with embedded defaults for development.

In development a missing secret (MASTER_ENCRYPTION_KEY, JWT_SECRET_KEY) is generated once
into ``<data dir>/secrets.env`` (mode 0600) so a fresh checkout just runs; with
ENVIRONMENT=production a missing secret is a start-up error instead.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import structlog
from cryptography.fernet import Fernet
from pydantic import Field, ValidationInfo, field_validator  # leases (issue #7): ValidationInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from trading_backend.marketdata.options import VolSmile

log = structlog.get_logger(__name__)

SECRETS_FILE = "secrets.env"


class ConfigurationError(RuntimeError):
    """The settings cannot work (e.g. a production deployment without its secrets)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, populate_by_name=True
    )

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Field(default=Path("data"), validation_alias="TRADING_BACKEND_DATA_DIR")
    database_url: str | None = None
    redis_url: str | None = None
    master_encryption_key: str | None = None
    jwt_secret_key: str | None = None
    jwt_algorithm: str = "HS256"
    access_token_minutes: int = 15
    refresh_token_days: int = 30

    # Accounts and security
    registration_mode: Literal["open", "admin_only"] = "open"
    require_admin_2fa: bool = False
    login_max_failures: int = 5  # per account before it locks
    login_lockout_minutes: float = 15.0  # first lock; doubles with each further failure
    login_ip_max_failures: int = 20  # per IP within the window below
    login_ip_window_minutes: float = 15.0
    rate_limit_api: str = "600/minute"  # per user or API key
    rate_limit_auth: str = "20/minute"  # per IP on /api/v1/auth/*
    rate_limit_orders: str = "20/second"  # per user on order placement, modify, cancel
    rate_limit_enabled: bool = True
    cors_origins: str = ""  # comma-separated; empty: no cross-origin access
    allowed_hosts: str = "*"  # comma-separated Host header values
    log_level: str = "INFO"
    log_json: bool = False

    host: str = "127.0.0.1"
    port: int = 8000

    # Angel One (used by a later issue's adapter and its setup command)
    angel_one_api_key: str | None = None
    angel_one_client_id: str | None = None
    angel_one_password: str | None = None
    angel_one_totp_secret: str | None = None

    # Instrument loading (seed settings)
    max_equity_instruments: int = 1000
    max_derivatives_instruments: int = 500
    load_all_instruments: bool = False
    max_total_instruments: int = 150_000
    # Angel One instrument master (trading_backend.marketdata.instruments): where to
    # download it, the daily refresh (a background task, off by default) at this IST
    # time, and how much smaller than the current table a new file may be before the load
    # is refused as truncated.
    angel_one_scrip_master_url: str = (
        "https://margincalculator.angelbroking.com/OpenAPI_File/files/OpenAPIScripMaster.json"
    )
    instruments_auto_refresh: bool = False
    instruments_refresh_time: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    instruments_download_timeout: float = Field(default=120.0, gt=0)
    instruments_min_ratio: float = Field(default=0.5, ge=0, le=1)

    # Where market data (ticks, bars, the prices the risk engine values orders at) comes
    # from: the simulated market ("paper"), or a broker's live feed, using the session of
    # the broker config MARKET_DATA_CONFIG_ID (an administrator's account) and that
    # broker's instrument master (`trading-backend instruments load`).
    market_data_source: Literal["paper", "angel_one"] = "paper"
    market_data_config_id: str | None = None
    # -- mdrole (issue #7) --
    # With a live source and REDIS_URL the feed runs in one process of the cluster (a
    # lease); every process that starts the market stands by for it unless this is false
    # (set it false everywhere but `trading-backend marketdata run` to keep the feed there).
    embedded_market_feed: bool = True
    # -- end mdrole

    # Paper market and order path
    market_seed: int = 42
    market_tick_seconds: float = 1.0
    order_wait_seconds: float = 5.0  # how long place waits for the broker's answer
    worker_concurrency: int = 4
    embedded_worker: bool = True  # run an order worker inside ``serve``
    health_check_seconds: float = 30.0
    # On shutdown the order worker finishes the orders it holds for at most this long.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    # -- queue (issue #7) --
    # The order queue: "embedded" (a table in the database, one process) or "redis" (Redis
    # Streams, any number of API and worker processes); "auto" picks redis when REDIS_URL
    # is set. QUEUE_PREFIX namespaces the keys (several deployments may share one Redis).
    # An entry idle QUEUE_CLAIM_IDLE_SECONDS in a dead worker's hands is taken over by a
    # live one; after QUEUE_MAX_ATTEMPTS failed deliveries it is dead-lettered.
    queue_backend: Literal["auto", "embedded", "redis"] = "auto"
    queue_prefix: str = Field(default="tb:", max_length=64)
    queue_claim_idle_seconds: float = Field(default=30.0, gt=0)
    queue_max_attempts: int = Field(default=5, ge=1)
    # How old a committed but unpublished entry must be before the relay publishes it (the
    # committing process normally does so at once; the relay covers crashes and outages).
    queue_relay_grace_seconds: float = Field(default=5.0, ge=0)
    # -- end queue
    # -- leases (issue #7) --
    # Cluster singletons (the session health monitor) hold a Redis lease
    # (`<QUEUE_PREFIX>lease:<name>`) for LEASE_TTL_SECONDS, renewed every
    # LEASE_RENEW_SECONDS; a standby takes over within about the ttl when the holder dies.
    lease_ttl_seconds: float = Field(default=10.0, gt=0)
    lease_renew_seconds: float = Field(default=3.0, gt=0)

    @field_validator("lease_renew_seconds")
    @classmethod
    def _renew_within_ttl(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("lease_ttl_seconds")
        if ttl is not None and value >= ttl:
            raise ValueError(
                f"LEASE_RENEW_SECONDS ({value}) must be below LEASE_TTL_SECONDS ({ttl})"
            )
        return value

    # -- end leases
    # -- cluster risk (issue #7) --
    # With REDIS_URL, each user's orders are risk-checked one at a time across the cluster
    # (a Redis lock `<QUEUE_PREFIX>risk:user:<id>`, held from the check until the order is
    # stored; RISK_LOCK_TTL_SECONDS bounds how long a crashed holder blocks, an order that
    # waits longer than RISK_LOCK_TIMEOUT_SECONDS is refused with 504 TIMEOUT). One process,
    # the risk monitor (a lease), judges loss limits, refreshing its books from the
    # database every RISK_MONITOR_SECONDS.
    risk_lock_ttl_seconds: float = Field(default=15.0, gt=0)
    risk_lock_timeout_seconds: float = Field(default=10.0, gt=0)
    risk_monitor_seconds: float = Field(default=2.0, gt=0)
    # -- end cluster risk
    # -- events (issue #7) --
    # The event bus carrying order updates and risk state changes to every process's
    # WebSockets: "local" (in-process, embedded mode), "redis" (pub/sub on channels
    # `<QUEUE_PREFIX>events:<topic>`), "auto": redis exactly when REDIS_URL is set.
    event_bus: Literal["auto", "local", "redis"] = "auto"
    # -- end events

    # Risk
    # "always": the paper market trades around the clock (try the system any time);
    # "exchange": orders need the exchange session (NSE 09:15-15:30 IST, holidays). Forced
    # to "exchange" in production.
    market_hours: Literal["always", "exchange"] = "always"
    # Default limits for every user, JSON: {"max_order_value": "500000", "daily_loss_limit":
    # "20000", ...}; names as in docs/risk.md. Administrators set ceilings per user.
    risk_default_limits: dict[str, Any] = Field(default_factory=dict)

    # Strategies
    embedded_strategies: bool = True  # host the strategy runner inside ``serve``
    strategies_dir: Path | None = None  # extra strategy modules (*.py) to load
    strategy_sync_seconds: float = Field(default=2.0, gt=0)  # pick up starts/stops by others

    # Paper option prices: Black-Scholes on a quadratic smile, per index ATM volatility
    option_atm_vol_nifty: float = Field(default=0.13, gt=0, le=2)
    option_atm_vol_banknifty: float = Field(default=0.15, gt=0, le=2)
    option_smile_skew: float = -0.5
    option_smile_curvature: float = Field(default=4.0, ge=0)
    create_demo_user: bool = True

    # -- metrics (issue #7) --
    # A plain HTTP Prometheus endpoint for the roles without an API (`worker`,
    # `strategies run`, `marketdata run`): 0 = off. Per process (each needs its own port;
    # `--metrics-port` overrides it). No authentication: keep METRICS_HOST on a private
    # address (the default answers on this machine only). `serve` has GET /metrics instead.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # -- end metrics
    # -- portfolio analytics (issue #8) --
    # Every PORTFOLIO_SNAPSHOT_SECONDS one process (a cluster singleton with REDIS_URL)
    # records each user's, account's and strategy's equity and P&L: the live equity
    # curves behind GET /api/v1/portfolio/analytics. 0 turns the job off (on-demand
    # snapshots still work).
    portfolio_snapshot_seconds: float = Field(default=300.0, ge=0)
    # -- end portfolio analytics
    # -- backtests (issue #8) --
    # Backtest jobs of the REST API (POST /api/v1/backtests): at most this many unfinished
    # per user (counted in the database, so across API instances) and running at once in
    # one API process; more is refused with 429 RATE_LIMITED.
    backtest_max_per_user: int = Field(default=2, ge=1)
    backtest_max_running: int = Field(default=4, ge=1)
    # -- end backtests

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        return normalise_database_url(value) if value else value

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'trading.db').resolve()}"

    # -- queue (issue #7) --
    @property
    def effective_queue_backend(self) -> str:
        """ "redis" or "embedded" ("auto": redis exactly when REDIS_URL is set)."""
        if self.queue_backend == "auto":
            return "redis" if self.redis_url else "embedded"
        return self.queue_backend

    # -- end queue

    @property
    def effective_market_hours(self) -> str:
        return "exchange" if self.is_production else self.market_hours

    def option_smiles(self) -> dict[str, VolSmile]:
        """The paper market's volatility smile per index."""
        return {
            name: VolSmile(
                atm_vol=atm, skew=self.option_smile_skew, curvature=self.option_smile_curvature
            )
            for name, atm in (
                ("NIFTY", self.option_atm_vol_nifty),
                ("BANKNIFTY", self.option_atm_vol_banknifty),
            )
        }

    def encryption_keys(self) -> list[str]:
        """MASTER_ENCRYPTION_KEY may hold several comma-separated keys, newest first."""
        assert self.master_encryption_key, "call ensure_secrets() first"
        return [k.strip() for k in self.master_encryption_key.split(",") if k.strip()]


def normalise_database_url(url: str) -> str:
    """Accept the usual ``postgresql://`` and ``sqlite://`` spellings; we need async drivers."""
    for prefix, replacement in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


def ensure_secrets(settings: Settings) -> Settings:
    """Fill missing secrets from (or into) the data directory; refuse in production."""
    missing = [
        name for name in ("master_encryption_key", "jwt_secret_key") if not getattr(settings, name)
    ]
    if not missing:
        return settings
    if settings.is_production:
        raise ConfigurationError(
            "ENVIRONMENT=production needs "
            + " and ".join(name.upper() for name in missing)
            + "; generate them with `trading-backend keys generate` and set them in the environment"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / SECRETS_FILE
    stored = _read_env_file(path)
    changed = False
    for name in missing:
        key = name.upper()
        if key not in stored:
            stored[key] = (
                Fernet.generate_key().decode()
                if name == "master_encryption_key"
                else secrets.token_urlsafe(48)
            )
            changed = True
            log.warning("generated_secret", name=key, file=str(path))
        setattr(settings, name, stored[key])
    if changed:
        _write_private(path, "".join(f"{k}={v}\n" for k, v in sorted(stored.items())))
    return settings


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return ensure_secrets(Settings())
