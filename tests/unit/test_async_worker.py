"""Async workers on a fake clock: memory queue, memory call store, scripted runs."""

from __future__ import annotations

from typing import Any, Coroutine, Iterable, Mapping, cast

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallResult, CallStatus, Route
from ironfunctions.mq.interface import QueueItem, QueueLimits
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.runner.async_worker import AsyncWorkerService, retry_delay
from ironfunctions.runner.submit import AsyncSubmitter
from tests.sync import run

ROUTE = Route("a", "/job", "img", type="async", timeout=10)




class Harness:
    def __init__(self, outcomes: Iterable[str | Exception] | None = None, max_attempts: int = 3) -> None:
        self.draining = False
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue = MemoryQueue(self.clock)
        self.calls = MemoryCallStore()
        self.metrics = MemoryMetrics()
        self.routes = {("a", "/job"): ROUTE}
        self.outcomes = list(outcomes or [])
        self.started: list[Call] = []
        self.pending: Deferred[CallResult] | None = None
        self.killed: list[str] = []
        self.worker = AsyncWorkerService(
            self.queue, self.calls, self.lookup, self.app_config, self.run_call, self.kill,
            self.clock, self.metrics, num_workers=1, max_attempts=max_attempts, retry_base=1.0,
            draining=lambda: self.draining,
        )
        self.submitter = AsyncSubmitter(self.queue, self.calls, self.clock, self.metrics)

    async def lookup(self, app: str, path: str) -> Route:
        try:
            return self.routes[(app, path)]
        except KeyError:
            raise errors.RouteNotFound() from None

    async def app_config(self, app: str) -> Mapping[str, str]:
        return {"K": "v"}

    async def run_call(self, call: Call) -> CallResult:
        self.started.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else CallStatus.SUCCESS
        if outcome == "hang":
            self.pending = Deferred()
            return await self.pending
        if isinstance(outcome, Exception):
            raise outcome
        return CallResult(call.id, outcome, body=b"out:" + call.request.body, stderr=b"err line\n",
                          error="" if outcome == CallStatus.SUCCESS else "exit code 1",
                          exit_code=0 if outcome == CallStatus.SUCCESS else 1, run_ms=5)

    async def kill(self, call_id: str) -> None:
        self.killed.append(call_id)
        if self.pending is not None:
            self.pending.callback(CallResult(call_id, CallStatus.ERROR, error="exit code 137", exit_code=137))

    def submit(self, call_id: str = "c1", body: bytes = b"in") -> Any:
        call = Call(call_id, ROUTE, CallRequest("POST", "http://x/r/a/job", body=body))
        return run(self.submitter.submit(call))

    def record(self, call_id: str = "c1") -> Any:
        return run(self.calls.get_call("a", call_id))


def test_submitted_call_is_queued_then_run_and_recorded_with_body_and_log() -> None:
    h = Harness()
    assert h.submit().status == "queued"
    assert h.record().status == "queued"
    h.worker.startService()
    rec = h.record()
    assert (rec.status, rec.body, rec.attempt) == ("success", b"out:in", 1)
    assert run(h.calls.get_log("a", "c1")) == b"err line\n"
    assert h.started[0].app_config == {"K": "v"} and h.started[0].route == ROUTE
    assert run(h.queue.depth()) == 0
    h.worker.stopService()


def test_failures_retry_with_doubling_delay_then_stay_error() -> None:
    h = Harness([CallStatus.ERROR, CallStatus.ERROR, CallStatus.ERROR])
    h.submit()
    h.worker.startService()
    assert len(h.started) == 1 and h.record().status == "queued" and h.record().reason == "retry"
    h.clock.advance(0.99)
    assert len(h.started) == 1
    h.clock.advance(0.02)  # 1 s after the first failure
    assert len(h.started) == 2
    h.clock.advance(1.9)
    assert len(h.started) == 2
    h.clock.advance(0.2)  # 2 s after the second
    assert len(h.started) == 3
    rec = h.record()
    assert (rec.status, rec.attempt, rec.error) == ("error", 3, "exit code 1")
    h.clock.advance(100)
    assert len(h.started) == 3 and run(h.queue.depth()) == 0
    assert h.metrics.total("async.dead") == 1
    h.worker.stopService()


