"""The queue's per-app bounds (issue 13, SPEC §8 "Apps share fairly"), on every provider.

What an app has *waiting* (visible, delayed, released for a retry, or with an expired
lease; not under a live lease) is counted in calls and bytes (``QueueItem.size``) by
every transition, and ``push(..., limits=...)`` refuses with ``QueueFull`` and stores
nothing beyond either bound. Run on memory, SQLite and a real Redis (the ``queue``
fixture), plus provider-specific tests: two Redis clients racing cannot pass the bound,
and ``rebuild_counts`` repairs counters that parted from the items.
"""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from ironfunctions.errors import QueueFull
from ironfunctions.mq import queue_from_url
from ironfunctions.mq.interface import AppUsage, IMessageQueue, QueueItem, QueueLimits, Reservation
from ironfunctions.mq.redis import RedisQueue
from tests.servers import RedisServer

UNLIMITED = QueueLimits(10**9, 10**12)


def job(call_id: str, app_name: str = "a", body: str = "x") -> QueueItem:
    return QueueItem(call_id, app_name, "/job", 0, {"body": body})


def usage(*items: QueueItem) -> AppUsage:
    return AppUsage(len(items), sum(i.size() for i in items))


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds)


async def take(queue: IMessageQueue, lease: float = 30) -> Reservation:
    r = await queue.reserve(lease)
    assert r is not None
    return r


def test_item_size_is_the_length_of_its_json() -> None:
    item = job("c1", body="żółw" * 100)
    assert item.size() == len(item.to_json().encode("utf-8"))


@pytest_twisted.ensureDeferred
async def test_push_counts_calls_and_bytes_per_app(queue: IMessageQueue) -> None:
    a1, a2, b1 = job("a1"), job("a2", body="y" * 500), job("b1", "b")
    for i in (a1, a2, b1):
        assert await queue.push(i, limits=UNLIMITED)
    assert await queue.app_usage("a") == usage(a1, a2)
    assert await queue.app_usage("b") == usage(b1)
    assert await queue.app_usage("nobody") == AppUsage(0, 0)
    assert await queue.push(job("a1"), limits=UNLIMITED) is False  # already queued: not counted again
    assert await queue.app_usage("a") == usage(a1, a2)


@pytest_twisted.ensureDeferred
async def test_a_push_without_limits_is_counted_too(queue: IMessageQueue) -> None:
    await queue.push(job("a1"))
    await queue.push(job("a2"), delay=30)  # delayed items are waiting
    assert await queue.app_usage("a") == usage(job("a1"), job("a2"))


@pytest_twisted.ensureDeferred
async def test_reserve_takes_the_item_off_and_ack_keeps_it_off(queue: IMessageQueue) -> None:
    a1, a2 = job("a1"), job("a2", body="longer body")
    await queue.push(a1)
    await queue.push(a2)
    r = await take(queue)
    assert await queue.app_usage("a") == usage(a2)  # running calls do not count
    await queue.renew(r, 30)
    assert await queue.app_usage("a") == usage(a2)
    await queue.ack(r)
    assert await queue.app_usage("a") == usage(a2)
    await queue.ack(await take(queue))
    assert await queue.app_usage("a") == AppUsage(0, 0)


@pytest_twisted.ensureDeferred
async def test_release_counts_the_item_again_with_or_without_delay(queue: IMessageQueue) -> None:
    a1, a2 = job("a1"), job("a2")
    await queue.push(a1)
    await queue.push(a2)
    r1, r2 = await take(queue), await take(queue)
    assert await queue.app_usage("a") == AppUsage(0, 0)
    await queue.release(r1, delay=30)  # waiting for a retry: counted
    assert await queue.app_usage("a") == usage(a1)
    await queue.release(r2)
    assert await queue.app_usage("a") == usage(a1, a2)


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_counts_again_and_its_redelivery_takes_it_off(queue: IMessageQueue) -> None:
    a1, a2 = job("a1"), job("a2")
    await queue.push(a1)
    await queue.push(a2)
    await take(queue, lease=0.2)
    assert await queue.app_usage("a") == usage(a2)
    await sleep(0.35)
    assert await queue.app_usage("a") == usage(a1, a2)
    again = await take(queue)
    assert again.call_id == "a1" and again.attempt == 2
    assert await queue.app_usage("a") == usage(a2)


@pytest_twisted.ensureDeferred
async def test_remove_takes_off_a_waiting_item_and_leaves_counts_right_for_a_leased_one(queue: IMessageQueue) -> None:
    a1, a2, a3 = job("a1"), job("a2"), job("a3")
    await queue.push(a1)
    await queue.push(a2)
    await queue.push(a3, delay=30)
    await take(queue)  # a1, running
    assert await queue.remove("a1")
    assert await queue.app_usage("a") == usage(a2, a3)
    assert await queue.remove("a3")
    assert await queue.app_usage("a") == usage(a2)
    assert await queue.remove("a2")
    assert await queue.app_usage("a") == AppUsage(0, 0)
    await queue.push(a1)
    await take(queue, lease=0.2)
    await sleep(0.35)  # the lease expired, no reserve since: removing it still counts right
    assert await queue.remove("a1")
    assert await queue.app_usage("a") == AppUsage(0, 0)


