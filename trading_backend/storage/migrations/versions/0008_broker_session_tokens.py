"""shared sessions: broker session tokens, encrypted, shared by every process

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import trading_backend.storage.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_session_tokens",
        sa.Column("config_id", sa.String(length=64), nullable=False),
        sa.Column("broker", sa.String(length=32), nullable=False),
        sa.Column("tokens_encrypted", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "expires_at", trading_backend.storage.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "updated_at", trading_backend.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["broker_configs.id"],
            name=op.f("fk_broker_session_tokens_config_id_broker_configs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("config_id", name=op.f("pk_broker_session_tokens")),
    )


def downgrade() -> None:
    op.drop_table("broker_session_tokens")
