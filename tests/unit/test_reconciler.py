"""The reconciler (SPEC §10) on memory backends and a fake clock: the datastore is the
source of truth, so what the queue lost is queued again from the records."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallStatus, Route
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.runner.reconciler import PassReport, Reconciler
from ironfunctions.runner.submit import AsyncSubmitter
from tests.sync import run

ROUTE = Route("a", "/job", "img", type="async", timeout=10)


class Cluster:
    def __init__(self, lead: bool | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue = MemoryQueue(self.clock)
        self.calls = MemoryCallStore()
        self.metrics = MemoryMetrics()
        self.routes = {("a", "/job"): ROUTE}
        self.leads: list[tuple[str, str, int]] = []
        self.lead = lead
        self.reconciler = Reconciler(self.calls, self.queue, self.lookup, self.clock, self.metrics, "node-1",
                                     try_lead=None if lead is None else self.try_lead, interval=20, grace=30,
                                     page=200)
        self.submitter = AsyncSubmitter(self.queue, self.calls, self.clock, self.metrics)

    async def lookup(self, app: str, path: str) -> Route:
        try:
            return self.routes[(app, path)]
        except KeyError:
            raise errors.RouteNotFound() from None

    async def try_lead(self, name: str, owner: str, ttl_ms: int) -> bool:
        self.leads.append((name, owner, ttl_ms))
        return bool(self.lead)

    def submit(self, call_id: str = "c1", priority: int = 0, body: bytes = b"in") -> Any:
        call = Call(call_id, ROUTE, CallRequest("POST", "http://x/r/a/job?q=1", {"X-A": ["1"]}, body, {"p": "v"}))
        return run(self.submitter.submit(call, priority))

    def lose_queue(self) -> None:
        """Redis restarted without persistence: everything queued is gone."""
        for call_id in list(run(self.queue.holds([c.id for c in run(self.calls.list_unfinished(10**15, None, 10**6))]))):
            run(self.queue.remove(call_id))

    def record(self, call_id: str = "c1") -> Any:
        return run(self.calls.get_call("a", call_id))

    def reconcile(self) -> PassReport:
        report: PassReport = run(self.reconciler.run_once())
        return report


def test_queued_calls_the_queue_lost_are_queued_again_with_their_request() -> None:
    c = Cluster()
    c.submit("c1", priority=2, body=b"\x00\xffbody")
    pushed = run(c.queue.reserve(60))
    run(c.queue.ack(pushed))
    c.submit("c2")
    c.lose_queue()
    c.clock.advance(31)
    report = c.reconcile()
    assert (report.requeued, report.checked) == (2, 2)
    held = run(c.queue.reserve(60))
    assert held.item == pushed.item  # same request, app, path and priority (first)
    assert c.metrics.total("reconciler.requeued") == 2


def test_calls_younger_than_the_grace_are_left_to_their_submit() -> None:
    c = Cluster()
    c.submit()
    c.lose_queue()
    c.clock.advance(29)
    assert c.reconcile().requeued == 0 and run(c.queue.depth()) == 0
    c.clock.advance(2)
    assert c.reconcile().requeued == 1


def test_calls_the_queue_holds_are_left_alone() -> None:
    c = Cluster()
    c.submit("waiting")
    c.submit("leased")
    c.submit("delayed")
    run(c.queue.reserve(600))  # "waiting" is first: leased now
    c.clock.advance(60)
    assert c.reconcile() == PassReport(led=True, checked=3)


def test_running_calls_whose_lease_is_gone_are_queued_again_after_a_lease() -> None:
    c = Cluster()
    c.submit()
    c.clock.advance(31)
    now = int(c.clock.seconds() * 1000)
    run(c.calls.update_call("a", "c1", lambda r: attrs.evolve(r, status=CallStatus.RUNNING, started_at=now)))
    c.lose_queue()
    c.clock.advance(19)  # its worker may still be running it (lease: timeout 10 + 10)
    assert c.reconcile().requeued == 0
    c.clock.advance(2)
    assert c.reconcile().requeued == 1 and run(c.queue.holds(["c1"])) == {"c1"}


def test_calls_of_a_deleted_route_end_cancelled_route_deleted() -> None:
    c = Cluster()
    c.submit()
    c.lose_queue()
    del c.routes[("a", "/job")]
    c.clock.advance(31)
    assert c.reconcile().cancelled == 1
    rec = c.record()
    assert (rec.status, rec.reason) == ("cancelled", "route_deleted") and run(c.queue.depth()) == 0


def test_a_call_with_no_stored_request_cannot_be_rebuilt_and_ends_error() -> None:
    c = Cluster()
    run(c.calls.put_calls([attrs.evolve(c.submit(), id="old")]))  # from before requests were stored
    c.lose_queue()
    c.clock.advance(31)
    assert c.reconcile().failed == 1
    assert (c.record("old").status, c.record("old").reason) == ("error", "killed")
    assert c.record().status == "queued" and run(c.queue.holds(["c1"])) == {"c1"}


def test_every_page_is_walked() -> None:
    c = Cluster()
    for n in range(450):
        c.submit(f"c{n:04d}")
    c.lose_queue()
    c.clock.advance(31)
    assert c.reconcile().requeued == 450 and run(c.queue.depth()) == 450


def test_only_the_lease_holder_reconciles_and_runs_the_after_pass_hooks() -> None:
    hooks: list[str] = []

    async def rebuild_counters(report: PassReport) -> None:
        hooks.append("rebuilt")

    other = Cluster(lead=False)
    other.reconciler.add_after_pass(rebuild_counters)
    other.submit()
    other.lose_queue()
    other.clock.advance(31)
    assert other.reconcile() == PassReport(led=False) and hooks == [] and run(other.queue.depth()) == 0
    assert other.leads == [("reconciler", "node-1", 60_000)]  # outlives two missed passes
    other.lead = True
    assert other.reconcile().requeued == 1 and hooks == ["rebuilt"]


def test_store_errors_fail_the_pass_which_is_made_again_next_time() -> None:
    from tests.flaky import FlakyCallStore

    c = Cluster()
    c.calls = FlakyCallStore()
    c.reconciler = Reconciler(c.calls, c.queue, c.lookup, c.clock, c.metrics, "n", grace=30)
    c.submitter = AsyncSubmitter(c.queue, c.calls, c.clock, c.metrics)
    c.submit()
    c.lose_queue()
    c.clock.advance(31)
    c.calls.fail("list_unfinished")
    with pytest.raises(errors.DatastoreUnavailable):
        c.reconcile()
    assert c.reconcile().requeued == 1


def test_a_lost_call_runs_to_success_through_a_worker() -> None:
    from ironfunctions.models import CallResult
    from ironfunctions.runner.async_worker import AsyncWorkerService

    c = Cluster()
    c.submit()
    c.lose_queue()
    ran: list[bytes] = []

    async def run_call(call: Call) -> CallResult:
        ran.append(call.request.body)
        return CallResult(call.id, CallStatus.SUCCESS, body=b"ok")

    async def app_config(app: str) -> dict[str, str]:
        return {}

    async def kill(call_id: str) -> None:
        pass

    worker = AsyncWorkerService(c.queue, c.calls, c.lookup, app_config, run_call, kill, c.clock, c.metrics, 1, 3, 1.0)
    worker.startService()
    c.clock.advance(31)
    assert ran == [] and c.record().status == "queued"
    c.reconcile()
    c.clock.advance(0.1)
    rec = c.record()
    assert ran == [b"in"] and (rec.status, rec.attempt, rec.lost) == ("success", 1, 0)
    worker.stopService()


def test_the_queue_counters_are_rebuilt_after_a_pass_that_found_the_queue_had_lost_calls() -> None:
    """SPEC §8: the per-app counts are rebuilt by the reconciler after a queue restart."""
    from ironfunctions.runner.reconciler import rebuild_counts_after_loss

    c = Cluster()
    rebuilt: list[int] = []
    real = c.queue.rebuild_counts

    async def counting() -> None:
        rebuilt.append(1)
        await real()

    c.queue.rebuild_counts = counting  # type: ignore[method-assign]
    c.reconciler.add_after_pass(rebuild_counts_after_loss(c.queue))
    c.submit()
    c.clock.advance(31)
    assert c.reconcile().requeued == 0 and rebuilt == []  # nothing lost: no scan
    c.lose_queue()
    assert c.reconcile().requeued == 1 and rebuilt == [1]
