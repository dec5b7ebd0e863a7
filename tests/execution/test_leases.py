"""Cluster singletons and locks against a real Redis: one holder at a time, fencing tokens
that only grow, take-over when the holder dies, stale writes refused, work cancelled when
the lease is lost, and RedisLock mutual exclusion and timeout.

Timings use small ttls (0.5 s); waits are on events with timeouts, and the negative
checks ("the standby does not get the lease while the holder renews") wait on an event
that must *not* be set within a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.conftest import make_settings
from trading_backend.domain import ErrorCode
from trading_backend.execution.leases import (
    FencedWriter,
    LocalLease,
    LockTimeout,
    RedisLease,
    RedisLock,
    StaleFencingToken,
    check_fence,
    current_fence,
    run_singleton,
)
from trading_backend.runtime import Runtime

TTL = 0.5
RENEW = 0.1
RETRY = 0.1
# Scheduling slack on a busy machine for "within ttl + retry" assertions.
SLACK = 0.4


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    value = f"tbtest:{uuid.uuid4().hex}:"
    try:
        yield value
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{value}*")]
        if keys:
            await redis.delete(*keys)


def lease(redis: Redis, name: str, holder: str, ttl: float = TTL) -> RedisLease:
    return RedisLease(redis, name, holder, ttl=ttl, renew_every=min(RENEW, ttl / 3))


class Singleton:
    """One contender's work: records its token and whether it was cancelled; a shared
    ``Running`` tracks how many contenders run at the same time."""

    def __init__(self, label: str, running: Running | None = None) -> None:
        self.label = label
        self.running = running
        self.tokens: list[int] = []
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.started_at = 0.0
        self.cancelled_at = 0.0

    async def __call__(self, token: int) -> None:
        self.tokens.append(token)
        self.started_at = time.monotonic()
        if self.running is not None:
            self.running.enter(self.label)
        self.started.set()
        try:
            await asyncio.Event().wait()  # runs until cancelled
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            self.cancelled.set()
            raise
        finally:
            if self.running is not None:
                self.running.leave(self.label)


class Running:
    def __init__(self) -> None:
        self.now: set[str] = set()
        self.max = 0
        self.log: list[str] = []

    def enter(self, label: str) -> None:
        self.now.add(label)
        self.max = max(self.max, len(self.now))
        self.log.append(f"{label}+")

    def leave(self, label: str) -> None:
        self.now.discard(label)
        self.log.append(f"{label}-")


async def wait(event: asyncio.Event, timeout: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


async def stays_unset(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` is still unset after ``seconds`` (a bounded negative check)."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return True
    return False


def spawn_singleton(
    lease_: RedisLease | LocalLease,
    work: Callable[[int], Awaitable[None]],
    stop: asyncio.Event,
    retry_every: float = RETRY,
) -> asyncio.Task[None]:
    async def body(token: int) -> None:
        await work(token)

    return asyncio.create_task(run_singleton(lease_, body, stop, retry_every=retry_every))


async def finish(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        await asyncio.wait_for(task, 5.0)


async def test_only_one_of_two_contenders_holds_the_lease(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    a, b = lease(redis, name, "a"), lease(redis, name, "b")
    tokens = await asyncio.gather(a.acquire(), b.acquire())
    assert sorted(t is None for t in tokens) == [False, True]
    winner, loser = (a, b) if tokens[0] is not None else (b, a)
    assert winner.held.is_set() and not loser.held.is_set()
    assert loser.fencing_token is None
    assert await redis.get(name) == f"{winner.holder_id}#{winner.fencing_token}".encode()
    # The loser keeps being refused while the winner holds it.
    assert await loser.acquire() is None
    assert await loser.renew() is False


async def test_fencing_tokens_strictly_increase_across_holders(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    contenders = [lease(redis, name, holder) for holder in ("a", "b", "c")]
    tokens: list[int] = []
    for _ in range(3):
        for contender in contenders:
            token = await contender.acquire()
            assert token is not None
            assert await current_fence(redis, name) == token
            tokens.append(token)
            assert await contender.release() is True
    assert tokens == sorted(set(tokens))  # strictly increasing, no token handed out twice
    assert len(tokens) == 9


async def test_standby_takes_over_when_the_holder_stops_renewing(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    holder = lease(redis, name, "holder")
    first = await holder.acquire()
    assert first is not None
    renewing = asyncio.create_task(holder.keep_alive())
    standby_work = Singleton("standby")
    stop = asyncio.Event()
    standby = spawn_singleton(lease(redis, name, "standby"), standby_work, stop)
    try:
        # While the holder renews, the lease outlives its ttl and the standby stays out.
        assert await stays_unset(standby_work.started, 3 * TTL)
        assert holder.held.is_set()

        # The holder "dies": its renewals stop and it never releases.
        died = time.monotonic()
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        await wait(standby_work.started)
        took = standby_work.started_at - died
        assert took <= TTL + RETRY + SLACK, f"take-over took {took:.3f} s"
        assert standby_work.tokens[0] > first
    finally:
        stop.set()
        await finish(standby)
    assert standby_work.cancelled.is_set()
    assert await redis.exists(name) == 0  # the standby released on stop


async def test_a_stale_holders_fenced_write_is_refused(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    data = f"{prefix}data"
    stale = lease(redis, name, "stale")
    old_token = await stale.acquire()
    assert old_token is not None
    old_writer = FencedWriter(redis, name, old_token)
    assert await old_writer.execute("SET", data, "written-by-old") is not None
    await old_writer.ensure()

    # The old holder is paused (no renewals); its lease expires and a new holder takes it.
    new_work = Singleton("new")
    stop = asyncio.Event()
    task = spawn_singleton(lease(redis, name, "new"), new_work, stop)
    try:
        await wait(new_work.started)
        [new_token] = new_work.tokens
        assert new_token > old_token
        new_writer = FencedWriter(redis, name, new_token)
        await new_writer.execute("SET", data, "written-by-new")

        # The old holder wakes up and still believes it holds the lease: refused.
        with pytest.raises(StaleFencingToken) as refused:
            await old_writer.execute("SET", data, "late-write-by-old")
        assert refused.value.code is ErrorCode.CONFLICT
        with pytest.raises(StaleFencingToken):
            await old_writer.ensure()
        assert await redis.get(data) == b"written-by-new"
        assert await check_fence(redis, name, old_token) is False
        assert await check_fence(redis, name, new_token) is True
        assert await new_writer.is_current() is True
    finally:
        stop.set()
        await finish(task)


async def test_work_is_cancelled_when_the_lease_is_lost(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    holder = lease(redis, name, "holder")
    work = Singleton("holder")
    stop = asyncio.Event()
    task = spawn_singleton(holder, work, stop)
    lost_before = REGISTRY.get_sample_value("trading_backend_lease_lost_total", {"lease": name})
    other = lease(redis, name, "other", ttl=30.0)
    try:
        await wait(work.started)
        # The key expires behind the holder's back (say, a pause longer than the ttl) and
        # another process takes the lease: the holder's next renewal finds it gone.
        await redis.delete(name)
        assert await other.acquire() is not None
        await wait(work.cancelled, 5 * RENEW + SLACK)
        assert holder.lost.is_set() and not holder.held.is_set()
        assert holder.fencing_token is None
        lost_after = REGISTRY.get_sample_value("trading_backend_lease_lost_total", {"lease": name})
        assert lost_after == (lost_before or 0) + 1
        # The old holder went back to standby without deleting the new holder's key.
        assert await redis.get(name) == f"other#{other.fencing_token}".encode()
        assert not task.done()
        assert work.tokens == [work.tokens[0]]  # not restarted while the other holds it
    finally:
        stop.set()
        await finish(task)
        await other.release()


class Proxy:
    """A TCP proxy to Redis that the test can cut, to make Redis unreachable for one
    process only (a network partition)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