def test_retry_then_success() -> None:
    h = Harness([CallStatus.TIMEOUT, CallStatus.SUCCESS])
    h.submit()
    h.worker.startService()
    h.clock.advance(1.01)
    rec = h.record()
    assert (rec.status, rec.attempt) == ("success", 2)
    h.worker.stopService()


def test_could_not_start_counts_as_a_failed_attempt() -> None:
    h = Harness([errors.ImageNotFound("img")], max_attempts=1)
    h.submit()
    h.worker.startService()
    rec = h.record()
    assert (rec.status, rec.error) == ("error", "Image not found: img")
    h.worker.stopService()


def test_cancelled_while_queued_is_never_run() -> None:
    h = Harness()
    h.submit()
    from ironfunctions.api.calls import store_canceller

    run(cast("Coroutine[Any, Any, Any]", store_canceller(h.calls, h.clock)("a", "c1")))  # a coroutine, typed Awaitable
    h.worker.startService()
    assert h.started == [] and h.record().status == "cancelled"
    assert run(h.queue.depth()) == 0
    h.worker.stopService()


def test_cancel_while_running_kills_the_container_and_keeps_cancelled() -> None:
    h = Harness(["hang"])
    h.submit()
    h.worker.startService()
    assert h.record().status == "running"
    from ironfunctions.api.calls import store_canceller

    run(cast("Coroutine[Any, Any, Any]", store_canceller(h.calls, h.clock)("a", "c1")))  # a coroutine, typed Awaitable
    h.clock.advance(5)  # the lease keeper's next tick notices
    assert h.killed == ["c1"]
    assert h.record().status == "cancelled"
    h.worker.stopService()


def test_lease_is_renewed_while_a_long_call_runs() -> None:
    h = Harness(["hang"])
    h.submit()
    h.worker.startService()
    for _ in range(30):  # far past the 20 s lease (timeout 10 + 10 margin)
        h.clock.advance(5)
    assert len(h.started) == 1  # never redelivered
    assert h.pending is not None
    h.pending.callback(CallResult("c1", CallStatus.SUCCESS, body=b"late"))
    assert h.record().status == "success"
    h.worker.stopService()


def test_redelivery_after_a_lost_node_counts_a_loss_not_an_attempt() -> None:
    h = Harness()
    h.submit()
    # Another node reserved it, recorded it running and died: its lease expires.
    run(h.queue.reserve(60, 0))
    run(h.calls.put_calls([attrs.evolve(h.record(), status=CallStatus.RUNNING)]))
    h.clock.advance(61)
    h.worker.startService()
    rec = h.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 1)
    h.worker.stopService()


def test_a_reservation_that_never_started_the_call_counts_nothing() -> None:
    h = Harness()
    h.submit()
    run(h.queue.reserve(60, 0))  # reserved, then its node died before writing "running"
    h.clock.advance(61)
    h.worker.startService()
    rec = h.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 0)
    h.worker.stopService()


def test_route_deleted_before_run_ends_cancelled_route_deleted() -> None:
    h = Harness()
    h.submit()
    del h.routes[("a", "/job")]
    h.worker.startService()
    rec = h.record()
    assert (rec.status, rec.reason) == ("cancelled", "route_deleted") and h.started == []
    assert run(h.queue.depth()) == 0
    h.worker.stopService()


class DownQueue(MemoryQueue):
    async def push(self, item: QueueItem, delay: float = 0, limits: QueueLimits | None = None) -> bool:
        raise errors.QueueUnavailable()


