"""The cancel bus contract: every ICancelBus provider behaves like this.

Run on the memory bus, on Redis (a real redis-server the tests start) and on the
worker processes' bus (``workers/bus.py``: two workers' buses linked through their
parent's relay over real unix socket links). Each test gets two buses on one network,
``a`` and ``b``: two nodes sharing the queue (or two workers of one node).
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Callable, Coroutine, Iterator, TypeVar

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from ironfunctions.calls.model import CallRecord
from ironfunctions.cancelbus import ICancelBus, cancel_bus_for
from ironfunctions.cancelbus.memory import MemoryCancelBus
from ironfunctions.cancelbus.redis import RedisCancelBus
from ironfunctions.errors import QueueUnavailable
from ironfunctions.models import CallStatus
from ironfunctions.mq import queue_from_url
from ironfunctions.mq.redis import RedisQueue
from ironfunctions.workers.bus import CancelRelay, ParentCancelBus
from ironfunctions.workers.link import Link
from tests.servers import RedisServer, start_redis_server, stop_redis_server

_T = TypeVar("_T")


def _block(coro: Coroutine[Any, Any, _T]) -> _T:
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds)


@attrs.define
class Node:
    bus: ICancelBus
    heard: list[tuple[str, str]] = attrs.field(factory=list)

    def runs(self, *call_ids: str, fail: bool = False) -> None:
        """Handle cancels as a node running ``call_ids`` (``fail``: a broken handler)."""

        def handle(app_name: str, call_id: str) -> CallRecord | None:
            self.heard.append((app_name, call_id))
            if fail:
                raise RuntimeError("handler broke")
            return cancelled_record(app_name, call_id) if call_id in call_ids else None

        self.bus.on_cancel(handle)


def cancelled_record(app_name: str, call_id: str) -> CallRecord:
    return CallRecord(id=call_id, app_name=app_name, path="/sleep", image="iftest/sleep:1", type="sync",
                      status=CallStatus.CANCELLED, reason="client_request", created_at=1_700_000_000_123,
                      completed_at=1_700_000_000_456)


def redis_queues(url: str, count: int) -> list[RedisQueue]:
    queues = [queue_from_url(url, reactor) for _ in range(count)]
    assert all(isinstance(q, RedisQueue) for q in queues)
    return queues  # type: ignore[return-value]


@pytest.fixture(params=["memory", "redis", "workers"])
def nodes(request: pytest.FixtureRequest) -> Iterator[tuple[Node, Node]]:
    """Two nodes' buses on one network (started)."""
    if request.param == "memory":
        a = MemoryCancelBus()
        yield Node(a), Node(a.joined())
        return
    if request.param == "workers":
        relay = CancelRelay()
        links: list[Link] = []
        workers: list[ParentCancelBus] = []
        for index in (0, 1):
            parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            links += [Link(parent_end, reactor, {}), Link(worker_end, reactor, {})]
            relay.attach(index, links[-2])
            workers.append(ParentCancelBus(links[-1], reactor))
        yield Node(workers[0]), Node(workers[1])
        for link in links:
            link.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    url = server.url(prefix=f"cancel-{uuid.uuid4().hex[:8]}")  # channels are server-wide
    queues = redis_queues(url, 2)
    buses = [cancel_bus_for(url, q, reactor) for q in queues]
    for q in queues:
        _block(q.start())
    try:
        yield Node(buses[0]), Node(buses[1])
    finally:
        for q in queues:
            _block(q.close())


def test_provides_ICancelBus(nodes: tuple[Node, Node]) -> None:
    for node in nodes:
        assert verifyObject(ICancelBus, node.bus)


