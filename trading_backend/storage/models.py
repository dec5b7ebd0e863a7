"""SQLAlchemy 2 models. Every user-owned row carries ``user_id`` so repositories can scope
each query to its caller. Schema changes go through Alembic (``storage/migrations``)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from trading_backend.storage.types import Money, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT autoincrement on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="USER")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Two-factor authentication (TOTP): the secret is encrypted with the vault.
    totp_secret_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Sessions issued before this moment are revoked (password change, "log out everywhere").
    sessions_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RefreshTokenRow(Base):
    """Rotating refresh tokens. Each use issues a child in the same family; presenting a
    token that was already used revokes the whole family (it was stolen)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RecoveryCodeRow(Base):
    """One-time 2FA recovery codes, stored hashed."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKeyRow(Base):
    """API keys: looked up by their public prefix, verified by a constant-time hash compare."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LoginAttemptRow(Base):
    """Failed and successful logins, for lock-out and back-off per account and per IP."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_at", "username", "created_at"),
        Index("ix_login_attempts_ip_at", "ip", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    success: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BrokerConfig(Base):
    __tablename__ = "broker_configs"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_broker_configs_user_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    broker: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    credentials_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BrokerSessionRow(Base):
    __tablename__ = "broker_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    config_id: Mapped[str] = mapped_column(
        ForeignKey("broker_configs.id", ondelete="CASCADE"), index=True
    )
    broker: Mapped[str] = mapped_column(String(32))
    health_status: Mapped[str] = mapped_column(String(16), default="healthy")
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    session_data_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# -- shared sessions (issue #7) --
class BrokerSessionTokens(Base):
    """A broker config's session tokens, shared by every process (``brokers.session_store``):
    encrypted with the vault, ``version`` bumped on every write so a process can tell that
    another one logged in since it last looked."""

    __tablename__ = "broker_session_tokens"

    config_id: Mapped[str] = mapped_column(
        ForeignKey("broker_configs.id", ondelete="CASCADE"), primary_key=True
    )
    broker: Mapped[str] = mapped_column(String(32))
    tokens_encrypted: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# -- end shared sessions


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("user_id", "client_order_id", name="uq_orders_user_client_order_id"),
        Index("ix_orders_user_config_status", "user_id", "config_id", "status"),
        Index("ix_orders_config_broker_order_id", "config_id", "broker_order_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    config_id: Mapped[str] = mapped_column(ForeignKey("broker_configs.id", ondelete="CASCADE"))
    client_order_id: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(8))
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(8))
    product_type: Mapped[str] = mapped_column(String(16))
    validity: Mapped[str] = mapped_column(String(8), default="DAY")
    quantity: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    trigger_price: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    tag: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The strategy that placed the order, if any (no foreign key: history outlives it).
    strategy_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(20))
    filled_quantity: Mapped[int] = mapped_column(Integer, default=0)
    average_price: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    broker_order_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    correlation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrderEventRow(Base):
    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    correlation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TradeRow(Base):
    __tablename__ = "trades"
    __table_args__ = (UniqueConstraint("config_id", "trade_id", name="uq_trades_config_trade_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    config_id: Mapped[str] = mapped_column(ForeignKey("broker_configs.id", ondelete="CASCADE"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    trade_id: Mapped[str] = mapped_column(String(64))
    broker_order_id: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(8))
    side: Mapped[str] = mapped_column(String(4))
    product_type: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(Money)
    charges: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PositionRow(Base):
    __tablename__ = "positions"
    __table_args__ = (
        UniqueConstraint(
            "config_id", "exchange", "symbol", "product_type", name="uq_positions_instrument"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    config_id: Mapped[str] = mapped_column(ForeignKey("broker_configs.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(8))
    product_type: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    average_price: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    realised_pnl: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    charges: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    buy_quantity: Mapped[int] = mapped_column(Integer, default=0)
    sell_quantity: Mapped[int] = mapped_column(Integer, default=0)
    buy_value: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    sell_value: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditLogRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Hash chain: hash = sha256(prev_hash + canonical row); any edit or deletion breaks it.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditChainHeadRow(Base):
    """The chain's tip (one row, id 1): appends lock it so they form one sequence even
    across processes."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class QueueEntryRow(Base):
    """The embedded durable queue: entries are written in the same transaction as the order
    they carry (a transactional outbox), so an accepted order cannot be lost by a crash."""

    __tablename__ = "queue_entries"
    __table_args__ = (Index("ix_queue_entries_ready", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(12), default="ready")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # -- queue (issue #7) --
    # Redis Streams mode: when the committed entry was relayed to its stream, and the stream
    # id it was first published under (NULL: not yet published; the relay picks it up).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stream_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # -- end queue


class BrokerStateRow(Base):
    """Opaque durable state for adapters (the paper exchange's book lives here)."""

    __tablename__ = "broker_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CandleRow(Base):
    """Historical bars, cached per broker: fetched once, read many times, importable and
    exportable as CSV."""

    __tablename__ = "candles"
    __table_args__ = (
        UniqueConstraint(
            "broker", "exchange", "symbol", "timeframe", "start", name="uq_candles_bar"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    broker: Mapped[str] = mapped_column(String(32))
    exchange: Mapped[str] = mapped_column(String(8))
    symbol: Mapped[str] = mapped_column(String(64))
    timeframe: Mapped[str] = mapped_column(String(4))
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    open: Mapped[Decimal] = mapped_column(Money)
    high: Mapped[Decimal] = mapped_column(Money)
    low: Mapped[Decimal] = mapped_column(Money)
    close: Mapped[Decimal] = mapped_column(Money)
    volume: Mapped[int] = mapped_column(BigInteger, default=0)


class StrategyRow(Base):
    """A user's strategy instance: its kind, validated parameters, the broker config it
    trades on, its lifecycle status and its persisted state (so a restart resumes it)."""

    __tablename__ = "strategies"
    __table_args__ = (
        UniqueConstraint("user_id", "name", name="uq_strategies_user_name"),
        Index("ix_strategies_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    config_id: Mapped[str] = mapped_column(ForeignKey("broker_configs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="STOPPED")
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StrategySignalRow(Base):
    """The strategy's log: signals it generated, orders it sent, errors it hit."""

    __tablename__ = "strategy_signals"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    strategy_id: Mapped[str] = mapped_column(
        ForeignKey("strategies.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # signal | order | error | info
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RiskLimitRow(Base):
    """Risk limits of one scope (``user:<id>`` or ``account:<config_id>``). ``kind`` is
    ``ceiling`` (set by an administrator: the most the user may have) or ``own`` (the
    user's own, only ever tighter than the ceiling). Absent rows mean the settings'
    defaults."""

    __tablename__ = "risk_limits"
    __table_args__ = (UniqueConstraint("scope", "kind", name="uq_risk_limits_scope_kind"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RiskStateRow(Base):
    """The trading state of a scope (``global``, ``user:<id>``, ``account:<config_id>``):
    ACTIVE, REDUCING (only risk-reducing orders) or HALTED, with why and who; kept so a
    restart does not lift a halt or a kill switch."""

    __tablename__ = "risk_states"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    kill_switch: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InstrumentRow(Base):
    """A broker's instrument master (Angel One's scrip master today), normalised.

    ``symbol`` is our name (``SBIN``, ``NIFTY``), ``broker_symbol`` and ``token`` the
    broker's own (``SBIN-EQ``, ``3045``), which orders and feeds use. A load replaces a
    broker's rows in one transaction (``marketdata.instruments.InstrumentStore.load``),
    so readers see the old set or the new one, never a mix.
    """

    __tablename__ = "instruments"
    # Unique indexes rather than constraints: SQLite cannot drop a constraint's index, and
    # the SQLite load drops and rebuilds these inside its transaction (3x faster). They
    # include ``generation`` (one per load) so that PostgreSQL can insert the new set
    # before deleting the old one in the same transaction without every insert checking
    # the row version it replaces (2-3x faster); only one generation is ever committed.
    __table_args__ = (
        Index("uq_instruments_symbol", "broker", "generation", "exchange", "symbol", unique=True),
        Index("uq_instruments_token", "broker", "generation", "exchange", "token", unique=True),
        # No other index: each one costs a load about 0.4 s on PostgreSQL (measured by
        # benchmarks/instrument_load.py), and lookups go through the in-memory resolver.
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    broker: Mapped[str] = mapped_column(String(32))
    exchange: Mapped[str] = mapped_column(String(8))
    symbol: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(32))
    broker_symbol: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    instrument_type: Mapped[str] = mapped_column(String(8))
    lot_size: Mapped[int] = mapped_column(Integer)
    tick_size: Mapped[Decimal] = mapped_column(Money)
    expiry: Mapped[date | None] = mapped_column(Date, nullable=True)
    strike: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    underlying: Mapped[str | None] = mapped_column(String(64), nullable=True)
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


# -- portfolio analytics (issue #8) --
class PortfolioSnapshotRow(Base):
    """A scope's equity and P&L at one moment, taken every PORTFOLIO_SNAPSHOT_SECONDS and
    on demand: the live equity curve (``analytics/portfolio.py``).

    ``scope`` names what the row measures, ``user:<id>`` (every account of the user),
    ``account:<config id>`` or ``strategy:<strategy id>``: a unique key that, unlike the
    nullable ``config_id``/``strategy_id`` pair, makes one row per scope and moment
    enforceable on every database. ``capital`` is the base the equity stands on (None:
    unknown, the equity is then the net P&L alone)."""

    __tablename__ = "portfolio_snapshots"
    __table_args__ = (
        UniqueConstraint("scope", "taken_at", name="uq_portfolio_snapshots_scope_taken_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    config_id: Mapped[str | None] = mapped_column(
        ForeignKey("broker_configs.id", ondelete="CASCADE"), nullable=True
    )
    # No foreign key: like orders, the history outlives a deleted strategy.
    strategy_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope: Mapped[str] = mapped_column(String(80))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    capital: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    equity: Mapped[Decimal] = mapped_column(Money)
    realised: Mapped[Decimal] = mapped_column(Money)
    unrealised: Mapped[Decimal] = mapped_column(Money)
    charges: Mapped[Decimal] = mapped_column(Money)


# -- end portfolio analytics


# -- backtests (issue #8) --
class BacktestRunRow(Base):
    """A backtest job of the REST API (``backtest/jobs.py``): its config, status
    (QUEUED -> RUNNING -> DONE/FAILED) and, once finished, the result as JSON
    (``BacktestResult.to_dict`` with the curve downsampled). ``runner`` is the API process
    running it and ``heartbeat_at`` its last sign of life: a job whose process died is
    told apart from one still running elsewhere, and marked FAILED ("interrupted")."""

    __tablename__ = "backtest_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="QUEUED")
    strategy: Mapped[str] = mapped_column(String(64))
    data_source: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# -- end backtests
