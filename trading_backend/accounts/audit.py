"""The tamper-evident audit log: a SHA-256 hash chain over ``audit_log``.

Every row carries ``prev_hash`` (the previous row's ``hash``; 64 zeros for the first row)
and ``hash = sha256(prev_hash + canonical JSON of the row)``, where the canonical JSON
covers ``id, user_id, action, target, data, ip, correlation_id`` and ``created_at`` (ISO
8601, UTC, microseconds), keys sorted, no whitespace. Editing a row changes its hash;
deleting or inserting a row in the middle breaks the next row's ``prev_hash``; deleting rows
at the tail is caught by the chain head (``audit_chain_head``, one row with id 1), which
records the id and hash of the newest row. :func:`verify_chain` checks all three.

The chain is a plain hash, not a keyed MAC: somebody who can rewrite the whole table *and*
the head can forge a consistent chain. Record the head hash that ``verify`` prints somewhere
else (a ticket, a log shipper) to pin history up to that point.

How rows are chained (design)
-----------------------------
``add_audit`` (``storage/repositories.py``) is called by many services inside their own
transactions, often early (order placement writes the order, its event, the queue entry and
the audit row, then commits). Chaining needs one total order across processes, so each
append must lock the chain head, and on PostgreSQL that row lock lives until the caller's
transaction ends. Taking it inside ``add_audit`` would hold it for the rest of the caller's
transaction and serialise every auditable action in the system for that long.

So ``add_audit`` only *stages* the row (in ``session.info``), and the chaining happens in a
``before_commit`` listener on the (sync) ``Session`` class, as late as it can be:

1. flush the caller's own pending changes first (without the lock);
2. lock the head: ``SELECT ... FOR UPDATE`` on PostgreSQL; elsewhere (SQLite) a no-op
   ``UPDATE`` of the head row, which takes SQLite's single write lock up front so a second
   process waits in the busy handler instead of failing to upgrade a read snapshot. In one
   process, SQLite writers are already serialised by the one-connection pool
   (``storage/database.py``). A missing head row (a truncated table) is created race-free
   with ``INSERT ... ON CONFLICT DO NOTHING``; migration 0003 seeds it normally;
3. insert the staged rows, so their ids come from the database *while the lock is held*:
   ids therefore increase in chain order across all processes;
4. chain them in id order, store ``prev_hash``/``hash`` and move the head forward;
5. the commit follows immediately. The lock is held for about four statements.

Because the rows, their hashes and the head all commit (or roll back) together, a
transaction that rolls back leaves nothing behind: no row, no gap, the head unchanged. Rows
staged inside a savepoint that is rolled back are dropped with it. SQLAlchemy runs sync
session events inside the greenlet of ``AsyncSession``, so the listener's SQL runs on the
caller's async connection (tests cover SQLite and PostgreSQL).

Consequence for callers: a staged row is not visible to queries in its own transaction
before commit (nothing in the code base reads audit rows back in the writing transaction).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from trading_backend.logging import correlation_id as current_correlation_id
from trading_backend.storage.models import AuditChainHeadRow, AuditLogRow, utcnow

log = structlog.get_logger(__name__)

GENESIS_HASH = "0" * 64
HEAD_ID = 1
_PENDING_KEY = "trading_backend.audit.pending"
REDACTED = "***"

# Keys whose values never belong in the audit log. Matched per word of the key
# (``new_password``, ``apiKey``, ``X-Api-Key`` ...); "pin" only as a whole word.
_SECRET_WORDS = re.compile(
    r"password|passwd|passphrase|secret|token|api_?key|private_?key|credential|(?:^|_)pin(?:_|$)"
)


# -- hashing -------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(row: AuditLogRow) -> str:
    """The row's hashed content as canonical JSON (sorted keys, no whitespace)."""
    return json.dumps(
        {
            "id": row.id,
            "user_id": row.user_id,
            "action": row.action,
            "target": row.target,
            "data": row.data if row.data is not None else {},
            "ip": row.ip,
            "correlation_id": row.correlation_id,
            "created_at": _iso(row.created_at),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def row_hash(prev_hash: str, row: AuditLogRow) -> str:
    return hashlib.sha256((prev_hash + canonical(row)).encode("utf-8")).hexdigest()


# -- staging (called by add_audit) -----------------------------------------------------------
def _is_secret_key(key: str) -> bool:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower().replace("-", "_")
    return bool(_SECRET_WORDS.search(snake))


def scrub(value: Any) -> Any:
    """Replace values under secret-looking keys, at any depth."""
    if isinstance(value, dict):
        return {
            str(k): (REDACTED if _is_secret_key(str(k)) else scrub(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _normalise(data: dict[str, Any] | None) -> dict[str, Any]:
    """Scrubbed, and exactly what the JSON column gives back (so the hash survives storage):
    tuples become lists, keys strings, anything else JSON cannot hold its ``str``."""
    cleaned = scrub(dict(data or {}))
    result: dict[str, Any] = json.loads(json.dumps(cleaned, default=str, allow_nan=False))
    return result


def _sync(session: AsyncSession | Session) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


def stage(
    session: AsyncSession | Session,
    action: str,
    *,
    user_id: str | None,
    target: str | None = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
    correlation_id: str | None = None,
) -> AuditLogRow:
    """Queue an audit row on ``session``; it is chained and inserted when the session's
    transaction commits (and dropped if it rolls back)."""
    sync = _sync(session)
    cid = correlation_id if correlation_id is not None else current_correlation_id.get()
    row = AuditLogRow(
        user_id=user_id,
        action=action,
        target=target,
        data=_normalise(data),
        ip=ip,
        correlation_id=cid[:40] if cid else None,
        created_at=utcnow(),
    )
    pending: list[tuple[AuditLogRow, SessionTransaction | None]] = sync.info.setdefault(
        _PENDING_KEY, []
    )
    pending.append((row, sync.get_nested_transaction()))
    return row


# -- chaining (session events) ---------------------------------------------------------------
def _insert_genesis(session: Session) -> None:
    values = {"id": HEAD_ID, "last_id": 0, "last_hash": GENESIS_HASH}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(pg_insert(AuditChainHeadRow).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite_insert(AuditChainHeadRow).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        session.execute(insert(AuditChainHeadRow).values(values))


def _lock_head(session: Session) -> tuple[int, str]:
    """Lock the chain head for the rest of the transaction; return (last_id, last_hash)."""
    head = select(AuditChainHeadRow.last_id, AuditChainHeadRow.last_hash).where(
        AuditChainHeadRow.id == HEAD_ID
    )
    if session.get_bind().dialect.name == "postgresql":
        for _ in range(2):
            found = session.execute(head.with_for_update()).first()
            if found is not None:
                return int(found.last_id), str(found.last_hash)
            _insert_genesis(session)
        raise RuntimeError("audit chain head row could not be created")  # pragma: no cover
    touch = (
        update(AuditChainHeadRow)
        .where(AuditChainHeadRow.id == HEAD_ID)
        .values(last_id=AuditChainHeadRow.last_id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(touch).rowcount == 0:  # type: ignore[attr-defined]
        _insert_genesis(session)
    found = session.execute(head).one()
    return int(found.last_id), str(found.last_hash)


def _chain_pending(session: Session) -> None:
    pending: list[tuple[AuditLogRow, SessionTransaction | None]] = session.info.pop(
        _PENDING_KEY, []
    )
    if not pending:
        return
    rows = [row for row, _ in pending]
    session.flush()  # the caller's own changes, before taking the lock
    last_id, last_hash = _lock_head(session)
    session.add_all(rows)
    session.flush()
    rows.sort(key=lambda r: r.id)
    if rows[0].id <= last_id:
        # Ids are handed out under the head lock, so this means rows were deleted at the
        # tail (SQLite reuses the largest rowid). Appending goes on; verify reports it.
        log.warning("audit_chain_id_not_after_head", head_id=last_id, new_id=rows[0].id)
    for row in rows:
        row.prev_hash = last_hash
        row.hash = last_hash = row_hash(last_hash, row)
    session.flush()
    session.execute(
        update(AuditChainHeadRow)
        .where(AuditChainHeadRow.id == HEAD_ID)
        .values(last_id=rows[-1].id, last_hash=last_hash)
        .execution_options(synchronize_session=False)
    )


def _descends_from(txn: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while txn is not None:
        if txn is ancestor:
            return True
        txn = txn.parent
    return False


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    # Also runs when a savepoint is released: its rows then join the outer transaction.
    _chain_pending(session)


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    pending = session.info.get(_PENDING_KEY)
    if not pending:
        return
    if previous.nested:
        pending[:] = [(row, txn) for row, txn in pending if not _descends_from(txn, previous)]
    else:
        pending.clear()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction: nothing survives it
        session.info.pop(_PENDING_KEY, None)


# -- verification ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    rows_checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    head_id: int | None = None
    head_hash: str | None = None


Progress = Callable[[int, int], None]


async def _read_head(db: async_sessionmaker[AsyncSession]) -> tuple[int, str] | None:
    async with db() as session:
        found = (
            await session.execute(
                select(AuditChainHeadRow.last_id, AuditChainHeadRow.last_hash).where(
                    AuditChainHeadRow.id == HEAD_ID
                )
            )
        ).first()
    return None if found is None else (int(found.last_id), str(found.last_hash))


async def verify_chain(
    db: async_sessionmaker[AsyncSession],
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> VerifyResult:
    """Walk the whole chain in id order, ``batch_size`` rows at a time (keyset pages, so
    memory stays flat), and report the first row that does not check out:

    * ``hash`` does not match the row's content: the row was edited;
    * ``prev_hash`` is not the previous row's hash: a row was deleted (or one inserted)
      just before it; a forged row with a correct hash is caught at the row after it;
    * the head disagrees with the last row: rows were deleted at the tail (``first_bad_id``
      is then the head's ``last_id``), or a row was appended without moving the head.

    Rows appended while the walk runs are verified too: the head is read after the last
    page, and the walk continues while the head is ahead of it.
    ``progress(rows_done, total)`` is called after every page.
    """
    async with db() as session:
        total = int(await session.scalar(select(func.count()).select_from(AuditLogRow)) or 0)
    done = 0
    last_id = 0
    last_hash = GENESIS_HASH
    while True:
        async with db() as session:
            page = (
                await session.scalars(
                    select(AuditLogRow)
                    .where(AuditLogRow.id > last_id)
                    .order_by(AuditLogRow.id)
                    .limit(batch_size)
                )
            ).all()
        if page:
            for row in page:
                bad = _check(row, last_hash, last_id)
                if bad is not None:
                    return VerifyResult(False, done, row.id, bad)
                last_id, last_hash = row.id, str(row.hash)
                done += 1
            total = max(total, done)
            if progress is not None:
                progress(done, total)
            if len(page) == batch_size:
                continue
        head = await _read_head(db)
        if head is None:
            if done == 0:
                return VerifyResult(True, 0, head_id=0, head_hash=GENESIS_HASH)
            return VerifyResult(False, done, last_id, "the chain head row is missing")
        head_id, head_hash = head
        if head_id > last_id:
            # Appended since the last page was read: go on, unless nothing is there.
            async with db() as session:
                newer = await session.scalar(
                    select(func.count()).select_from(AuditLogRow).where(AuditLogRow.id > last_id)
                )
            if newer:
                continue
            return VerifyResult(
                False,
                done,
                head_id,
                f"the chain head records row #{head_id} as the newest, but the newest row is"
                f" #{last_id}: rows were deleted at the end of the log",
            )
        if head_id < last_id:
            async with db() as session:
                beyond = await session.scalar(
                    select(func.min(AuditLogRow.id)).where(AuditLogRow.id > head_id)
                )
            return VerifyResult(
                False,
                done,
                int(beyond if beyond is not None else last_id),
                f"rows after #{head_id} (the chain head) are not part of the chain:"
                " rows were added behind its back",
            )
        if head_hash != last_hash:
            return VerifyResult(
                False,
                done,
                last_id,
                f"the chain head's hash does not match row #{last_id}: the head or the last"
                " row was changed",
            )
        if progress is not None:
            progress(done, done)
        return VerifyResult(True, done, head_id=head_id, head_hash=head_hash)


def _check(row: AuditLogRow, expected_prev: str, previous_id: int) -> str | None:
    previous = f"row #{previous_id}" if previous_id else "the start of the chain"
    if row.hash is None or row.prev_hash is None:
        return "row has no hash: it was not written through the audit chain"
    if row.prev_hash != expected_prev:
        return (
            f"prev_hash does not match {previous}: a row was deleted or inserted before it"
            " (or an earlier row's hash was rewritten)"
        )
    if row_hash(row.prev_hash, row) != row.hash:
        return "hash does not match the row's content: the row was modified"
    return None


# -- reading -----------------------------------------------------------------------------------
async def list_rows(
    db: async_sessionmaker[AsyncSession],
    *,
    user_id: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> Sequence[AuditLogRow]:
    """Newest first; ``before_id`` pages backwards (pass the smallest id already seen)."""
    query = select(AuditLogRow)
    if user_id is not None:
        query = query.where(AuditLogRow.user_id == user_id)
    if action is not None:
        query = query.where(AuditLogRow.action == action)
    if before_id is not None:
        query = query.where(AuditLogRow.id < before_id)
    async with db() as session:
        return (await session.scalars(query.order_by(AuditLogRow.id.desc()).limit(limit))).all()
