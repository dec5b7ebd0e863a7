"""Re-encrypt every stored secret under the newest MASTER_ENCRYPTION_KEY.

Put the new key first (``MASTER_ENCRYPTION_KEY=new,old``), run ``trading-backend keys
rotate``, then drop the old key. Work is committed in batches, and re-encrypting a value
that is already under the newest key is harmless, so an interrupted run is simply run
again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from trading_backend.accounts.vault import Vault
from trading_backend.storage.models import (
    BrokerConfig,
    BrokerSessionRow,
    BrokerSessionTokens,
    User,
)

# (model, primary key column, encrypted column)
ENCRYPTED_COLUMNS: list[tuple[Any, Any, Any]] = [
    (BrokerConfig, BrokerConfig.id, BrokerConfig.credentials_encrypted),
    (BrokerSessionRow, BrokerSessionRow.id, BrokerSessionRow.session_data_encrypted),
    (BrokerSessionTokens, BrokerSessionTokens.config_id, BrokerSessionTokens.tokens_encrypted),
    (User, User.id, User.totp_secret_encrypted),
]


@dataclass(slots=True)
class RotationReport:
    rotated: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rotated.values())


async def count_secrets(db: async_sessionmaker[AsyncSession]) -> int:
    total = 0
    async with db() as session:
        for model, _, column in ENCRYPTED_COLUMNS:
            total += int(
                await session.scalar(
                    select(func.count()).select_from(model).where(column.is_not(None))
                )
                or 0
            )
    return total


async def rotate_secrets(
    db: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch: int = 200,
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    report = RotationReport()
    for model, key_column, column in ENCRYPTED_COLUMNS:
        done = 0
        last_key: str | None = None
        while True:
            async with db() as session, session.begin():
                query = select(model).where(column.is_not(None)).order_by(key_column).limit(batch)
                if last_key is not None:
                    query = query.where(key_column > last_key)
                rows = (await session.scalars(query)).all()
                for row in rows:
                    setattr(row, column.key, vault.rotate(getattr(row, column.key)))
                    last_key = getattr(row, key_column.key)
            done += len(rows)
            if progress is not None and rows:
                progress(len(rows))
            if len(rows) < batch:
                break
        report.rotated[model.__tablename__] = done
    return report
