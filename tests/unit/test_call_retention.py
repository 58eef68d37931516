"""Data has an end (SPEC §8): the CALL_RETENTION sweep, and what deleting an app does to
its calls, through the API on the memory node (``Clock``, no reactor)."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.api import build_api
from ironfunctions.calls.model import CallRecord
from ironfunctions.calls.retention import CallRetentionService
from ironfunctions.errors import DatastoreUnavailable
from ironfunctions.models import CallStatus
from ironfunctions.mq.interface import QueueItem
from ironfunctions.routecache import RouteCache
from ironfunctions.runner.cancel import make_app_calls_ender
from ironfunctions.testing import MemoryCallStore, MemoryMetrics, memory_node
from tests.sync import run

DAY = 86400.0
S = CallStatus


def record(n: int, status: CallStatus, completed_s: float | None = None, app: str = "a", created_s: float = 0) -> CallRecord:
    return CallRecord(
        id=f"c{n:04d}", app_name=app, path="/p", status=status, created_at=int(created_s * 1000),
        completed_at=None if completed_s is None else int(completed_s * 1000),
    )


def stored(calls: MemoryCallStore, app: str = "a") -> set[str]:
    from ironfunctions.calls.model import CallQuery

    return {c.id for c in run(calls.list_calls(CallQuery(app, per_page=100))).calls}


class RetentionServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(30 * DAY)
        self.calls = MemoryCallStore()
        self.metrics = MemoryMetrics()
        self.service = CallRetentionService(self.calls, self.clock, self.metrics, retention=7 * DAY,
                                            interval=300, batch=10)

    def test_finished_calls_older_than_the_retention_go_at_the_next_sweep_and_no_others(self) -> None:
        now = self.clock.seconds()
        run(self.calls.put_calls([
            record(1, S.SUCCESS, now - 8 * DAY),
            record(2, S.ERROR, now - 6 * DAY),  # within the retention
            record(3, S.CANCELLED, None, created_s=now - 9 * DAY),  # no completed_at: its created_at
            record(4, S.QUEUED, None, created_s=now - 20 * DAY),  # never, however old
            record(5, S.RUNNING, None, created_s=now - 20 * DAY),
        ]))
        run(self.calls.put_log("a", "c0001", b"log"))
        self.service.startService()
        self.clock.advance(299)
        assert len(stored(self.calls)) == 5  # not before the interval: off the start path
        with capturedLogs() as events:
            self.clock.advance(1)
        assert stored(self.calls) == {"c0002", "c0004", "c0005"}
        assert self.metrics.total("calls.expired") == 2
        assert [e["count"] for e in events if "count" in e] == [2]
        with capturedLogs() as events:
            self.clock.advance(300)  # nothing more to delete: nothing said
        assert [e for e in events if "count" in e] == []
        self.service.stopService()

    def test_a_sweep_deletes_in_batches_and_lets_the_reactor_in_between(self) -> None:
        old = self.clock.seconds() - 8 * DAY
        run(self.calls.put_calls([record(n, S.SUCCESS, old) for n in range(25)]))
        self.service.startService()
        d = Deferred.fromCoroutine(self.service.sweep())
        assert len(stored(self.calls)) == 15  # one batch, then the reactor's turn
        self.assertNoResult(d)
        self.clock.advance(0)
        self.clock.advance(0)
        self.successResultOf(d)
        assert stored(self.calls) == set() and self.metrics.total("calls.expired") == 25
        self.service.stopService()

    def test_a_stopping_node_ends_its_sweep_after_the_current_batch(self) -> None:
        old = self.clock.seconds() - 8 * DAY
        run(self.calls.put_calls([record(n, S.SUCCESS, old) for n in range(25)]))
        self.service.startService()
        d = Deferred.fromCoroutine(self.service.sweep())
        self.service.stopService()
        self.clock.advance(0)
        self.successResultOf(d)
        assert len(stored(self.calls)) == 5  # the batch under way finished; no third one began

    def test_a_failed_sweep_is_a_warning_and_the_next_one_goes_on(self) -> None:
        run(self.calls.put_calls([record(1, S.SUCCESS, self.clock.seconds() - 8 * DAY)]))
        real = self.calls.delete_finished
        failures = [DatastoreUnavailable("down")]

        async def flaky(before_ms: int, limit: int, app_name: str | None = None) -> int:
            if failures:
                raise failures.pop()
            return await real(before_ms, limit, app_name)

        self.calls.delete_finished = flaky  # type: ignore[method-assign]
        self.service.startService()
        with capturedLogs() as events:
            self.clock.advance(300)
        assert any(e.get("log_level").name == "warn" for e in events)  # type: ignore[union-attr]
        assert stored(self.calls) == {"c0001"}
        self.clock.advance(300)
        assert stored(self.calls) == set()
        self.service.stopService()


class KilledCalls:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, call_id: str) -> bool:
        self.ids.append(call_id)
        return True


def request(treq: StubTreq, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    kw = {} if body is None else {"data": json.dumps(body).encode()}
    d = treq.request(method, "http://node" + path, **kw)  # type: ignore[attr-defined]
    out: list[tuple[int, Any]] = []
    d.addCallback(lambda r: treq.content(r).addCallback(lambda c: out.append((r.code, json.loads(c)))))  # type: ignore[attr-defined]
    treq.flush()
    return out[0]


class AppDeletionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.node = memory_node(self.clock)
        self.killed = KilledCalls()
        ender = make_app_calls_ender(self.node.calls, self.clock, self.node.queue, self.killed, lambda: [])
        ds = self.node.datastore
        self.treq = StubTreq(build_api(ds, RouteCache(ds, self.clock), calls=self.node.calls, clock=self.clock,
                                       host_memory_mb=1024, end_app_calls=ender))
        assert request(self.treq, "POST", "/v1/apps", {"app": {"name": "a"}})[0] == 200
        assert request(self.treq, "POST", "/v1/apps", {"app": {"name": "b"}})[0] == 200
        now = self.clock.seconds()
        run(self.node.calls.put_calls([
            record(1, S.SUCCESS, now - 5), record(2, S.ERROR, now - 1), record(3, S.QUEUED, created_s=now - 1),
            record(4, S.RUNNING, created_s=now - 1), record(5, S.SUCCESS, now - 5, app="b"),
            record(6, S.QUEUED, created_s=now - 1, app="b"),
        ]))
        run(self.node.calls.put_log("a", "c0001", b"a's log"))
        for n, app in ((3, "a"), (6, "b")):
            run(self.node.queue.push(QueueItem(f"c{n:04d}", app, "/p")))

    def listed(self, app: str) -> dict[str, tuple[str, str]]:
        code, body = request(self.treq, "GET", f"/v1/apps/{app}/calls")
        assert code == 200, body
        return {c["id"]: (c["status"], c["reason"]) for c in body["calls"]}

    def test_deleting_an_app_deletes_its_finished_calls_and_cancels_the_rest(self) -> None:
        assert request(self.treq, "DELETE", "/v1/apps/a")[0] == 200
        assert request(self.treq, "POST", "/v1/apps", {"app": {"name": "a"}})[0] == 200  # the same name again
        cancelled = ("cancelled", "route_deleted")
        assert self.listed("a") == {"c0003": cancelled, "c0004": cancelled}  # no finished call of the old app
        assert request(self.treq, "GET", "/v1/apps/a/calls/c0001/log")[0] == 404
        assert self.killed.ids == ["c0004"]  # the running one is stopped
        assert run(self.node.queue.depth()) == 1  # the queued one is out of the queue; b's stays
        assert self.listed("b") == {"c0005": ("success", ""), "c0006": ("queued", "")}  # other apps untouched

    def test_a_missing_app_is_404_and_ends_nothing(self) -> None:
        assert request(self.treq, "DELETE", "/v1/apps/nope")[0] == 404
        assert self.killed.ids == [] and run(self.node.queue.depth()) == 2

    def test_calls_in_flight_on_this_node_of_a_deleted_app_are_stopped(self) -> None:
        """A sync call has no record before it ends (or a running one after a second):
        the runner's own list finds it."""
        from ironfunctions.models import Call, CallRequest, Route

        def in_flight() -> list[Call]:
            request = CallRequest(method="GET", url="http://h/r/x/p")
            return [Call("sync-a", Route(app_name="a", path="/p", image="i"), request),
                    Call("sync-b", Route(app_name="b", path="/p", image="i"), request)]

        killed = KilledCalls()
        end = make_app_calls_ender(self.node.calls, self.clock, self.node.queue, killed, in_flight)
        self.successResultOf(Deferred.fromCoroutine(end("a")))  # type: ignore[arg-type]  # an async def
        assert killed.ids == ["c0004", "sync-a"]
