"""Cluster singletons (a Redis lease with fencing tokens) and cross-process locks.

Why: in production several processes run the same code against one Redis, yet some jobs
must run once across the cluster: the session health monitor (two would re-login every
account twice, and brokers limit logins) and a broker account's market feed (two would
double the ticks and the broker's connection count). A *lease* is a Redis key with a
time-to-live: whoever sets it holds the job and renews it every ``renew_every`` seconds; if
the holder dies the key expires and a standby, retrying every ``retry_every`` seconds,
takes over within ``ttl + retry_every``.

A lease alone cannot stop a holder that was paused (a long GC pause, a stalled VM, a
network partition) from carrying on after its lease expired and a standby took over. So
every acquisition also takes a *fencing token*: ``INCR <name>:fence`` in the same Lua
script as the ``SET``, so each holder's token is strictly larger than every earlier
holder's, and the counter always equals the newest holder's token. Side effects are then
accepted only under the current token (see "Using the fencing token" below).

``run_singleton(lease, work, stop)`` is the loop every singleton uses: standby until the
lease is acquired, then run ``work(token)`` while renewing; when a renewal fails (the lease
was taken, or Redis stayed unreachable until the lease may have expired) the work is
cancelled at once (better no holder for a moment than two). ``LocalLease`` is always held
(token 1), so embedded mode runs the same code with no branches.

``RedisLock`` is for short critical sections across processes, e.g. serialising a broker
re-login per client code (brokers limit logins per second).

Using the fencing token
-----------------------
``work(token)`` receives its token. Before (or atomically with) each side effect it checks
that the token is still the current one:

* Redis writes: ``FencedWriter(redis, lease.name, token).execute("SET", key, value)`` runs
  the check and the command in one Lua script, so a stale holder's write is refused
  (``StaleFencingToken``) and never half-applied.
* Database writes: keep the token in the row the singleton owns and write with
  ``UPDATE ... SET ..., fence_token = :token WHERE id = :id AND fence_token <= :token``:
  the database itself refuses a write from an older holder, whatever Redis says.
* Calls to the outside world (a broker login, a feed subscription) cannot be fenced by
  the receiver: call ``await writer.ensure()`` right before them. Together with the work
  being cancelled as soon as a renewal fails this narrows the window to the length of one
  call; keep such calls idempotent where the broker allows it.

The scripts touch keys that are not all declared in ``KEYS`` (``FencedWriter.execute``), so
they assume a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from trading_backend.domain import DomainError, ErrorCode

__all__ = [
    "LEASE_HELD",
    "LEASE_LOST",
    "FencedWriter",
    "Lease",
    "LocalLease",
    "LockTimeout",
    "RedisLease",
    "RedisLock",
    "StaleFencingToken",
    "check_fence",
    "current_fence",
    "run_singleton",
]

log = structlog.get_logger(__name__)

LEASE_HELD = Gauge(
    "trading_backend_lease_held",
    "1 while this process holds the cluster lease (runs the singleton), else 0",
    ["lease"],
)
LEASE_LOST = Counter(
    "trading_backend_lease_lost_total",
    "Leases lost while held (taken over or Redis unreachable); the work was cancelled",
    ["lease"],
)

# What a failed round trip to Redis looks like: redis-py's own errors (connection,
# timeout), a raw socket error, or our own ``asyncio.wait_for`` deadline.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# KEYS[1] lease key, KEYS[2] fence counter; ARGV[1] holder id, ARGV[2] ttl in ms.
# Returns the new fencing token, or 0 when someone else holds the lease. The check, the
# INCR and the SET run atomically, so the token belongs to exactly this acquisition.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '#' .. token, 'PX', ARGV[2])
return token
"""