async def test_work_is_cancelled_when_redis_stays_unreachable_past_the_ttl(
    redis: Redis, redis_url: str, prefix: str
) -> None:
    url = urlsplit(redis_url)
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 6379)
    port = await proxy.start()
    partitioned = Redis.from_url(f"redis://127.0.0.1:{port}{url.path or '/0'}")
    name = f"{prefix}lease:job"
    running = Running()
    holder_work, standby_work = Singleton("holder", running), Singleton("standby", running)
    stop = asyncio.Event()
    holder = lease(partitioned, name, "holder")
    holder_task = spawn_singleton(holder, holder_work, stop)
    try:
        await wait(holder_work.started)
        standby_task = spawn_singleton(lease(redis, name, "standby"), standby_work, stop)
        assert await stays_unset(standby_work.started, 2 * TTL)

        cut_at = time.monotonic()
        await proxy.cut()
        await wait(holder_work.cancelled)
        await wait(standby_work.started)
        # The holder gave up no later than the ttl after the cut, and before the standby
        # could start: never two at once.
        assert holder_work.cancelled_at - cut_at <= TTL + SLACK
        assert holder_work.cancelled_at <= standby_work.started_at
        assert running.max == 1
        assert running.log[:3] == ["holder+", "holder-", "standby+"]
        assert standby_work.tokens[0] > holder_work.tokens[0]
        assert holder.lost.is_set()
    finally:
        stop.set()
        await finish(holder_task)
        if "standby_task" in locals():
            await finish(standby_task)
        await partitioned.aclose()


