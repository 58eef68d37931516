"""The message queue contract: every IMessageQueue provider behaves exactly like this.

Run against memory, SQLite and Redis (the ``queue`` fixture in conftest.py is
parametrized over every provider; the Redis one is a real redis-server the tests start,
which fails the tests, never skips them, if it cannot start). Leases and delays are
real time here, kept short; ``tests/unit/test_memory_queue.py`` pins the same rules
with a fake clock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from ironfunctions.errors import LeaseLost, QueueUnavailable
from ironfunctions.mq import queue_from_url
from ironfunctions.mq.interface import IMessageQueue, Lease, QueueItem, Reservation
from ironfunctions.mq.redis import RedisQueue
from tests.servers import RedisServer, free_port, start_redis_server, stop_redis_server


def item(call_id: str, priority: int = 0, **payload: object) -> QueueItem:
    return QueueItem(call_id, "myapp", "/hello", priority, payload)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds)


async def drain(queue: IMessageQueue, lease: float = 30) -> list[str]:
    """Reserve everything visible now; return the call ids in the order received."""
    got = []
    while (r := await queue.reserve(lease)) is not None:
        got.append(r.call_id)
    return got


def test_provides_IMessageQueue(queue: IMessageQueue) -> None:
    """The provider fully implements the interface."""
    assert verifyObject(IMessageQueue, queue)


@pytest_twisted.ensureDeferred
async def test_ping_answers(queue: IMessageQueue) -> None:
    await queue.ping()


@pytest_twisted.ensureDeferred
async def test_push_reserve_ack_round_trips_the_item(queue: IMessageQueue) -> None:
    pushed = item("c1", 1, body="żółw ☃", n=[1, 2.5, None], nested={"k": True})
    assert await queue.push(pushed) is True
    r = await queue.reserve(30)
    assert r is not None
    assert r.item == pushed
    assert r.call_id == "c1"
    assert r.attempt == 1
    await queue.ack(r)
    assert await queue.reserve(30) is None
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_reserve_on_empty_queue_returns_None(queue: IMessageQueue) -> None:
    assert await queue.reserve(30) is None


@pytest_twisted.ensureDeferred
async def test_pushing_a_queued_call_id_again_changes_nothing(queue: IMessageQueue) -> None:
    assert await queue.push(item("c1", payload="first"))
    assert await queue.push(item("c1", 2, payload="second")) is False
    r = await queue.reserve(30)
    assert r is not None
    assert r.item.payload == {"payload": "first"}
    assert await queue.push(item("c1")) is False  # reserved counts as queued too
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_higher_priority_first_then_fifo(queue: IMessageQueue) -> None:
    order = [("a", 0), ("b", 2), ("c", 1), ("d", 0), ("e", 2), ("f", 1)]
    for call_id, priority in order:
        await queue.push(item(call_id, priority))
    assert await drain(queue) == ["b", "e", "c", "f", "a", "d"]


@pytest_twisted.ensureDeferred
async def test_delayed_item_stays_hidden_until_its_time(queue: IMessageQueue) -> None:
    await queue.push(item("later"), delay=0.4)
    await queue.push(item("now"))
    assert await drain(queue) == ["now"]
    assert await queue.depth() == 1  # delayed items are waiting too
    started = time.monotonic()
    r = await queue.reserve(30, timeout=3)
    assert r is not None and r.call_id == "later"
    assert 0.25 <= time.monotonic() - started < 1.5


@pytest_twisted.ensureDeferred
async def test_expired_lease_redelivers_at_the_old_place_with_next_attempt(queue: IMessageQueue) -> None:
    for call_id in ["a", "b", "c"]:
        await queue.push(item(call_id))
    first = await queue.reserve(0.3)
    assert first is not None
    assert (first.call_id, first.attempt) == ("a", 1)
    await sleep(0.45)
    again = await queue.reserve(30)
    assert again is not None
    assert (again.call_id, again.attempt) == ("a", 2)
    assert again.lease != first.lease
    assert await drain(queue) == ["b", "c"]


@pytest_twisted.ensureDeferred
async def test_a_lost_lease_cannot_be_acked_renewed_or_released(queue: IMessageQueue) -> None:
    await queue.push(item("a"))
    old = await queue.reserve(0.2)
    assert old is not None
    await sleep(0.35)
    for op in (queue.ack(old), queue.renew(old, 30), queue.release(old)):
        with pytest.raises(LeaseLost):
            await op
    new = await queue.reserve(30)
    assert new is not None
    with pytest.raises(LeaseLost):
        await queue.ack(old)
    await queue.ack(new)  # the current holder still can
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_renew_extends_the_lease(queue: IMessageQueue) -> None:
    await queue.push(item("long"))
    r = await queue.reserve(0.3)
    assert r is not None
    await sleep(0.15)
    await queue.renew(r, 2)
    await sleep(0.35)  # past the first lease
    assert await queue.reserve(30) is None
    await queue.ack(r)
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_release_with_delay_puts_the_item_back_at_its_place_later(queue: IMessageQueue) -> None:
    for call_id in ["a", "b", "c"]:
        await queue.push(item(call_id))
    a = await queue.reserve(30)
    assert a is not None
    await queue.release(a, delay=0.3)
    with pytest.raises(LeaseLost):
        await queue.ack(a)
    b = await queue.reserve(30)
    assert b is not None
    assert b.call_id == "b"
    await sleep(0.4)
    again = await queue.reserve(30)
    assert again is not None
    assert (again.call_id, again.attempt) == ("a", 2)
    assert await drain(queue) == ["c"]


@pytest_twisted.ensureDeferred
async def test_release_without_delay_is_reservable_at_once_in_front(queue: IMessageQueue) -> None:
    await queue.push(item("a"))
    await queue.push(item("b"))
    a = await queue.reserve(30)
    assert a is not None
    await queue.release(a)
    assert [r.call_id for r in [cast(Reservation, await queue.reserve(30))]] == ["a"]


@pytest_twisted.ensureDeferred
async def test_concurrent_reservers_never_get_the_same_item(queue: IMessageQueue) -> None:
    ids = [f"call{i:02d}" for i in range(50)]
    for i, call_id in enumerate(ids):
        await queue.push(item(call_id, i % 3))

    async def reserver() -> list[str]:
        got = []
        while (r := await queue.reserve(30)) is not None:
            got.append(r.call_id)
            await queue.ack(r)
        return got

    results = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(reserver()) for _ in range(5)], consumeErrors=True
    )
    received = [call_id for got in results for call_id in got]
    assert sorted(received) == ids
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_waiting_reservers_each_get_a_distinct_pushed_item(queue: IMessageQueue) -> None:
    waiting = [defer.Deferred.fromCoroutine(queue.reserve(30, timeout=5)) for _ in range(5)]
    await sleep(0.05)
    for i in range(5):
        await queue.push(item(f"c{i}"))
    results = cast("list[Reservation]", await defer.gatherResults(waiting, consumeErrors=True))
    assert sorted(r.call_id for r in results) == [f"c{i}" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_waiting_reserve_wakes_up_at_once_on_push(queue: IMessageQueue) -> None:
    waiting = defer.Deferred.fromCoroutine(queue.reserve(30, timeout=10))
    await sleep(0.2)
    pushed_at = time.monotonic()
    await queue.push(item("fast"))
    r = await waiting
    assert r is not None
    assert r.call_id == "fast"
    assert time.monotonic() - pushed_at < 0.05


@pytest_twisted.ensureDeferred
async def test_reserve_waits_timeout_seconds_then_returns_None(queue: IMessageQueue) -> None:
    started = time.monotonic()
    assert await queue.reserve(30, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_depth_counts_waiting_items_not_live_leases(queue: IMessageQueue) -> None:
    for call_id in ["a", "b", "c"]:
        await queue.push(item(call_id))
    await queue.push(item("d"), delay=30)
    assert await queue.depth() == 4
    await queue.reserve(0.2)
    assert await queue.depth() == 3
    await sleep(0.3)
    assert await queue.depth() == 4  # the lease expired: waiting again


@pytest_twisted.ensureDeferred
async def test_remove_deletes_a_waiting_or_reserved_call(queue: IMessageQueue) -> None:
    await queue.push(item("a"))
    await queue.push(item("b"))
    await queue.push(item("c"), delay=30)
    held = await queue.reserve(30)
    assert held is not None
    assert await queue.remove("a") is True
    assert await queue.remove("c") is True
    assert await queue.remove("nope") is False
    with pytest.raises(LeaseLost):
        await queue.ack(held)
    assert await drain(queue) == ["b"]
    assert await queue.push(item("a")) is True  # the id is free again


@pytest_twisted.ensureDeferred
async def test_lease_survives_a_round_trip_through_text(queue: IMessageQueue) -> None:
    """The /tasks protocol hands the lease to an external runner and takes it back."""
    await queue.push(item("task.1"))
    r = await queue.reserve(30)
    assert r is not None
    text = str(r.lease)
    assert Lease.parse(text) == r.lease
    await queue.ack(Lease.parse(text))
    assert await queue.depth() == 0


@pytest_twisted.ensureDeferred
async def test_a_lease_with_another_token_acks_nothing(queue: IMessageQueue) -> None:
    """A /tasks DELETE naming a call with a made-up or stale token changes nothing."""
    await queue.push(item("a"))
    with pytest.raises(LeaseLost):
        await queue.ack(Lease("a", "0" * 32))  # waiting, never reserved
    r = await queue.reserve(30)
    assert r is not None
    with pytest.raises(LeaseLost):
        await queue.ack(Lease("a", "f" * 32))  # reserved, under another token
    await queue.ack(r)


def app_item(call_id: str, app_name: str, priority: int = 0) -> QueueItem:
    return QueueItem(call_id, app_name, "/hello", priority, {})


@pytest_twisted.ensureDeferred
async def test_reserve_limited_to_apps_takes_only_their_items_and_leaves_the_rest_untouched(queue: IMessageQueue) -> None:
    for call_id, app_name, priority in [("x1", "other", 2), ("a1", "mine", 0), ("x2", "other", 1),
                                        ("b1", "also", 1), ("a2", "mine", 2)]:
        await queue.push(app_item(call_id, app_name, priority))
    got = []
    while (r := await queue.reserve(30, 0, frozenset({"mine", "also"}))) is not None:
        assert r.item.app_name in {"mine", "also"} and r.attempt == 1
        got.append(r.call_id)
    assert got == ["a2", "b1", "a1"]  # priority, then FIFO, among their items
    assert await queue.reserve(30, 0, frozenset()) is None
    assert await queue.depth() == 2
    others = [cast(Reservation, await queue.reserve(30)), cast(Reservation, await queue.reserve(30))]
    assert [(r.call_id, r.attempt) for r in others] == [("x1", 1), ("x2", 1)]  # never touched


@pytest_twisted.ensureDeferred
async def test_reserve_limited_to_apps_waits_for_their_push(queue: IMessageQueue) -> None:
    await queue.push(app_item("x1", "other"))
    d = defer.ensureDeferred(queue.reserve(30, 3, frozenset({"mine"})))
    await sleep(0.1)
    assert not d.called
    await queue.push(app_item("m1", "mine"))
    r = await d
    assert r is not None
    assert r.call_id == "m1"


@pytest_twisted.ensureDeferred
async def test_close_ends_a_waiting_reserve_with_None(queue: IMessageQueue) -> None:
    waiting = defer.Deferred.fromCoroutine(queue.reserve(30, timeout=10))
    await sleep(0.05)
    await queue.close()
    assert await waiting is None
    for op in (queue.push(item("x")), queue.reserve(30), queue.start()):
        with pytest.raises(QueueUnavailable):
            await op
    await queue.close()  # closing twice is harmless


# -- provider-specific behaviour


@pytest_twisted.ensureDeferred
async def test_sqlite_queue_keeps_items_and_leases_across_close_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/data/mq.db"
    queue = queue_from_url(url, reactor)
    await queue.start()
    for call_id, priority in [("a", 0), ("b", 1), ("c", 0)]:
        await queue.push(item(call_id, priority, n=call_id))
    held = await queue.reserve(30)
    assert held is not None
    assert held.call_id == "b"
    await queue.close()

    reopened = queue_from_url(url, reactor)
    await reopened.start()
    try:
        assert await reopened.depth() == 2
        a = await reopened.reserve(30)
        assert a is not None
        assert a.item == item("a", 0, n="a")
        await reopened.ack(held)  # the lease held before the restart is still valid
        assert await drain(reopened) == ["c"]
    finally:
        await reopened.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, so stopping it disturbs no other test."""
    server = start_redis_server()
    yield server
    stop_redis_server(server)