# Extend the ttl only while the key still holds our value (compare-and-pexpire).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Delete only our own lease or lock (compare-and-del).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] fence counter; ARGV[1] the writer's token; ARGV[2..] one Redis command, run only
# while the token is the current one.
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('STALE_FENCE')
end
return redis.call(unpack(ARGV, 2))
"""


class StaleFencingToken(DomainError):
    """A side effect was attempted under a fencing token that is no longer current: a newer
    holder has taken the lease, so this one must stop."""

    code = ErrorCode.CONFLICT


class LockTimeout(DomainError):
    """A ``RedisLock`` could not be acquired within its timeout."""

    code = ErrorCode.TIMEOUT


def _now() -> float:
    return asyncio.get_running_loop().time()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return int(value)


class Lease(Protocol):
    """What ``run_singleton`` needs of a lease (``RedisLease`` or ``LocalLease``)."""

    name: str
    held: asyncio.Event
    lost: asyncio.Event

    @property
    def fencing_token(self) -> int | None: ...

    async def acquire(self) -> int | None: ...

    async def keep_alive(self) -> None: ...

    async def release(self) -> bool: ...


class RedisLease:
    """One process's handle on the cluster-wide lease ``name`` (a Redis key).

    ``holder_id`` names this process in the key's value (``<holder>#<token>``) for
    operators; it should be unique per process (host, pid, a random suffix). ``held`` is
    set while this process believes it holds the lease; ``lost`` is set when a held lease
    was lost (not when it was released).

    The local view is conservative: the lease counts as valid only until ``ttl`` after
    the moment the last successful acquire/renew was *sent*, which is never later than
    the moment Redis expires it, so a holder stops believing before anyone else can
    acquire.
    """

    def __init__(
        self,
        redis: Redis,
        name: str,
        holder_id: str,
        ttl: float = 10.0,
        renew_every: float = 3.0,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        if not 0 < renew_every < ttl:
            raise ValueError(
                f"lease renew_every must be between 0 and the ttl ({ttl}), got {renew_every}"
            )
        if not name or not holder_id:
            raise ValueError("a lease needs a name and a holder id")
        self.redis = redis
        self.name = name
        self.holder_id = holder_id
        self.ttl = ttl
        self.renew_every = renew_every
        self.fence_key = f"{name}:fence"
        self.held = asyncio.Event()
        self.lost = asyncio.Event()
        self._token: int | None = None
        self._value: str | None = None
        self._valid_until = 0.0
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._renew_script = redis.register_script(_RENEW)
        self._release_script = redis.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"RedisLease({self.name!r}, holder={self.holder_id!r}, token={self._token})"

    @property
    def fencing_token(self) -> int | None:
        """The token of the current holding, or None while not held."""
        return self._token if self.held.is_set() else None

    @property
    def remaining(self) -> float:
        """Seconds this process may still assume it holds the lease (0 when not held)."""
        if not self.held.is_set():
            return 0.0
        return max(0.0, self._valid_until - _now())

    async def acquire(self) -> int | None:
        """Try once to take the lease; returns the new fencing token, or None when another
        process holds it. Raises a Redis/transport error when Redis cannot be reached."""
        if self.held.is_set():
            if self.remaining > 0:
                return self._token
            self._mark_lost("expired")
        started = _now()
        result = await asyncio.wait_for(
            self._acquire_script(
                keys=[self.name, self.fence_key], args=[self.holder_id, _ms(self.ttl)]
            ),
            self.ttl,
        )
        token = _as_int(result) or 0
        if token <= 0:
            return None
        self._token = token
        self._value = f"{self.holder_id}#{token}"
        self._valid_until = started + self.ttl
        self.lost.clear()
        self.held.set()
        LEASE_HELD.labels(self.name).set(1)
        log.info("lease_acquired", lease=self.name, holder=self.holder_id, token=token)
        return token

    async def renew(self) -> bool:
        """Extend the lease if this process still holds it. Returns False (and marks the
        lease lost) when it was taken or has expired; raises on a transport error while the
        lease may still be valid, so the caller can retry until ``remaining`` runs out."""
        if not self.held.is_set() or self._value is None:
            return False
        remaining = self._valid_until - _now()
        if remaining <= 0:
            self._mark_lost("expired")
            return False
        started = _now()
        result = await asyncio.wait_for(
            self._renew_script(keys=[self.name], args=[self._value, _ms(self.ttl)]), remaining
        )
        if _as_int(result):
            self._valid_until = started + self.ttl
            return True
        self._mark_lost("taken")
        return False

    async def keep_alive(self) -> None:
        """Renew every ``renew_every`` seconds while held; returns once the lease is lost.

        A failed round trip is retried every ``min(renew_every, ttl / 10)`` seconds until
        the lease's local validity runs out; then the lease counts as lost, because another
        process may already hold it."""
        retry = min(self.renew_every, self.ttl / 10)
        wait = self.renew_every
        while self.held.is_set():
            await asyncio.sleep(min(wait, self.remaining))
            try:
                if not await self.renew():
                    return
                wait = self.renew_every
            except TRANSPORT_ERRORS as exc:
                if self.held.is_set() and self.remaining <= 0:
                    self._mark_lost("unreachable")
                    return
                log.warning(
                    "lease_renew_failed",
                    lease=self.name,
                    error=type(exc).__name__,
                    remaining=round(self.remaining, 3),
                )
                wait = retry

    async def release(self) -> bool:
        """Give the lease up (only if still ours), so a standby takes over at once. Best
        effort: if Redis is unreachable the key simply expires after the ttl."""
        value = self._value
        was_held = self.held.is_set()
        self._value = None
        self._token = None
        self.held.clear()
        LEASE_HELD.labels(self.name).set(0)
        if value is None or not was_held:
            return False
        try:
            deleted = await asyncio.wait_for(
                self._release_script(keys=[self.name], args=[value]), self.ttl
            )
        except TRANSPORT_ERRORS as exc:
            log.warning("lease_release_failed", lease=self.name, error=type(exc).__name__)
            return False
        log.info("lease_released", lease=self.name, holder=self.holder_id)
        return bool(_as_int(deleted))

    def _mark_lost(self, reason: str) -> None:
        if not self.held.is_set():
            return
        self.held.clear()
        self.lost.set()
        self._value = None
        LEASE_HELD.labels(self.name).set(0)
        LEASE_LOST.labels(self.name).inc()
        log.warning(
            "lease_lost", lease=self.name, holder=self.holder_id, token=self._token, reason=reason
        )


class LocalLease:
    """A lease that is always granted (token 1): embedded mode, one process, no Redis.
    It lets callers use ``run_singleton`` whether or not the cluster has Redis."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = asyncio.Event()
        self.lost = asyncio.Event()

    @property
    def fencing_token(self) -> int | None:
        return 1 if self.held.is_set() else None

    async def acquire(self) -> int | None:
        self.held.set()
        return 1

    async def keep_alive(self) -> None:
        # Never lost: wait until cancelled.
        await self.lost.wait()

    async def release(self) -> bool:
        was_held = self.held.is_set()
        self.held.clear()
        return was_held