def test_submit_with_queue_down_raises_and_marks_the_record_not_accepted() -> None:
    h = Harness()
    h.submitter = AsyncSubmitter(DownQueue(h.clock), h.calls, h.clock, h.metrics)
    with pytest.raises(errors.QueueUnavailable):
        h.submit()
    rec = h.record()
    assert (rec.status, rec.reason) == ("cancelled", "not_accepted")
    with pytest.raises(errors.CallNotFound):  # nothing left for the reconciler to queue
        run(h.calls.get_request("a", "c1"))


def test_stop_releases_unfinished_reservations() -> None:
    h = Harness(["hang"])
    h.submit()
    h.worker.startService()
    d = h.worker.stopService()
    h.clock.advance(31)  # drain bound passes
    assert d.called
    # Back in the queue for another node right away.
    held = run(h.queue.reserve(60, 0))
    assert held is not None and held.call_id == "c1"


def test_a_draining_node_takes_no_new_async_calls_and_gives_back_one_it_just_reserved() -> None:
    """After SIGTERM the node serves on for DRAIN_GRACE; an async call it started then
    would be cut short by its shutdown: another node runs it instead, at once."""
    h = Harness(["hang"])
    h.submit("c1")
    h.worker.startService()  # c1 runs (and hangs)
    h.draining = True
    h.submit("c2")  # wakes the worker's reserve? It is busy with c1: c2 waits in the queue
    assert [c.id for c in h.started] == ["c1"]
    run(h.kill("c1"))  # c1 ends; the worker does not reserve again
    h.clock.advance(10)
    assert [c.id for c in h.started] == ["c1"]
    free = set()  # what another node can take now: c2 (and c1, failed, for its retry)
    while (held := run(h.queue.reserve(60, 0))) is not None:
        free.add(held.call_id)
    assert "c2" in free
    assert h.record("c2").status == "queued" and h.record("c2").attempt == 1
    h.worker.stopService()


def test_a_call_reserved_as_the_drain_begins_goes_back_unrun() -> None:
    h = Harness()
    h.draining = True
    h.worker.startService()  # running, but its loop takes nothing while draining
    h.submit("c1")
    run(h.worker._hold(run(h.queue.reserve(60, 0))))  # reserved just before the drain began
    assert h.started == []
    held = run(h.queue.reserve(60, 0))
    assert held is not None and held.call_id == "c1" and h.record("c1").status == "queued"
    h.worker.stopService()


def test_retry_delay_doubles() -> None:
    assert [retry_delay(1.0, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_sync_record_equals_the_two_step_record() -> None:
    from ironfunctions.runner.records import finished_record, new_record, sync_record

    for status in (CallStatus.SUCCESS, CallStatus.ERROR, CallStatus.TIMEOUT):
        result = CallResult("c1", status, body=b"b", error="e", exit_code=1, wait_ms=1, start_ms=2, run_ms=3)
        assert sync_record("c1", ROUTE, 100, result, 200) == finished_record(
            new_record("c1", ROUTE, 100), result, 200, keep_body=False)


def test_sync_record_puts_every_value_in_its_field() -> None:
    """sync_record passes CallRecord's fields by position: a reordering must show here."""
    from ironfunctions.calls.model import CallRecord
    from ironfunctions.runner.records import sync_record

    route = Route(app_name="app", path="/path", image="image", type="sync", format="http")
    result = CallResult("c1", CallStatus.ERROR, error="oops", exit_code=7, wait_ms=11, start_ms=13, run_ms=17)
    assert sync_record("c1", route, 1000, result, 2000) == CallRecord(
        id="c1", app_name="app", path="/path", image="image", type="sync", format="http", status=CallStatus.ERROR,
        reason="bad_exit", created_at=1000, started_at=1983, completed_at=2000, attempt=1, exit_code=7,
        error="oops", wait_ms=11, start_ms=13, run_ms=17, body=None, priority=0,
    )


def test_async_wait_includes_the_time_in_the_queue() -> None:
    h = Harness()
    h.submit()
    h.clock.advance(2.5)  # queued, no worker yet
    h.worker.startService()
    rec = h.record()
    assert rec.status == "success" and rec.wait_ms == 2500
    h.worker.stopService()
