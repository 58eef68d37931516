"""The node's periodic reports (``runner/reports.py``): gauges at start and every
interval, ``hot.containers`` per route and per node, and ``running`` records of long
sync calls, on a ``Clock``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.calls.model import CallRecord
from ironfunctions.errors import QueueUnavailable
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallStatus, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.reports import NodeGaugesService, RunningSyncRecordsService


class NodeGaugesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = MemoryMetrics()
        self.slots = Slots(4, self.clock, 10, 1.0)
        self.depth: int | Exception = 3
        self.hot: dict[tuple[str, str], int] = {}
        self.service = NodeGaugesService(self.metrics, self.clock, self.slots, self.queue_depth, lambda: self.hot)

    async def queue_depth(self) -> int:
        if isinstance(self.depth, Exception):
            raise self.depth
        if self.depth < 0:  # a queue that never answers
            await Deferred()
        return self.depth

    def gauges(self) -> list[tuple[str, int, dict[str, str]]]:
        out = [(s.name, s.value, s.fields) for s in self.metrics.samples]
        assert all(s.kind == "gauge" for s in self.metrics.samples)
        self.metrics.samples.clear()
        return out

    def test_gauges_are_reported_at_start_and_every_five_seconds(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.slots.acquire("a")))
        self.service.startService()
        assert self.gauges() == [
            ("containers.running", 1, {}), ("hot.containers", 0, {}), ("queue.depth", 3, {}),
        ]
        self.clock.advance(4.9)
        assert self.gauges() == []
        self.depth = 7
        self.clock.advance(0.1)
        assert ("queue.depth", 7, {}) in self.gauges()
        self.service.stopService()
        self.clock.advance(10)
        assert self.gauges() == [] and self.clock.getDelayedCalls() == []

    def test_a_queue_that_never_answers_does_not_stop_the_other_gauges(self) -> None:
        self.service.startService()
        self.gauges()
        self.depth = -1
        with capturedLogs():
            for _ in range(20):
                self.clock.advance(1)
        running = [v for n, v, f in self.gauges() if n == "containers.running"]
        assert len(running) == 4  # a round every interval, each bounded by it
        self.service.stopService()

    def test_hot_containers_per_route_and_for_the_node(self) -> None:
        """Two routes of one app are two series (app= and path=); the node-wide figure
        has neither field; a route whose containers are gone is reported at 0 once."""
        self.hot = {("a", "/one"): 2, ("a", "/two"): 1, ("b", "/idle"): 0}
        self.service.report_local()
        hot = [(v, f) for n, v, f in self.gauges() if n == "hot.containers"]
        assert hot == [(2, {"app": "a", "path": "/one"}), (1, {"app": "a", "path": "/two"}), (3, {})]
        self.hot = {("a", "/one"): 0}
        self.service.report_local()
        hot = [(v, f) for n, v, f in self.gauges() if n == "hot.containers"]
        assert hot == [(0, {"app": "a", "path": "/one"}), (0, {"app": "a", "path": "/two"}), (0, {})]
        self.service.report_local()
        assert [(v, f) for n, v, f in self.gauges() if n == "hot.containers"] == [(0, {})]

    def test_connections_gauge_when_given_a_source(self) -> None:
        service = NodeGaugesService(self.metrics, self.clock, self.slots, self.queue_depth, dict, connections=lambda: 12)
        service.report_local()
        assert ("connections", 12, {}) in self.gauges()
        self.service.report_local()
        assert "connections" not in [name for name, _, _ in self.gauges()]

    def test_a_queue_not_up_yet_is_quiet_and_an_outage_later_is_a_warning(self) -> None:
        self.depth = QueueUnavailable("queue not started")
        with capturedLogs() as events:
            self.service.startService()
            assert [n for n, _, _ in self.gauges()] == ["containers.running", "hot.containers"]
            self.depth = 1
            self.clock.advance(5)
            assert ("queue.depth", 1, {}) in self.gauges()
            self.depth = QueueUnavailable("queue unavailable: down")
            self.clock.advance(5)
            assert [n for n, _, _ in self.gauges()] == ["containers.running", "hot.containers"]
            self.depth = 2
            self.clock.advance(5)  # the loop goes on after a failure
            assert ("queue.depth", 2, {}) in self.gauges()
        warnings = [e for e in events if e["log_level"].name == "warn"]
        assert [e["error"] for e in warnings] == ["queue unavailable: down"]
        self.service.stopService()


def sync_call(call_id: str, type_: str = "sync") -> Call:
    return Call(call_id, Route("a", "/p", "img", type=type_), CallRequest("POST", "http://h/r/a/p"))


class RunningSyncRecordsTests(SynchronousTestCase):
    def test_a_sync_call_running_past_a_second_gets_one_running_record(self) -> None:
        clock = Clock()
        clock.advance(100)
        running: list[tuple[Call, float]] = []
        asked: list[float] = []
        records: list[CallRecord] = []

        def calls_running(older_than: float) -> list[tuple[Call, float]]:
            asked.append(older_than)
            return list(running)

        service = RunningSyncRecordsService(calls_running, records.append, clock)
        service.startService()
        assert records == [] and asked == []  # first check after a second
        running[:] = [(sync_call("S1"), 99.5), (sync_call("A1", "async"), 99.0)]
        clock.advance(1)
        assert asked == [1.0]
        assert [(r.id, r.status, r.created_at, r.app_name, r.path) for r in records] == [
            ("S1", CallStatus.RUNNING, 99500, "a", "/p")]
        clock.advance(1)
        assert len(records) == 1  # once per call
        running[:] = [(sync_call("S2"), 101.0)]
        clock.advance(1)
        assert [r.id for r in records] == ["S1", "S2"]
        service.stopService()
        assert clock.getDelayedCalls() == []