Work = Callable[[int], Coroutine[Any, Any, object]]
_Outcome = Literal["stop", "done", "failed", "lost"]


async def _wait_for_event(event: asyncio.Event, seconds: float) -> None:
    if seconds <= 0 or event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass


async def _settle(task: asyncio.Task[Any]) -> None:
    """Wait for ``task`` to finish without raising its outcome (only our own cancellation
    propagates); log a failure."""
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "singleton_task_failed",
            task=task.get_name(),
            exc_info=task.exception(),
        )


async def run_singleton(
    lease: Lease, work: Work, stop: asyncio.Event, *, retry_every: float = 1.0
) -> None:
    """Run ``work(token)`` in at most one process of the cluster, for as long as ``stop``
    is not set.

    Standby: try to acquire every ``retry_every`` seconds (Redis errors count as "not
    acquired"). Holder: run the work as a task and keep renewing; if the lease is lost,
    cancel the work at once and go back to standby. If the work raises, it is logged, the
    lease released (another process may do better) and the loop retries after
    ``retry_every``; if it returns, the lease is released and this returns. When ``stop``
    is set (or this coroutine is cancelled) the work is cancelled and awaited while the
    lease is still held, then the lease is released so a standby takes over at once.
    """
    if retry_every <= 0:
        raise ValueError(f"retry_every must be positive, got {retry_every}")
    while not stop.is_set():
        try:
            token = await lease.acquire()
        except TRANSPORT_ERRORS as exc:
            log.warning("lease_acquire_failed", lease=lease.name, error=type(exc).__name__)
            token = None
        if token is None:
            await _wait_for_event(stop, retry_every)
            continue
        try:
            outcome = await _hold(lease, work, token, stop)
        except asyncio.CancelledError:
            await lease.release()
            raise
        if outcome == "lost":
            await _wait_for_event(stop, retry_every)
            continue
        await lease.release()
        if outcome == "failed":
            await _wait_for_event(stop, retry_every)
            continue
        return