@pytest_twisted.ensureDeferred
async def test_redis_outage_fails_fast_with_QueueUnavailable_and_recovers(own_redis: RedisServer) -> None:
    queue = RedisQueue.from_url(own_redis.url(), reactor, timeout=2)
    await queue.start()
    try:
        await queue.push(item("before"))
        waiting = defer.Deferred.fromCoroutine(queue.reserve(30, timeout=30))
        r = await waiting
        assert r is not None
        assert r.call_id == "before"

        own_redis.stop()
        for op in (queue.push(item("during")), queue.reserve(30), queue.ping(), queue.depth()):
            started = time.monotonic()
            with pytest.raises(QueueUnavailable):
                await op
            assert time.monotonic() - started < 3

        own_redis.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                assert await queue.push(item("after")) is True
                break
            except QueueUnavailable:
                assert time.monotonic() < deadline, "the queue did not reconnect"
                await sleep(0.1)
        # The subscriber reconnects too: a waiting reserve wakes on a push again.
        await sleep(2.5)
        assert cast(Reservation, await queue.reserve(30)).call_id == "after"
        waiting = defer.Deferred.fromCoroutine(queue.reserve(30, timeout=10))
        await sleep(0.1)
        other = RedisQueue.from_url(own_redis.url(), reactor)
        await other.start()
        try:
            pushed_at = time.monotonic()
            await other.push(item("from-another-node"))
            assert cast(Reservation, await waiting).call_id == "from-another-node"
            assert time.monotonic() - pushed_at < 0.1
        finally:
            await other.close()
    finally:
        await queue.close()