@pytest_twisted.ensureDeferred
async def test_a_cancel_reaches_every_node_this_one_included(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.runs()
    b.runs()
    assert await a.bus.publish("myapp", "c1", wait=5) is None
    assert a.heard == [("myapp", "c1")]
    assert b.heard == [("myapp", "c1")]


@pytest_twisted.ensureDeferred
async def test_the_node_running_the_call_answers_with_its_record(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.runs()
    b.runs("c1")
    started = time.monotonic()
    assert await a.bus.publish("myapp", "c1", wait=5) == cancelled_record("myapp", "c1")
    assert time.monotonic() - started < 1
    assert await b.bus.publish("myapp", "c1", wait=5) == cancelled_record("myapp", "c1")


@pytest_twisted.ensureDeferred
async def test_when_every_node_says_not_here_the_answer_is_None_without_the_whole_wait(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    a.runs()
    b.runs("other")
    started = time.monotonic()
    assert await a.bus.publish("myapp", "c1", wait=5) is None
    assert time.monotonic() - started < 1


@pytest_twisted.ensureDeferred
async def test_a_node_with_no_handler_or_a_failing_one_says_not_here(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    started = time.monotonic()
    assert await a.bus.publish("myapp", "c1", wait=5) is None  # no handler anywhere
    a.runs(fail=True)
    b.runs("c1")
    assert await a.bus.publish("myapp", "c1", wait=5) == cancelled_record("myapp", "c1")
    b.runs(fail=True)
    assert await a.bus.publish("myapp", "c1", wait=5) is None
    assert time.monotonic() - started < 1


@pytest_twisted.ensureDeferred
async def test_without_wait_the_cancel_is_sent_and_no_answer_is_asked(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.runs("c1")
    assert await a.bus.publish("myapp", "c1") is None
    deadline = time.monotonic() + 5
    while not b.heard:
        assert time.monotonic() < deadline, "the cancel never arrived"
        await sleep(0.01)
    assert b.heard == [("myapp", "c1")]


# -- Redis only


@pytest_twisted.ensureDeferred
async def test_redis_a_node_that_never_answers_costs_the_wait_and_no_more(redis_server: RedisServer) -> None:
    url = redis_server.url(prefix=f"cancel-{uuid.uuid4().hex[:8]}")
    asker, mute = redis_queues(url, 2)
    bus = RedisCancelBus(asker, reactor)
    mute.subscribe("cancel", lambda text: None)  # hears requests, never answers
    await asker.start()
    await mute.start()
    try:
        started = time.monotonic()
        assert await bus.publish("myapp", "c1", wait=0.5) is None
        assert 0.4 <= time.monotonic() - started < 1.5
    finally:
        await asker.close()
        await mute.close()


@pytest_twisted.ensureDeferred
async def test_redis_buses_under_different_prefixes_do_not_hear_each_other(redis_server: RedisServer) -> None:
    one, two = (redis_queues(redis_server.url(prefix=f"cancel-{uuid.uuid4().hex[:8]}"), 1)[0] for _ in "12")
    a, b = Node(RedisCancelBus(one, reactor)), Node(RedisCancelBus(two, reactor))
    a.runs()
    b.runs("c1")
    await one.start()
    await two.start()
    try:
        assert await a.bus.publish("myapp", "c1", wait=5) is None
        assert b.heard == []
    finally:
        await one.close()
        await two.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, so stopping it disturbs no other test."""
    server = start_redis_server()
    yield server
    stop_redis_server(server)


async def until(check: Callable[[], Coroutine[Any, Any, bool]], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except QueueUnavailable:
            pass
        assert time.monotonic() < deadline, why
        await sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_redis_outage_fails_fast_with_QueueUnavailable_then_the_bus_reconnects(own_redis: RedisServer) -> None:
    queues = redis_queues(own_redis.url(), 2)
    a, b = (Node(RedisCancelBus(q, reactor)) for q in queues)
    a.runs()
    b.runs("c1")
    for q in queues:
        await q.start()
    try:
        assert await a.bus.publish("myapp", "c1", wait=5) == cancelled_record("myapp", "c1")
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            await a.bus.publish("myapp", "c1", wait=5)
        assert time.monotonic() - started < 3
        own_redis.start()

        async def answered() -> bool:
            return await a.bus.publish("myapp", "c1", wait=1) is not None

        # Both subscribers are back (each resubscribed on reconnecting): b hears and answers.
        await until(answered, 15, "the bus did not reconnect")
    finally:
        for q in queues:
            await q.close()


@pytest_twisted.ensureDeferred
async def test_redis_a_killed_subscriber_connection_resubscribes(redis_server: RedisServer) -> None:
    url = redis_server.url(prefix=f"cancel-{uuid.uuid4().hex[:8]}")
    queues = redis_queues(url, 2)
    a, b = (Node(RedisCancelBus(q, reactor)) for q in queues)
    a.runs()
    b.runs("c1")
    for q in queues:
        await q.start()
    try:
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")

        async def answered() -> bool:
            return await a.bus.publish("myapp", "c1", wait=1) is not None

        await until(answered, 10, "the subscribers did not come back")
    finally:
        for q in queues:
            await q.close()


@pytest_twisted.ensureDeferred
async def test_redis_malformed_messages_are_ignored_and_the_bus_goes_on(redis_server: RedisServer) -> None:
    url = redis_server.url(prefix=f"cancel-{uuid.uuid4().hex[:8]}")
    queues = redis_queues(url, 2)
    a, b = (Node(RedisCancelBus(q, reactor)) for q in queues)
    a.runs()
    b.runs("c1")
    for q in queues:
        await q.start()
    try:
        for garbage in ("not json", "[]", '{"app_name": "myapp"}', '{"app_name": "a", "call_id": "c", "ask": 3}'):
            await queues[0].publish("cancel", garbage)
        assert isinstance(a.bus, RedisCancelBus)
        for garbage in ("not json", '{"ask": "x", "record": {"id": 1}}', '{"record": null}'):
            await queues[1].publish(a.bus.reply_channel, garbage)
        assert await a.bus.publish("myapp", "c1", wait=5) == cancelled_record("myapp", "c1")
        assert b.heard == [("myapp", "c1")]
    finally:
        for q in queues:
            await q.close()