async def _hold(lease: Lease, work: Work, token: int, stop: asyncio.Event) -> _Outcome:
    """Run the work while renewing until the first of: stop, work finished, lease lost."""
    work_task = asyncio.create_task(work(token), name=f"singleton:{lease.name}")
    keeper = asyncio.create_task(lease.keep_alive(), name=f"lease-renew:{lease.name}")
    stopper = asyncio.create_task(stop.wait(), name=f"singleton-stop:{lease.name}")
    log.info("singleton_started", lease=lease.name, token=token)
    outcome: _Outcome = "stop"
    try:
        done, _ = await asyncio.wait(
            {work_task, keeper, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        if keeper in done:
            outcome = "lost"
        elif work_task in done:
            failed = work_task.cancelled() or work_task.exception() is not None
            outcome = "failed" if failed else "done"
        return outcome
    finally:
        # Lost: cancel the work before anything else (another process may start it).
        # Stop: the work winds down while the lease is still ours; released afterwards.
        work_task.cancel()
        keeper_stopped = keeper.done()
        await _settle(work_task)
        keeper.cancel()
        stopper.cancel()
        await _settle(keeper)
        await _settle(stopper)
        if keeper_stopped and lease.held.is_set():
            # keep_alive ended without marking the lease lost (it was cancelled from
            # outside or failed): without renewals it is as good as lost, so give it up.
            await lease.release()
            lease.lost.set()
        log.info("singleton_stopped", lease=lease.name, token=token, outcome=outcome)


async def current_fence(redis: Redis, name: str) -> int | None:
    """The newest fencing token of lease ``name`` (None if it was never acquired)."""
    return _as_int(await redis.get(f"{name}:fence"))


async def check_fence(redis: Redis, name: str, token: int) -> bool:
    """Whether ``token`` is still the current fencing token of lease ``name``. A check, not
    a guard: use ``FencedWriter.execute`` to make the check and a Redis write atomic."""
    return await current_fence(redis, name) == token


class FencedWriter:
    """Side effects of a singleton, accepted only while ``token`` is the current fencing
    token of lease ``name`` (see the module docstring for the database pattern)."""

    def __init__(self, redis: Redis, name: str, token: int) -> None:
        self.redis = redis
        self.name = name
        self.token = token
        self.fence_key = f"{name}:fence"
        self._script = redis.register_script(_FENCED)

    async def is_current(self) -> bool:
        return await check_fence(self.redis, self.name, self.token)

    async def ensure(self) -> None:
        """Raise ``StaleFencingToken`` unless this writer's token is still the current one;
        call it right before a side effect that cannot be fenced atomically."""
        if not await self.is_current():
            raise self._stale()

    async def execute(self, *command: str | bytes | int | float) -> Any:
        """Run one Redis command (e.g. ``"SET", key, value``) only if the token is current,
        atomically with the check; raises ``StaleFencingToken`` otherwise."""
        if not command:
            raise ValueError("FencedWriter.execute needs a Redis command")
        try:
            return await self._script(keys=[self.fence_key], args=[self.token, *command])
        except ResponseError as exc:
            if "STALE_FENCE" in str(exc):
                raise self._stale() from None
            raise

    def _stale(self) -> StaleFencingToken:
        return StaleFencingToken(
            f"fencing token {self.token} of lease {self.name!r} is no longer current: "
            "another process holds the lease",
            lease=self.name,
            token=self.token,
        )


class RedisLock:
    """A short mutual-exclusion section across processes (``async with lock:``).

    ``SET name <random> NX PX ttl``; released by compare-and-del so a holder whose lock
    already expired never deletes the next holder's. Waiting retries with jittered
    exponential back-off (``backoff`` doubling up to ``max_backoff``) and raises
    ``LockTimeout`` after ``timeout`` seconds. ``ttl`` bounds how long a crashed holder
    blocks others: keep the section well below it (a lock is not a lease and is not
    renewed). Not re-entrant; one ``RedisLock`` object may be used again after release.
    """

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        ttl: float = 30.0,
        timeout: float = 30.0,
        backoff: float = 0.01,
        max_backoff: float = 0.5,
    ) -> None:
        if ttl <= 0 or timeout < 0 or backoff <= 0 or max_backoff < backoff:
            raise ValueError("RedisLock needs ttl > 0, timeout >= 0 and 0 < backoff <= max_backoff")
        self.redis = redis
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._value: str | None = None
        self._release_script = redis.register_script(_RELEASE)

    @property
    def owned(self) -> bool:
        """Whether this object acquired the lock and has not released it (it may still
        have expired in Redis if the section outlived the ttl)."""
        return self._value is not None

    async def acquire(self) -> None:
        if self._value is not None:
            raise RuntimeError(f"lock {self.name!r} is already held by this object")
        value = secrets.token_hex(16)
        deadline = _now() + self.timeout
        delay = self.backoff
        while True:
            if await self.redis.set(self.name, value, nx=True, px=_ms(self.ttl)):
                self._value = value
                return
            remaining = deadline - _now()
            if remaining <= 0:
                raise LockTimeout(
                    f"could not acquire lock {self.name!r} within {self.timeout:g} s "
                    "(another process holds it)",
                    lock=self.name,
                    timeout=self.timeout,
                )
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, self.max_backoff)

    async def release(self) -> bool:
        """Release if still ours; returns whether the key was deleted (False when it had
        expired, possibly into someone else's hands)."""
        value, self._value = self._value, None
        if value is None:
            return False
        return bool(_as_int(await self._release_script(keys=[self.name], args=[value])))

    async def __aenter__(self) -> RedisLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.release()
        except TRANSPORT_ERRORS as exc:
            # Never mask the section's own outcome; the lock expires after its ttl.
            log.warning("lock_release_failed", lock=self.name, error=type(exc).__name__)
