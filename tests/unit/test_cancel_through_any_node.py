"""Cancelling through any node (SPEC §9), on a fake clock: two agents with fake drivers
("node A" runs the calls), one call store and queue, two memory cancel buses on one
network; DELETEs go to node B's canceller."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import implementer

from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.cancelbus import CancelHandler, ICancelBus
from ironfunctions.testing import MemoryCancelBus
from ironfunctions.errors import CallNotFound, QueueUnavailable
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import LABEL_CALL, Call, CallRequest, CallResult, CallStatus, Route
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.models import CANCELLED_MESSAGE
from ironfunctions.runner.agent import Agent
from ironfunctions.runner.cancel import make_cancel_handler, make_canceller
from ironfunctions.runner.records import new_record
from tests.fake_images import fake_driver
from tests.images import image_tag
from tests.sync import run

START = 1_700_000_000.0


def sleep_call(call_id: str, type_: str = "sync") -> Call:
    route = Route(app_name="myapp", path="/sleep", image=image_tag("sleep"), type=type_, timeout=120)
    return Call(call_id, route, CallRequest(method="POST", url="http://h/r/myapp/sleep"), {"SLEEP": "60"})


class Cluster:
    """Node A and node B; ``a_bus``/``b_bus`` on one network unless ``bus_b`` is given."""

    def __init__(self, bus_b: ICancelBus | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.calls = MemoryCallStore()
        self.queue = MemoryQueue(self.clock)
        self.driver_a = fake_driver(self.clock)
        self.driver_b = fake_driver(self.clock)
        self.a = Agent.cold(self.driver_a, self.clock, "node-a", MemoryMetrics(), max_concurrency=4)
        self.b = Agent.cold(self.driver_b, self.clock, "node-b", MemoryMetrics(), max_concurrency=4)
        self.a.startService()
        self.b.startService()
        a_bus = MemoryCancelBus()
        self.b_bus = bus_b if bus_b is not None else a_bus.joined()
        a_bus.on_cancel(make_cancel_handler(self.a.running_call, self.a.cancel, self.clock))
        self.b_bus.on_cancel(make_cancel_handler(self.b.running_call, self.b.cancel, self.clock))
        self.cancel_on_b = make_canceller(self.calls, self.queue, self.b.cancel, self.clock, self.b.running_call,
                                          self.b_bus)

    def run_on_a(self, call: Call) -> Deferred[CallResult]:
        d = Deferred.fromCoroutine(self.a.run_call(call))
        self.clock.advance(1)  # it is running: its container started
        assert self.containers_a(call.id), "the call did not start"
        return d

    def containers_a(self, call_id: str) -> list[str]:
        return [c.id for c in self.driver_a.containers.values() if c.spec.labels.get(LABEL_CALL) == call_id]

    def delete_on_b(self, app: str, call_id: str) -> Any:
        return run(self.cancel_on_b(app, call_id))  # type: ignore[arg-type]


def test_a_sync_call_with_no_record_on_another_node_is_cancelled_and_its_client_told() -> None:
    c = Cluster()
    running = c.run_on_a(sleep_call("s1"))
    record = c.delete_on_b("myapp", "s1")
    assert (record.id, record.status, record.reason, record.type, record.path) == (
        "s1", "cancelled", "client_request", "sync", "/sleep")
    # Stopped now, not at the end of its 60 s: the client gets the same answer as a
    # cancel on its own node (the invoker turns it into 502 "Call cancelled").
    result = ended(running)
    assert c.a.running_call("s1") is None
    assert (result.status, result.error, result.body) == (CallStatus.CANCELLED, CANCELLED_MESSAGE, b"")
    assert c.containers_a("s1") == []


def test_an_unknown_call_is_404_at_once() -> None:
    c = Cluster()
    c.run_on_a(sleep_call("s1"))
    with pytest.raises(CallNotFound):
        c.delete_on_b("myapp", "nope")


def test_another_apps_call_is_404_and_keeps_running() -> None:
    c = Cluster()
    running = c.run_on_a(sleep_call("s1"))
    with pytest.raises(CallNotFound):
        c.delete_on_b("otherapp", "s1")
    assert not running.called and c.containers_a("s1")


def test_an_async_call_running_on_another_node_stops_at_once_not_at_the_next_lease_check() -> None:
    c = Cluster()
    call = sleep_call("a1", "async")
    run(c.calls.put_calls([attrs_running(new_record("a1", call.route, int(START * 1000)))]))
    running = c.run_on_a(call)
    record = c.delete_on_b("myapp", "a1")
    assert (record.status, record.reason) == ("cancelled", "client_request")
    assert ended(running).status == CallStatus.CANCELLED
    assert c.containers_a("a1") == []
    assert run(c.calls.get_call("myapp", "a1")).status == "cancelled"


def test_a_long_sync_call_with_a_running_record_on_another_node_stops_at_once() -> None:
    c = Cluster()
    call = sleep_call("s2")
    run(c.calls.put_calls([attrs_running(new_record("s2", call.route, int(START * 1000)))]))
    running = c.run_on_a(call)
    assert c.delete_on_b("myapp", "s2").status == "cancelled"
    assert ended(running).status == CallStatus.CANCELLED


def test_a_call_running_on_this_node_is_stopped_here_without_the_bus() -> None:
    bus = BrokenBus()
    c = Cluster(bus_b=bus)
    call = sleep_call("s3")
    running = Deferred.fromCoroutine(c.b.run_call(call))
    c.clock.advance(1)
    assert c.delete_on_b("myapp", "s3").status == "cancelled"
    assert ended(running).status == CallStatus.CANCELLED
    assert bus.published == 0


def test_with_the_bus_down_a_call_without_record_is_503_and_one_with_a_record_is_still_cancelled() -> None:
    c = Cluster(bus_b=BrokenBus())
    c.run_on_a(sleep_call("s1"))
    with pytest.raises(QueueUnavailable):
        c.delete_on_b("myapp", "s1")  # some node may run it: not a 404
    call = sleep_call("a1", "async")
    run(c.calls.put_calls([attrs_running(new_record("a1", call.route, int(START * 1000)))]))
    with capturedLogs() as events:
        record = c.delete_on_b("myapp", "a1")
    # Best effort: the record says cancelled; A's worker honours it at its next lease check.
    assert record.status == "cancelled"
    assert run(c.calls.get_call("myapp", "a1")).status == "cancelled"
    assert any("could not stop it yet" in e.get("log_format", "") for e in events)


def test_a_handler_that_cannot_kill_still_answers_and_logs() -> None:
    clock = Clock()
    call = sleep_call("s1")

    async def kill(call_id: str) -> bool:
        raise RuntimeError("engine hung")

    handler = make_cancel_handler(lambda call_id: call if call_id == "s1" else None, kill, clock)
    with capturedLogs() as events:
        record = handler("myapp", "s1")
    assert record is not None and record.status == "cancelled"
    assert any("Could not stop" in e.get("log_format", "") for e in events)
    assert handler("myapp", "other") is None


def ended(d: Deferred[CallResult]) -> CallResult:
    """How a call that must have ended by now ended."""
    assert d.called, "the call is still running"
    result = d.result
    assert isinstance(result, CallResult), result
    return result


def attrs_running(record: CallRecord) -> CallRecord:
    import attrs

    return attrs.evolve(record, status=CallStatus.RUNNING, started_at=record.created_at)


@implementer(ICancelBus)
class BrokenBus:
    """A bus whose Redis is down."""

    def __init__(self) -> None:
        self.published = 0

    def on_cancel(self, handler: CancelHandler) -> None:
        pass

    async def publish(self, app_name: str, call_id: str, wait: float = 0.0) -> CallRecord | None:
        self.published += 1
        raise QueueUnavailable("queue unavailable: redis down")
