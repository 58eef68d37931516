"""Async workers and /tasks through store and queue outages (SPEC §10), on a fake clock:
every path where a worker meets a backend error (claim, start record, lease renewal,
result record, ack, /tasks), and the platform failures that are not attempts."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallResult, CallStatus, Route
from ironfunctions.runner.async_worker import AsyncWorkerService
from ironfunctions.runner.external import complete_for_runner, reserve_for_runner
from ironfunctions.runner.submit import AsyncSubmitter
from tests.flaky import FlakyCallStore, FlakyQueue
from tests.sync import run

ROUTE = Route("a", "/job", "img", type="async", timeout=10)
HOUR = 3600.0


class Node:
    def __init__(self, outcomes: Iterable[Any] = (), max_age: float = HOUR, ready: Deferred[None] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue = FlakyQueue(self.clock)
        self.calls = FlakyCallStore()
        self.metrics = MemoryMetrics()
        self.outcomes = list(outcomes)
        self.started: list[str] = []
        self.pending: Deferred[CallResult] | None = None
        self.worker = AsyncWorkerService(
            self.queue, self.calls, self.lookup, self.app_config, self.run_call, self.kill, self.clock,
            self.metrics, num_workers=1, max_attempts=3, retry_base=1.0, max_age=max_age,
            when_ready=None if ready is None else (lambda: ready),
        )
        self.submitter = AsyncSubmitter(self.queue, self.calls, self.clock, self.metrics)

    async def lookup(self, app: str, path: str) -> Route:
        return ROUTE

    async def app_config(self, app: str) -> Mapping[str, str]:
        return {}

    async def run_call(self, call: Call) -> CallResult:
        self.started.append(call.id)
        outcome = self.outcomes.pop(0) if self.outcomes else CallStatus.SUCCESS
        if outcome == "hang":
            self.pending = Deferred()
            return await self.pending
        if isinstance(outcome, Exception):
            raise outcome
        return CallResult(call.id, outcome, body=b"ok", exit_code=0 if outcome == CallStatus.SUCCESS else 1,
                          error="" if outcome == CallStatus.SUCCESS else "exit code 1")

    async def kill(self, call_id: str) -> None:
        pass

    def submit(self, call_id: str = "c1") -> Any:
        return run(self.submitter.submit(Call(call_id, ROUTE, CallRequest("POST", "http://x/r/a/job", body=b"in"))))

    def record(self, call_id: str = "c1") -> Any:
        return run(self.calls.get_call("a", call_id))

    def advance(self, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


def test_claim_failures_back_off_and_the_call_runs_when_the_queue_returns() -> None:
    node = Node()
    node.submit()
    node.queue.fail("reserve", 5)
    node.worker.startService()
    assert node.started == []
    node.advance(10)
    rec = node.record()
    assert (rec.status, rec.attempt) == ("success", 1) and node.queue.failed == ["reserve"] * 5
    node.worker.stopService()


def test_a_store_down_at_delivery_is_not_an_attempt_however_long_it_lasts() -> None:
    """The issue-12 bug: a Postgres restart turned accepted calls into 'too many
    attempts' at attempt 1. Here the store fails far more deliveries than
    ASYNC_MAX_ATTEMPTS, and the call still runs, as attempt 1, once it is back."""
    node = Node()
    node.submit()
    node.calls.fail("get_call", 8)
    node.worker.startService()
    node.advance(300)
    rec = node.record()
    assert (rec.status, rec.attempt, rec.error) == ("success", 1, "")
    assert node.started == ["c1"] and run(node.queue.depth()) == 0
    node.worker.stopService()


def test_the_start_record_failing_puts_the_call_back_uncounted() -> None:
    node = Node()
    node.submit()
    node.calls.fail("update_call", 4)
    node.worker.startService()
    assert node.started == []
    node.advance(60)
    rec = node.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 0)
    node.worker.stopService()


def test_the_first_lease_renewal_failing_puts_the_call_back_uncounted() -> None:
    node = Node()
    node.submit()
    node.queue.fail("renew", 4)
    node.worker.startService()
    node.advance(60)
    rec = node.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 0) and node.started == ["c1"]
    node.worker.stopService()


def test_a_release_the_queue_refuses_is_tried_again_so_the_call_runs_when_it_returns() -> None:
    """Seen in the cluster outage test: a worker that could not process a call because
    Redis went away could not give it back either, and the call waited out its 60 s
    first lease. The release is retried while the queue is down."""
    node = Node()
    node.submit()
    node.queue.fail("renew", 1)  # the queue goes away as the call starts: put back...
    node.queue.fail("release", 3)  # ...but the queue refuses the release for ~3 s
    node.worker.startService()
    node.advance(10)
    rec = node.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 0) and node.started == ["c1"]
    assert node.queue.failed == ["renew", "release", "release", "release"]
    node.worker.stopService()


def test_renewals_failing_while_the_call_runs_are_tried_again() -> None:
    node = Node(["hang"])
    node.submit()
    node.worker.startService()
    node.queue.fail("renew", 2)  # two ticks of the keeper; the 20 s lease survives them
    node.advance(30)
    assert node.pending is not None
    node.pending.callback(CallResult("c1", CallStatus.SUCCESS, body=b"late"))
    rec = node.record()
    assert (rec.status, rec.body) == ("success", b"late") and node.started == ["c1"]
    node.worker.stopService()


def test_an_outcome_the_store_refuses_is_written_when_it_returns_and_the_call_not_run_again() -> None:
    node = Node(["hang"])
    node.submit()
    node.worker.startService()
    assert node.record().status == "running" and node.pending is not None
    node.calls.down = True  # a Postgres restart while the call runs
    node.pending.callback(CallResult("c1", CallStatus.SUCCESS, body=b"done"))
    node.advance(60)  # longer than the 20 s lease: kept by the retries
    node.calls.down = False
    node.advance(10)
    rec = node.record()
    assert (rec.status, rec.body, rec.attempt, rec.lost) == ("success", b"done", 1, 0)
    assert node.started == ["c1"] and run(node.queue.depth()) == 0
    node.worker.stopService()


def test_an_ack_the_queue_refuses_leaves_the_call_done_and_it_never_runs_again() -> None:
    node = Node()
    node.submit()
    node.queue.fail("ack", 1)
    node.worker.startService()
    assert node.record().status == "success"
    node.advance(120)  # the lease expires: delivered again, found done, acked
    assert node.started == ["c1"] and run(node.queue.holds(["c1"])) == set()
    node.worker.stopService()


@pytest.mark.parametrize("failure", [errors.Overloaded("busy"), errors.DockerUnavailable("down"),
                                     errors.NotReady("node is stopping")])
def test_platform_failures_of_the_run_go_back_with_backoff_uncounted(failure: Exception) -> None:
    node = Node([failure] * 5)  # more than ASYNC_MAX_ATTEMPTS
    node.submit()
    node.worker.startService()
    rec = node.record()
    assert (rec.status, rec.reason, rec.attempt) == ("queued", "platform_retry", 1)
    node.advance(0.9)
    assert len(node.started) == 1  # backs off: 1 s, 2 s, 4 s...
    node.advance(120)
    rec = node.record()
    assert (rec.status, rec.attempt) == ("success", 1) and len(node.started) == 6
    node.worker.stopService()


def test_a_call_the_platform_cannot_run_for_max_age_ends_expired() -> None:
    node = Node([errors.DockerUnavailable("down")] * 1000, max_age=300)
    node.submit()
    node.worker.startService()
    node.advance(400, step=1)
    rec = node.record()
    assert (rec.status, rec.reason) == ("error", "expired") and run(node.queue.depth()) == 0
    assert 5 <= len(node.started) <= 12  # backed off, capped at a minute: not a hot loop
    node.worker.stopService()


def test_the_third_lost_node_ends_the_call_node_lost() -> None:
    node = Node()
    node.submit()
    for lost in range(3):  # a node (here a /tasks runner) takes it, records it running, dies
        task = run(reserve_for_runner(node.queue, node.calls, node.lookup, node.app_config, node.clock))
        assert task is not None and node.record().status == "running" and node.record().lost == lost
        node.clock.advance(ROUTE.timeout + 11)  # its lease expires
    node.worker.startService()
    rec = node.record()
    assert (rec.status, rec.reason, rec.lost, rec.attempt) == ("error", "node_lost", 3, 1) and node.started == []
    assert run(node.queue.depth()) == 0
    node.worker.stopService()


def test_a_call_released_at_stop_is_not_counted_as_lost() -> None:
    node = Node(["hang"])
    node.submit()
    node.worker.startService()
    node.worker.stopService()
    node.advance(31)  # the drain bound passes: released, its record back to queued
    rec = node.record()
    assert (rec.status, rec.reason) == ("queued", "platform_retry")
    again = Node()
    again.calls, again.queue = node.calls, node.queue
    again.worker = AsyncWorkerService(again.queue, again.calls, again.lookup, again.app_config, again.run_call,
                                      again.kill, node.clock, again.metrics, 1, 3, 1.0)
    again.worker.startService()
    rec = node.record()
    assert (rec.status, rec.attempt, rec.lost) == ("success", 1, 0)
    again.worker.stopService()


def test_workers_reserve_nothing_before_the_backends_are_up() -> None:
    ready: Deferred[None] = Deferred()
    node = Node(ready=ready)
    node.queue.down = True  # "queue not started"
    node.worker.startService()
    node.advance(10)
    assert node.queue.failed == []  # no reserve tried, so no "Queue unavailable" noise
    node.queue.down = False
    node.submit()
    ready.callback(None)
    assert node.record().status == "success"
    node.worker.stopService()


# -- /tasks


def test_tasks_reserve_with_the_store_down_gives_the_call_back_uncounted() -> None:
    node = Node()
    node.submit()
    node.calls.fail("get_call", 1)
    with pytest.raises(errors.DatastoreUnavailable):
        run(reserve_for_runner(node.queue, node.calls, node.lookup, node.app_config, node.clock))
    node.clock.advance(1.1)  # released with a short backoff, not left to a 60 s lease
    task = run(reserve_for_runner(node.queue, node.calls, node.lookup, node.app_config, node.clock))
    assert task is not None and task.call_id == "c1" and task.attempt == 1 and task.record.lost == 0


def test_tasks_complete_writes_the_record_before_the_ack() -> None:
    node = Node()
    node.submit()
    task = run(reserve_for_runner(node.queue, node.calls, node.lookup, node.app_config, node.clock))
    assert task is not None
    node.queue.fail("ack", 1)
    with pytest.raises(errors.QueueUnavailable):
        run(complete_for_runner(node.queue, node.calls, "a", task.task_id, node.clock))
    assert node.record().status == "success"  # the outcome survived the failed ack


def test_tasks_complete_with_the_store_down_leaves_the_task_reserved() -> None:
    node = Node()
    node.submit()
    task = run(reserve_for_runner(node.queue, node.calls, node.lookup, node.app_config, node.clock))
    assert task is not None
    node.calls.fail("update_call", 1)
    node.calls.fail("put_calls", 1)
    with pytest.raises(errors.DatastoreUnavailable):
        run(complete_for_runner(node.queue, node.calls, "a", task.task_id, node.clock))
    assert run(node.queue.holds(["c1"])) == {"c1"}  # not acked: the runner's DELETE can be retried
    assert run(complete_for_runner(node.queue, node.calls, "a", task.task_id, node.clock)) == "c1"
    assert node.record().status == "success" and run(node.queue.holds(["c1"])) == set()