@pytest_twisted.ensureDeferred
async def test_push_beyond_max_calls_raises_QueueFull_and_stores_nothing(queue: IMessageQueue) -> None:
    limits = QueueLimits(max_calls=2, max_bytes=10**9)
    assert await queue.push(job("a1"), limits=limits)
    assert await queue.push(job("a2"), limits=limits)
    with pytest.raises(QueueFull) as caught:
        await queue.push(job("a3"), limits=limits)
    assert (caught.value.app_name, caught.value.bound, caught.value.limit) == ("a", "ASYNC_MAX_QUEUED", 2)
    assert "ASYNC_MAX_QUEUED=2" in str(caught.value)
    assert await queue.depth() == 2
    assert await queue.app_usage("a") == usage(job("a1"), job("a2"))
    assert await queue.push(job("b1", "b"), limits=limits)  # the bound is per app
    got = sorted([(await take(queue)).call_id for _ in range(3)])
    assert got == ["a1", "a2", "b1"] and await queue.reserve(30) is None  # a3 was not stored
    assert await queue.push(job("a3"), limits=limits)  # running calls make room


@pytest_twisted.ensureDeferred
async def test_push_beyond_max_bytes_raises_QueueFull_naming_the_byte_bound(queue: IMessageQueue) -> None:
    big = job("a1", body="b" * 1000)
    limits = QueueLimits(max_calls=100, max_bytes=2 * big.size() + job("a4", body="").size())
    assert await queue.push(big, limits=limits)
    assert await queue.push(job("a2", body="b" * 1000), limits=limits)
    with pytest.raises(QueueFull) as caught:
        await queue.push(job("a3", body="b" * 1000), limits=limits)
    assert caught.value.bound == "ASYNC_MAX_QUEUED_BYTES"
    assert f"ASYNC_MAX_QUEUED_BYTES={limits.max_bytes}" in str(caught.value)
    assert await queue.push(job("a4", body=""), limits=limits)  # a small one still fits
    assert await queue.depth() == 3


@pytest_twisted.ensureDeferred
async def test_retry_waiting_and_expired_lease_items_count_toward_the_bound(queue: IMessageQueue) -> None:
    limits = QueueLimits(max_calls=1, max_bytes=10**9)
    await queue.push(job("a1"), limits=limits)
    r = await take(queue, lease=0.2)
    assert await queue.push(job("a2"), limits=limits)  # a1 runs: not counted
    await sleep(0.35)  # a1's lease expired: waiting again, the app is over its bound now
    with pytest.raises(QueueFull):
        await queue.push(job("a3"), limits=limits)
    await queue.remove("a2")
    with pytest.raises(QueueFull):
        await queue.push(job("a3"), limits=limits)  # a1 still waits
    a1 = await take(queue)
    assert a1.call_id == "a1" and r.lease != a1.lease
    await queue.release(a1, delay=30)  # waiting for a retry: counted
    with pytest.raises(QueueFull):
        await queue.push(job("a3"), limits=limits)


@pytest_twisted.ensureDeferred
async def test_rebuild_counts_agrees_with_the_counters(queue: IMessageQueue) -> None:
    for n in range(4):
        await queue.push(job(f"a{n}", body="z" * n))
    await queue.push(job("b0", "b"), delay=30)
    await take(queue)  # a0 running
    await queue.release(await take(queue), delay=30)  # a1 waits for a retry
    await take(queue, lease=0.2)  # a2, whose lease expires
    await sleep(0.35)
    before = (await queue.app_usage("a"), await queue.app_usage("b"))
    assert before == (usage(job("a1", body="z"), job("a2", body="zz"), job("a3", body="zzz")), usage(job("b0", "b")))
    await queue.rebuild_counts()
    assert (await queue.app_usage("a"), await queue.app_usage("b")) == before


async def refused_item(queue: IMessageQueue, limits: QueueLimits) -> weakref.ref[QueueItem]:
    """Push an item ``limits`` refuse; return a weak reference to it."""
    item = job("big", body="x" * 100_000)
    ref = weakref.ref(item)
    try:
        await queue.push(item, limits=limits)
    except QueueFull:
        pass
    else:
        raise AssertionError("not refused")
    return ref


@pytest_twisted.ensureDeferred
async def test_a_refused_item_is_freed_at_once(queue: IMessageQueue) -> None:
    """A flood of refused megabyte posts must not pile up until the garbage collector
    runs: no reference cycle (e.g. a Failure's traceback) keeps a refused item alive."""
    limits = QueueLimits(max_calls=1, max_bytes=10**9)
    await queue.push(job("a1"), limits=limits)
    gc.disable()
    try:
        ref = await refused_item(queue, limits)
        assert ref() is None
    finally:
        gc.enable()