@pytest_twisted.ensureDeferred
async def test_redis_start_fails_with_QueueUnavailable_when_nothing_listens() -> None:
    queue = RedisQueue.from_url(f"redis://127.0.0.1:{free_port()}", reactor, timeout=1)
    started = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable):
            await queue.start()
        assert time.monotonic() - started < 3
    finally:
        await queue.close()


@pytest_twisted.ensureDeferred
async def test_redis_queues_with_different_prefixes_do_not_share_items(redis_server: RedisServer) -> None:
    redis_server.flush()
    one = RedisQueue.from_url(redis_server.url(prefix="one"), reactor)
    two = RedisQueue.from_url(redis_server.url(prefix="two"), reactor)
    await one.start()
    await two.start()
    try:
        await one.push(item("a"))
        assert await two.reserve(30) is None
        assert cast(Reservation, await one.reserve(30)).call_id == "a"
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_redis_reserve_limited_to_apps_looks_at_a_bounded_window(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis scans at most APPS_SCAN_LIMIT visible items in one atomic script: an item
    of the wanted apps behind that many others waits until they move (documented)."""
    import ironfunctions.mq.redis as redis_mq

    monkeypatch.setattr(redis_mq, "APPS_SCAN_LIMIT", 3)
    redis_server.flush()
    queue = RedisQueue.from_url(redis_server.url(prefix="window"), reactor)
    await queue.start()
    try:
        for n in range(3):
            await queue.push(app_item(f"x{n}", "other"))
        await queue.push(app_item("m1", "mine"))
        assert await queue.reserve(30, 0, frozenset({"mine"})) is None
        assert cast(Reservation, await queue.reserve(30)).call_id == "x0"
        assert cast(Reservation, await queue.reserve(30, 0, frozenset({"mine"}))).call_id == "m1"
    finally:
        await queue.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_queue_and_datastore_can_share_one_file(tmp_path: Path) -> None:
    from ironfunctions.datastore import stores_from_url
    from ironfunctions.models import App

    url = f"sqlite:///{tmp_path}/one.db"
    datastore = stores_from_url(url, reactor).datastore
    queue = queue_from_url(url, reactor)
    await datastore.start()
    await queue.start()
    try:
        await datastore.insert_app(App("a"))
        await queue.push(item("c1"))
        assert cast(Reservation, await queue.reserve(30)).call_id == "c1"
        assert await datastore.get_app("a") == App("a")
    finally:
        await queue.close()
        await datastore.close()


@pytest_twisted.ensureDeferred
async def test_holds_tells_which_calls_the_queue_has_in_any_state(queue: IMessageQueue) -> None:
    assert await queue.holds([]) == set()
    await queue.push(item("waiting"))
    await queue.push(item("delayed"), delay=30)
    await queue.push(item("leased"))
    await queue.push(item("acked"))
    got = {}
    while (r := await queue.reserve(30)) is not None:
        got[r.call_id] = r
    assert set(got) == {"waiting", "leased", "acked"}
    await queue.release(got["waiting"])
    await queue.ack(got["acked"])
    assert await queue.holds(["waiting", "delayed", "leased", "acked", "never"]) == {"waiting", "delayed", "leased"}
    assert await queue.holds([f"x{n}" for n in range(1200)] + ["leased"]) == {"leased"}  # many ids at once
