"""portfolio analytics: equity and P&L snapshots per user, account and strategy

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import trading_backend.storage.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "portfolio_snapshots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("config_id", sa.String(length=64), nullable=True),
        sa.Column("strategy_id", sa.String(length=64), nullable=True),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column(
            "taken_at", trading_backend.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "capital", trading_backend.storage.types.Money(precision=28, scale=10), nullable=True
        ),
        sa.Column(
            "equity", trading_backend.storage.types.Money(precision=28, scale=10), nullable=False
        ),
        sa.Column(
            "realised", trading_backend.storage.types.Money(precision=28, scale=10), nullable=False
        ),
        sa.Column(
            "unrealised",
            trading_backend.storage.types.Money(precision=28, scale=10),
            nullable=False,
        ),
        sa.Column(
            "charges", trading_backend.storage.types.Money(precision=28, scale=10), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["broker_configs.id"],
            name=op.f("fk_portfolio_snapshots_config_id_broker_configs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_portfolio_snapshots_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portfolio_snapshots")),
        sa.UniqueConstraint("scope", "taken_at", name="uq_portfolio_snapshots_scope_taken_at"),
    )
    with op.batch_alter_table("portfolio_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_portfolio_snapshots_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("portfolio_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portfolio_snapshots_user_id"))
    op.drop_table("portfolio_snapshots")