# -- provider-specific


@pytest_twisted.ensureDeferred
async def test_redis_two_clients_racing_cannot_pass_the_bound(redis_server: RedisServer) -> None:
    """The check and the push are one script: 2 nodes × 20 concurrent submits, bound 10."""
    redis_server.flush()
    one = RedisQueue.from_url(redis_server.url(prefix="race"), reactor)
    two = RedisQueue.from_url(redis_server.url(prefix="race"), reactor)
    await one.start()
    await two.start()
    limits = QueueLimits(max_calls=10, max_bytes=10**9)

    async def submit(queue: RedisQueue, n: int) -> bool:
        try:
            return await queue.push(job(f"c{n}"), limits=limits)
        except QueueFull:
            return False

    try:
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(submit(one if n % 2 else two, n)) for n in range(40)],
            consumeErrors=True,
        )
        accepted = [job(f"c{n}") for n, ok in enumerate(results) if ok]
        assert len(accepted) == 10
        assert await one.depth() == 10
        assert await two.app_usage("a") == usage(*accepted)
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_redis_rebuild_counts_repairs_lost_counters(redis_server: RedisServer) -> None:
    redis_server.flush()
    queue = RedisQueue.from_url(redis_server.url(prefix="rebuild"), reactor)
    await queue.start()
    try:
        await queue.push(job("a1"))
        await queue.push(job("a2"))
        await take(queue)
        redis_server.command("DEL", "rebuild:app_calls", "rebuild:app_bytes")
        assert await queue.app_usage("a") == AppUsage(0, 0)
        await queue.rebuild_counts()
        assert await queue.app_usage("a") == usage(job("a2"))
    finally:
        await queue.close()


@pytest_twisted.ensureDeferred
async def test_redis_start_counts_a_queue_filled_before_the_counters_existed(redis_server: RedisServer) -> None:
    """An upgrade: items queued by a version without counters are counted on start."""
    redis_server.flush()
    old = RedisQueue.from_url(redis_server.url(prefix="upgrade"), reactor)
    await old.start()
    try:
        await old.push(job("a1"))
        await old.push(job("a2"))
        await old.push(job("b1", "b"))
        await take(old)
    finally:
        await old.close()
    redis_server.command("DEL", "upgrade:app_calls", "upgrade:app_bytes")
    new = RedisQueue.from_url(redis_server.url(prefix="upgrade"), reactor)
    await new.start()
    try:
        assert (await new.app_usage("a"), await new.app_usage("b")) == (usage(job("a2")), usage(job("b1", "b")))
    finally:
        await new.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_rebuild_counts_repairs_lost_totals_and_counts_survive_reopening(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/mq.db"
    queue = queue_from_url(url, reactor)
    await queue.start()
    await queue.push(job("a1"))
    await queue.push(job("a2"))
    await take(queue)
    await queue.close()
    reopened = queue_from_url(url, reactor)
    await reopened.start()
    try:
        assert await reopened.app_usage("a") == usage(job("a2"))
        with sqlite3.connect(f"{tmp_path}/mq.db") as conn:
            conn.execute("DELETE FROM mq_app_totals")
        assert await reopened.app_usage("a") == AppUsage(0, 0)
        await reopened.rebuild_counts()
        assert await reopened.app_usage("a") == usage(job("a2"))
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_upgrade_counts_the_items_queued_before_it(tmp_path: Path) -> None:
    """The 0002 migration fills the new columns and totals from the items already there."""
    import sqlite3
    from importlib import resources

    path = f"{tmp_path}/mq.db"
    schema = resources.files("ironfunctions.storage") / "schema" / "sqlite_mq" / "0001_initial.sql"
    waiting, running = job("a1", body="żółw"), job("a2")
    with sqlite3.connect(path) as conn:
        conn.executescript(schema.read_text("utf-8"))
        conn.execute("CREATE TABLE mq_schema_migrations (version INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO mq_schema_migrations VALUES (1, 'initial')")
        conn.execute("INSERT INTO mq_items (call_id, priority, item, visible_at) VALUES (?, 0, ?, 0)",
                     (waiting.call_id, waiting.to_json()))
        conn.execute("INSERT INTO mq_items (call_id, priority, item, visible_at, token) VALUES (?, 0, ?, ?, 't')",
                     (running.call_id, running.to_json(), time.time() + 60))
    queue = queue_from_url(f"sqlite:///{path}", reactor)
    await queue.start()
    try:
        assert await queue.app_usage("a") == usage(waiting)
        await queue.remove("a2")
        await queue.remove("a1")
        assert await queue.app_usage("a") == AppUsage(0, 0)
    finally:
        await queue.close()