async def test_release_lets_the_standby_in_at_once(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    long_ttl = 30.0  # expiry cannot explain the take-over
    holder_work, standby_work = Singleton("holder"), Singleton("standby")
    stop_holder, stop_standby = asyncio.Event(), asyncio.Event()
    holder_task = spawn_singleton(
        lease(redis, name, "holder", ttl=long_ttl), holder_work, stop_holder
    )
    await wait(holder_work.started)
    standby_task = spawn_singleton(
        lease(redis, name, "standby", ttl=long_ttl), standby_work, stop_standby
    )
    try:
        assert await stays_unset(standby_work.started, 3 * RETRY)
        released = time.monotonic()
        stop_holder.set()
        await finish(holder_task)
        assert holder_work.cancelled.is_set()
        await wait(standby_work.started, 2.0)
        assert standby_work.started_at - released <= RETRY + SLACK
        assert standby_work.tokens[0] > holder_work.tokens[0]
    finally:
        stop_holder.set()
        stop_standby.set()
        await finish(holder_task, standby_task)


async def test_work_that_fails_releases_and_is_retried(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lease:job"
    attempts: list[int] = []
    second = asyncio.Event()
    stop = asyncio.Event()

    async def flaky(token: int) -> None:
        attempts.append(token)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        second.set()
        await asyncio.Event().wait()

    task = spawn_singleton(lease(redis, name, "a"), flaky, stop)
    try:
        await wait(second)
        assert attempts[1] > attempts[0]  # released, then acquired anew
    finally:
        stop.set()
        await finish(task)


async def test_local_lease_runs_the_work_with_token_one() -> None:
    local = LocalLease("lease:job")
    work = Singleton("local")
    stop = asyncio.Event()
    task = spawn_singleton(local, work, stop)
    await wait(work.started)
    assert work.tokens == [1] and local.held.is_set() and local.fencing_token == 1
    stop.set()
    await finish(task)
    assert work.cancelled.is_set() and not local.held.is_set()


async def test_lease_settings_are_validated(redis: Redis) -> None:
    with pytest.raises(ValueError, match="renew_every"):
        RedisLease(redis, "x", "h", ttl=1.0, renew_every=1.0)
    with pytest.raises(ValueError, match="ttl"):
        RedisLease(redis, "x", "h", ttl=0, renew_every=0.5)


async def test_redis_lock_is_mutually_exclusive(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lock:login:C123"
    inside: set[int] = set()
    most = 0
    done: list[int] = []

    async def section(i: int) -> None:
        nonlocal most
        async with RedisLock(redis, name, ttl=5.0, timeout=10.0, backoff=0.005):
            inside.add(i)
            most = max(most, len(inside))
            for _ in range(3):  # real round trips inside the section let others try
                await redis.ping()
            inside.discard(i)
            done.append(i)

    await asyncio.gather(*(section(i) for i in range(6)))
    assert most == 1
    assert sorted(done) == list(range(6))
    assert await redis.exists(name) == 0


async def test_redis_lock_times_out_with_a_clear_error(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lock:login:C123"
    holder = RedisLock(redis, name, ttl=10.0)
    await holder.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            async with RedisLock(redis, name, timeout=0.2, backoff=0.01):
                pytest.fail("entered a lock another process holds")
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.2 + SLACK
        assert raised.value.code is ErrorCode.TIMEOUT
        assert name in raised.value.message
        assert holder.owned
    finally:
        assert await holder.release() is True


async def test_redis_lock_release_never_frees_someone_elses_lock(redis: Redis, prefix: str) -> None:
    name = f"{prefix}lock:login:C123"
    first = RedisLock(redis, name, ttl=0.2)
    await first.acquire()
    # The first section outlives its ttl; the second gets the lock once it expires.
    second = RedisLock(redis, name, ttl=10.0, timeout=5.0, backoff=0.01)
    await second.acquire()
    assert await first.release() is False
    assert await redis.exists(name) == 1  # still the second's
    assert await second.release() is True
    assert await redis.exists(name) == 0


def _singleton_tasks(lease_name: str) -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == f"singleton:{lease_name}" and not task.done()
    ]


async def test_runtime_runs_the_health_monitor_in_exactly_one_of_two_instances(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    def settings() -> object:
        return make_settings(
            tmp_path,
            f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
            redis_url=redis_url,
            queue_prefix=prefix,
            # Only the leases are under test: keep the queue and events in-process.
            queue_backend="embedded",
            event_bus="local",
            lease_ttl_seconds=TTL,
            lease_renew_seconds=RENEW,
            health_check_seconds=3600.0,
        )

    first, second = Runtime(settings()), Runtime(settings())  # type: ignore[arg-type]
    runtimes = [first, second]
    lease_name = f"{prefix}lease:session-health"
    try:
        await first.start(worker=False, market=False, health_monitor=True)
        await second.start(migrate=False, worker=False, market=False, health_monitor=True)
        await wait(first.lease("session-health").held)
        standby = second.lease("session-health")
        assert await stays_unset(standby.held, 3 * TTL)

        [monitor] = _singleton_tasks(lease_name)
        assert monitor.get_coro().__qualname__ == "BrokerSessionManager.run_health_monitor"  # type: ignore[union-attr]
        assert monitor.get_coro().cr_frame.f_locals["self"] is first.sessions  # type: ignore[union-attr]

        # The holder shuts down: it releases, and the standby takes over at once.
        await first.stop()
        runtimes.remove(first)
        await wait(standby.held, 2.0)
        [monitor] = _singleton_tasks(lease_name)
        assert monitor.get_coro().cr_frame.f_locals["self"] is second.sessions  # type: ignore[union-attr]
    finally:
        for runtime in runtimes:
            await runtime.stop()
