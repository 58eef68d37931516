"""Unit tests of hot-function pools, with ``FakeDriver``, a scripted hot container
speaking the ``http`` format and a ``Clock`` (no sockets, no reactor). The format
itself is tested in ``test_protocol.py``."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ironfunctions.drivers.fake import FakeDriver
from ironfunctions.drivers.interface import IAttachedContainer, IContainerStream
from ironfunctions.errors import ImageNotFound, Overloaded
from ironfunctions.models import Call, CallRequest, CallStatus, ContainerSpec, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.hot import RECLAIM_MIN_IDLE_S, HotRunner

# A scripted function: request body -> raw bytes written back (or None: no answer).
Script = Callable[[bytes], "bytes | None"]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Fn: yes\r\n\r\n%s" % (len(body), body)


def scripted(body: bytes) -> bytes | None:
    """Echo, unless the body names a misbehaviour."""
    if body == b"hang":
        return None
    if body == b"garbage":
        return b"nonsense\r\n\r\n"
    if body == b"extra":
        return ok(body) + b"more"
    return ok(body)


@implementer(IAttachedContainer)
class ScriptedContainer:
    """Answers each request written to it (after ``delay`` s) as the script says."""

    def __init__(self, driver: "HotFakeDriver", container_id: str, stream: IContainerStream) -> None:
        self.container_id = container_id
        self._driver = driver
        self._stream = stream
        self.requests: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.requests.append(data)
        body = data.split(b"\r\n\r\n", 1)[1]
        answer = self._driver.script(body)
        if answer is not None:
            self._driver.clock.callLater(self._driver.delay, self._answer, answer)

    def _answer(self, answer: bytes) -> None:
        if self.container_id in self._driver.containers:
            self._stream.stdout_received(answer)

    def close_stdin(self) -> None:
        pass

    def die(self) -> None:
        self._stream.stream_closed()


class HotFakeDriver(FakeDriver):
    """``FakeDriver`` whose long-lived containers speak the ``http`` format."""

    def __init__(self, clock: Clock, script: Script = scripted, delay: float = 0.01) -> None:
        super().__init__(clock, {"hotimg": lambda spec: None})  # type: ignore[dict-item, return-value]  # never run: start_attached is overridden
        self.clock = clock
        self.script = script
        self.delay = delay
        self.attached: dict[str, ScriptedContainer] = {}
        self.start_delay = 0.0

    async def start_attached(self, spec: ContainerSpec, stream: IContainerStream) -> IAttachedContainer:
        if self.start_delay:
            await deferLater(self.clock, self.start_delay)
        await super().start_attached(spec, stream)
        container_id = list(self.containers)[-1]
        container = ScriptedContainer(self, container_id, stream)
        self.attached[container_id] = container
        return container


def make_call(body: bytes = b"hi", call_id: str = "C1", path_suffix: bool = False, **route_kw: object) -> Call:
    fields: dict[str, object] = {"format": "http", "max_concurrency": 2, "timeout": 5, "idle_timeout": 10}
    fields.update(route_kw)
    path = "/hot2" if path_suffix else "/hot"
    route = Route(app_name="a", path=path, image="hotimg", **fields)  # type: ignore[arg-type]
    return Call(call_id, route, CallRequest(method="POST", url="http://h/r/a/hot", body=body))


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.driver = HotFakeDriver(self.clock)
        self.slots = Slots(4, self.clock, 100, 10.0)
        self.runner = HotRunner(self.driver, self.slots, self.clock, "node1")

    def run_call(self, call: Call):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self.runner.run(call))

    def finish(self, d):  # type: ignore[no-untyped-def]
        self.clock.advance(0.01)
        return self.successResultOf(d)

    def live(self) -> int:
        return len(self.driver.containers)

    def test_calls_reuse_one_idle_container(self) -> None:
        results = [self.finish(self.run_call(make_call(b"n%d" % i, f"C{i}"))) for i in range(5)]
        assert [r.body for r in results] == [b"n%d" % i for i in range(5)]
        assert all(r.status == CallStatus.SUCCESS and r.status_code == 200 for r in results)
        assert results[0].headers["X-Fn"] == ["yes"]
        assert self.live() == 1 and len(self.driver.started_specs) == 1
        assert self.slots.in_use == 1
        spec = self.driver.started_specs[0]
        assert spec.labels["io.ironfunctions.kind"] == "hot" and spec.env["APP_NAME"] == "a"

    def test_concurrent_calls_start_up_to_max_concurrency_then_wait_in_order(self) -> None:
        calls = [self.run_call(make_call(b"c%d" % i, f"C{i}")) for i in range(5)]
        assert self.live() == 2
        self.clock.advance(0.01)
        first = [self.successResultOf(d) for d in calls[:2]]
        assert [r.body for r in first] == [b"c0", b"c1"]
        self.assertNoResult(calls[2])
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        results = first + [self.successResultOf(d) for d in calls[2:]]
        assert [r.body for r in results] == [b"c%d" % i for i in range(5)]
        assert self.live() == 2
        assert results[4].wait_ms >= 20  # waited two rounds

    def test_waiting_longer_than_the_route_timeout_is_overloaded(self) -> None:
        self.driver.script = lambda body: None  # never answers
        self.driver.start_delay = 1.0
        first = self.run_call(make_call(max_concurrency=1, timeout=2))
        second = self.run_call(make_call(call_id="C2", max_concurrency=1, timeout=2))
        self.clock.advance(1)  # the container is up: the first call runs
        self.clock.advance(1)
        self.failureResultOf(second, Overloaded)
        self.assertNoResult(first)  # its own timeout counts from when it got the container
        self.clock.advance(1)
        assert self.successResultOf(first).status == CallStatus.TIMEOUT

    def test_a_cancelled_wait_gives_up_its_place_and_takes_no_container(self) -> None:
        first = self.run_call(make_call(call_id="C1", max_concurrency=1))
        second = self.run_call(make_call(call_id="C2", max_concurrency=1))
        second.cancel()
        self.failureResultOf(second, CancelledError)
        assert self.finish(first).status == CallStatus.SUCCESS
        third = self.run_call(make_call(b"3", call_id="C3", max_concurrency=1))
        assert self.finish(third).body == b"3"  # the container went idle, not to C2
        assert self.live() == 1 and len(self.driver.attached[list(self.driver.attached)[0]].requests) == 2

    def test_a_call_cancelled_while_it_waits_for_a_container_ends_at_once_and_takes_none(self) -> None:
        self.driver.script = lambda body: None if body == b"hang" else ok(body)
        first = self.run_call(make_call(b"hang", "C1", max_concurrency=1))
        self.clock.advance(0.5)
        waiting = self.run_call(make_call(b"w", "C2", max_concurrency=1))
        self.clock.advance(0.5)
        assert self.successResultOf(Deferred.fromCoroutine(self.runner.cancel("C2"))) is True
        result = self.successResultOf(waiting)  # at once: not when the container frees
        assert (result.status, result.error, result.wait_ms) == (CallStatus.CANCELLED, "Call cancelled", 500)
        self.assertNoResult(first)  # the running call is not touched
        assert self.successResultOf(Deferred.fromCoroutine(self.runner.cancel("C1"))) is True
        self.successResultOf(first)
        assert self.live() == 0
        after = self.finish(self.run_call(make_call(b"3", "C3", max_concurrency=1)))
        assert after.body == b"3"
        assert [b"w" in r for r in self.driver.attached[list(self.driver.attached)[-1]].requests] == [False]

    def test_a_call_waiting_for_a_slot_stops_the_longest_idle_container(self) -> None:
        slots = Slots(2, self.clock, 100, 10.0)
        runner = HotRunner(self.driver, slots, self.clock, "node1")
        slots.on_pressure(runner.reclaim_idle)
        older = Deferred.fromCoroutine(runner.run(make_call(b"a", "A")))
        self.clock.advance(0.01)
        newer = Deferred.fromCoroutine(runner.run(make_call(b"b", "B", path_suffix=True)))
        self.clock.advance(0.01)
        assert self.successResultOf(older).body == b"a" and self.successResultOf(newer).body == b"b"
        assert slots.in_use == 2 and self.live() == 2
        cold = Deferred.fromCoroutine(slots.acquire("b"))  # e.g. a cold call: no slot is free
        self.clock.advance(0)
        self.assertNoResult(cold)  # both were busy a moment ago (test_hot_share.py)
        self.clock.advance(RECLAIM_MIN_IDLE_S)
        self.successResultOf(cold)
        assert self.live() == 1 and slots.in_use == 2
        assert runner.containers() == {("a", "/hot"): 0, ("a", "/hot2"): 1}  # the longest idle went
        assert runner.reclaim_idle() is True and self.live() == 0
        assert runner.reclaim_idle() is False

    def test_an_app_at_its_cap_stops_its_own_idle_container_not_another_apps(self) -> None:
        """APP_MAX_CONCURRENCY: app a at its cap of 1 has an idle container on one route
        and a call for another; only a's idle container frees a slot a may take."""
        import attrs

        slots = Slots(4, self.clock, 100, 10.0, app_limit=1)
        runner = HotRunner(self.driver, slots, self.clock, "node1")
        slots.on_pressure(runner.reclaim_idle)
        other = make_call(b"b", "B")
        other = attrs.evolve(other, route=attrs.evolve(other.route, app_name="b"))
        assert self.finish(Deferred.fromCoroutine(runner.run(other))).body == b"b"  # idle the longest
        self.clock.advance(1)
        assert self.finish(Deferred.fromCoroutine(runner.run(make_call(b"a", "A")))).body == b"a"
        second_route = Deferred.fromCoroutine(runner.run(make_call(b"a2", "A2", path_suffix=True)))
        self.clock.advance(RECLAIM_MIN_IDLE_S)  # a's container was busy a moment ago: not taken at once
        self.clock.advance(0.01)
        assert self.successResultOf(second_route).body == b"a2"
        assert runner.containers() == {("b", "/hot"): 1, ("a", "/hot"): 0, ("a", "/hot2"): 1}
        assert slots.held("a") == 1 and slots.held("b") == 1

    def test_a_start_that_gets_no_slot_fails_no_call_the_pools_container_serves(self) -> None:
        """The node is full (one slot: this route's busy container): a second call waits,
        and the start its pool asks for gets no slot within ADMISSION_WAIT; the call is
        served by the container once it is free, not failed with the start."""
        slots = Slots(1, self.clock, 100, 10.0)
        runner = HotRunner(self.driver, slots, self.clock, "node1")
        self.driver.delay = 11.0  # the first call outlasts the admission wait
        first = Deferred.fromCoroutine(runner.run(make_call(b"1", "C1", timeout=30)))
        second = Deferred.fromCoroutine(runner.run(make_call(b"2", "C2", timeout=30)))
        self.clock.advance(10)  # the start gave up
        self.assertNoResult(second)
        self.clock.advance(1)
        assert self.successResultOf(first).body == b"1"
        self.clock.advance(11)
        assert self.successResultOf(second).body == b"2"
        assert len(self.driver.started_specs) == 1 and slots.waiting == 0

    def test_idle_container_is_removed_after_idle_timeout_and_its_slot_freed(self) -> None:
        self.finish(self.run_call(make_call(idle_timeout=10)))
        self.clock.advance(9)
        assert self.live() == 1
        self.finish(self.run_call(make_call(idle_timeout=10)))  # busy again: idle clock restarts
        self.clock.advance(9.5)
        assert self.live() == 1
        self.clock.advance(1)
        assert self.live() == 0 and self.slots.in_use == 0
        assert self.runner.containers() == {("a", "/hot"): 0}  # what the node gauges report

    def test_timeout_kills_the_container_then_answers_timeout(self) -> None:
        self.finish(self.run_call(make_call(timeout=3)))
        d = self.run_call(make_call(b"hang", "C2", timeout=3))
        self.clock.advance(3)
        result = self.successResultOf(d)
        assert (result.status, result.error) == (CallStatus.TIMEOUT, "Timed out")
        assert self.live() == 0 and len(self.driver.removed) == 1
        after = self.finish(self.run_call(make_call(b"next", "C3", timeout=3)))
        assert after.body == b"next" and len(self.driver.started_specs) == 2

    def test_garbage_and_extra_bytes_fail_the_call_and_replace_the_container(self) -> None:
        for bad, message in [(b"garbage", "output is not an HTTP response"),
                             (b"extra", "more than one response to a request")]:
            result = self.finish(self.run_call(make_call(bad, "BAD")))
            assert result.status == CallStatus.ERROR and message in result.error
            assert self.live() == 0
            assert self.finish(self.run_call(make_call(b"ok", "OK"))).body == b"ok"

    def test_container_that_dies_mid_call_fails_that_call_only(self) -> None:
        self.driver.script = lambda body: None
        d = self.run_call(make_call())
        self.clock.advance(0)
        (container,) = self.driver.attached.values()
        container.die()
        result = self.successResultOf(d)
        assert (result.status, result.error) == (CallStatus.ERROR, "Function exited unexpectedly")
        self.driver.script = scripted
        assert self.finish(self.run_call(make_call(b"x", "C2"))).body == b"x"

    def test_output_between_calls_kills_the_container(self) -> None:
        self.finish(self.run_call(make_call()))
        (container,) = self.driver.attached.values()
        container._stream.stdout_received(ok(b"late"))
        assert self.live() == 0
        assert self.finish(self.run_call(make_call(b"x", "C2"))).body == b"x"

    def test_retire_removes_idle_containers_and_busy_ones_after_their_call(self) -> None:
        self.finish(self.run_call(make_call(b"1", "C1")))
        busy = self.run_call(make_call(b"2", "C2"))
        second = self.run_call(make_call(b"3", "C3"))  # starts the second container
        self.clock.advance(0)
        self.runner.retire("a", "/hot")
        assert self.live() == 2
        self.clock.advance(0.01)
        assert self.successResultOf(busy).body == b"2" and self.successResultOf(second).body == b"3"
        assert self.live() == 0 and self.slots.in_use == 0

    def test_a_changed_route_value_gets_fresh_containers(self) -> None:
        self.finish(self.run_call(make_call()))
        self.finish(self.run_call(make_call(memory=256)))
        assert len(self.driver.started_specs) == 2
        assert self.driver.started_specs[1].memory_mb == 256
        assert self.live() == 1

    def test_start_failure_fails_the_waiting_call(self) -> None:
        d = self.run_call(Call("C1", Route("a", "/x", "missing", format="http"), CallRequest("GET", "http://h/")))
        self.failureResultOf(d, ImageNotFound)
        assert self.slots.in_use == 0

    def test_close_removes_every_container(self) -> None:
        self.finish(self.run_call(make_call()))
        from twisted.internet.defer import Deferred

        self.successResultOf(Deferred.fromCoroutine(self.runner.close()))
        assert self.live() == 0 and self.slots.in_use == 0

    def test_cancel_kills_the_container_serving_that_call_only(self) -> None:
        self.driver.script = lambda body: None if body == b"hang" else ok(body)
        hung = self.run_call(make_call(b"hang", "HUNG"))
        other = self.run_call(make_call(b"hang", "OTHER"))
        self.clock.advance(0)
        assert self.live() == 2
        assert self.successResultOf(Deferred.fromCoroutine(self.runner.cancel("HUNG"))) is True
        result = self.successResultOf(hung)
        assert (result.status, result.error) == (CallStatus.ERROR, "Call cancelled")
        self.assertNoResult(other)
        assert self.live() == 1
        assert self.successResultOf(Deferred.fromCoroutine(self.runner.cancel("NOPE"))) is False

    def test_calls_beyond_the_routes_waiting_bound_are_refused_at_once(self) -> None:
        runner = HotRunner(self.driver, self.slots, self.clock, "node1", max_waiting=1)
        self.driver.script = lambda body: None
        first = Deferred.fromCoroutine(runner.run(make_call(call_id="C1", max_concurrency=1, timeout=7)))
        self.clock.advance(0)  # C1 runs
        second = Deferred.fromCoroutine(runner.run(make_call(call_id="C2", max_concurrency=1, timeout=7)))
        third = Deferred.fromCoroutine(runner.run(make_call(call_id="C3", max_concurrency=1, timeout=7)))
        assert self.failureResultOf(third, Overloaded).value.retry_after == 7
        self.assertNoResult(first)
        self.assertNoResult(second)

    def test_a_retired_pool_counts_until_its_last_container_is_gone(self) -> None:
        busy = self.run_call(make_call(b"1", "C1"))
        self.clock.advance(0)
        self.runner.retire("a")
        assert self.runner.containers() == {("a", "/hot"): 1}
        fresh = self.run_call(make_call(b"2", "C2"))  # a new pool for the same route
        self.clock.advance(0.01)
        assert self.successResultOf(busy).body == b"1" and self.successResultOf(fresh).body == b"2"
        assert self.runner.containers() == {("a", "/hot"): 1}  # the retired pool's went
        assert len(self.driver.started_specs) == 2
