"""instruments: brokers' instrument masters (Angel One scrip master), normalised

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import trading_backend.storage.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instruments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("broker", sa.String(length=32), nullable=False),
        sa.Column("exchange", sa.String(length=8), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("broker_symbol", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("instrument_type", sa.String(length=8), nullable=False),
        sa.Column("lot_size", sa.Integer(), nullable=False),
        sa.Column(
            "tick_size",
            trading_backend.storage.types.Money(precision=28, scale=10),
            nullable=False,
        ),
        sa.Column("expiry", sa.Date(), nullable=True),
        sa.Column(
            "strike", trading_backend.storage.types.Money(precision=28, scale=10), nullable=True
        ),
        sa.Column("underlying", sa.String(length=64), nullable=True),
        sa.Column(
            "loaded_at", trading_backend.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instruments")),
    )
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.create_index(
            "uq_instruments_symbol", ["broker", "generation", "exchange", "symbol"], unique=True
        )
        batch_op.create_index(
            "uq_instruments_token", ["broker", "generation", "exchange", "token"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.drop_index("uq_instruments_token")
        batch_op.drop_index("uq_instruments_symbol")

    op.drop_table("instruments")
