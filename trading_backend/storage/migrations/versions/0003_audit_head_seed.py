"""audit chain: seed the chain head, seal audit rows written before the chain existed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import trading_backend.storage.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 1000
GENESIS_HASH = "0" * 64

head = sa.table(
    "audit_chain_head",
    sa.column("id", sa.Integer()),
    sa.column("last_id", sa.BigInteger()),
    sa.column("last_hash", sa.String(64)),
)
audit_log = sa.table(
    "audit_log",
    sa.column("id", sa.BigInteger()),
    sa.column("user_id", sa.String(64)),
    sa.column("action", sa.String(64)),
    sa.column("target", sa.String(128)),
    sa.column("data", sa.JSON()),
    sa.column("ip", sa.String(64)),
    sa.column("correlation_id", sa.String(40)),
    sa.column("created_at", trading_backend.storage.types.UTCDateTime(timezone=True)),
    sa.column("prev_hash", sa.String(64)),
    sa.column("hash", sa.String(64)),
)


def upgrade() -> None:
    from trading_backend.accounts.audit import row_hash
    from trading_backend.storage.models import AuditLogRow

    bind = op.get_bind()
    if bind.execute(sa.select(head.c.id).where(head.c.id == 1)).first() is not None:
        return
    # Rows written before the chain existed are sealed in id order, as they stand now.
    last_id, last_hash = 0, GENESIS_HASH
    while True:
        rows = bind.execute(
            sa.select(audit_log)
            .where(audit_log.c.id > last_id)
            .order_by(audit_log.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for found in rows:
            row = AuditLogRow(
                id=found.id,
                user_id=found.user_id,
                action=found.action,
                target=found.target,
                data=found.data,
                ip=found.ip,
                correlation_id=found.correlation_id,
                created_at=found.created_at,
            )
            digest = row_hash(last_hash, row)
            bind.execute(
                sa.update(audit_log)
                .where(audit_log.c.id == found.id)
                .values(prev_hash=last_hash, hash=digest)
            )
            last_id, last_hash = found.id, digest
    bind.execute(sa.insert(head).values(id=1, last_id=last_id, last_hash=last_hash))


def downgrade() -> None:
    op.execute(sa.delete(head).where(head.c.id == 1))
