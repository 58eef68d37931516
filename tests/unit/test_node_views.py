"""A node of worker processes answers as one node (``workers/views.py``, issue 15):
``/stats`` sums every worker's figures whichever worker is asked, and the parent's
balancer agent sees the node's calls in flight, its recent ``wait_time`` and whether
it has started, from the workers' half-second reports. Loopback links and a ``Clock``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.balancer.waits import WaitWindow
from ironfunctions.balancer.weight import Load
from ironfunctions.errors import NotReady
from ironfunctions.workers.views import (
    MAX_SAMPLES, NODE_STATS_TIMEOUT_S, REPORT_INTERVAL_S, STATS_TIMEOUT_S, NodeViews, WaitSamples, WorkerViews,
)
from tests.unit.test_worker_slots import LoopChannel, pair


class Worker:
    """One worker's side, with figures a test sets."""

    def __init__(self, link: LoopChannel, clock: Clock, stats: dict[str, int]) -> None:
        self.stats = stats
        self.in_flight = 0
        self.ready = False
        self.waits = WaitSamples()
        self.views = WorkerViews(link, clock, lambda: self.stats, lambda: self.in_flight, self.waits,
                                 lambda: self.ready)

    def node_stats(self) -> Deferred[Any]:
        return Deferred.fromCoroutine(self.views.node_stats())

    def report(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.views.report()))

    @staticmethod
    def successResultOf(d: Deferred[Any]) -> None:  # noqa: N802 (as trial's)
        results: list[Any] = []
        d.addBoth(results.append)
        assert results == [None], results


class ViewsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.window = WaitWindow(self.clock)
        self.node = NodeViews(2, self.clock, self.window)
        self.links: dict[int, tuple[LoopChannel, LoopChannel]] = {}
        self.workers: dict[int, Worker] = {}
        for index, stats in ((0, {"Queue": 1, "Running": 2, "Complete": 30}),
                             (1, {"Queue": 0, "Running": 3, "Complete": 12})):
            self.attach(index, stats)

    def attach(self, index: int, stats: dict[str, int]) -> Worker:
        parent_end, worker_end = pair()
        self.node.attach(index, parent_end)
        self.links[index] = (parent_end, worker_end)
        worker = self.workers[index] = Worker(worker_end, self.clock, stats)
        return worker

    # -- /stats

    def test_stats_are_the_sum_of_every_workers_whichever_worker_is_asked(self) -> None:
        for index in (0, 1):
            figures = self.successResultOf(self.workers[index].node_stats())
            assert figures == {"Queue": 1, "Running": 5, "Complete": 42}

    def test_a_worker_that_does_not_answer_is_left_out_after_its_timeout(self) -> None:
        stuck: Deferred[dict[str, int]] = Deferred()
        self.links[1][1].handle("stats", lambda: stuck)
        asking = self.workers[0].node_stats()
        self.assertNoResult(asking)
        self.clock.advance(STATS_TIMEOUT_S)
        assert self.successResultOf(asking) == {"Queue": 1, "Running": 2, "Complete": 30}

    def test_a_worker_whose_link_just_went_is_left_out(self) -> None:
        def gone(kind: str, *args: Any) -> Deferred[Any]:
            raise ConnectionError("the link to the other process is gone")

        self.links[1][0].request = gone  # type: ignore[method-assign]
        figures = self.successResultOf(self.workers[0].node_stats())
        assert figures == {"Queue": 1, "Running": 2, "Complete": 30}

    def test_a_dead_workers_figures_leave_the_sum(self) -> None:
        self.node.detach(1)
        assert self.successResultOf(self.workers[0].node_stats())["Complete"] == 30

    def test_stats_without_an_answer_from_the_parent_are_a_503_not_one_workers_figures(self) -> None:
        self.links[0][0].handlers["node_stats"] = lambda: Deferred()
        asking = self.workers[0].node_stats()
        self.clock.advance(NODE_STATS_TIMEOUT_S)
        self.failureResultOf(asking, NotReady)
        self.links[1][0].handlers["node_stats"] = lambda: fail(ConnectionError("gone"))
        self.failureResultOf(self.workers[1].node_stats(), NotReady)

    # -- the balancer agent's view

    def test_load_is_every_workers_calls_in_flight_and_the_p90_of_all_their_waits(self) -> None:
        self.workers[0].in_flight, self.workers[1].in_flight = 3, 4
        for ms in range(1, 9):
            self.workers[0].waits.many([("count", "run.requests", 1), ("time", "run.wait_time", ms)])
        self.workers[1].waits.timing("run.wait_time", 1000)
        self.workers[1].waits.timing("run.wait_time", 1200)
        self.workers[1].waits.timing("run.exec_time", 5000)  # not a wait
        for worker in self.workers.values():
            worker.report()
        # p90 (nearest rank) of 10 figures is the 9th: one of worker 1's two
        assert self.node.load(8) == Load(7, 8, 1000.0)
        assert self.node.in_flight() == 7

    def test_waits_are_sent_once_and_leave_the_window_after_ten_seconds(self) -> None:
        self.workers[0].waits.timing("run.wait_time", 300)
        self.workers[0].report()
        self.workers[0].report()  # nothing new
        assert self.node.load(8).wait_ms == 300.0
        self.clock.advance(10.5)
        assert self.node.load(8).wait_ms == 0.0

    def test_a_dead_workers_calls_leave_the_load_and_its_late_notice_is_ignored(self) -> None:
        self.workers[0].in_flight, self.workers[1].in_flight = 3, 4
        self.workers[0].report()
        self.workers[1].report()
        self.node.detach(1)
        assert self.node.in_flight() == 3
        self.node.report(1, 9, [], True)
        assert self.node.in_flight() == 3

    def test_the_node_is_started_once_a_worker_said_ready_and_stays_so(self) -> None:
        assert not self.node.started()
        self.workers[1].report()
        assert not self.node.started()  # no worker's backends are ready yet
        self.workers[0].ready = True
        self.workers[0].report()  # it takes connections now: the node serves
        assert self.node.started()
        self.node.detach(1)  # a worker dies and is started again: the node stays in
        self.attach(1, {})
        assert self.node.started()

    def test_each_worker_reports_at_start_and_every_half_second(self) -> None:
        worker = self.workers[0]
        sent: list[tuple[Any, ...]] = self.links[0][1].sent
        service = worker.views.report_service()
        worker.in_flight = 2
        service.startService()
        assert sent == [("load", 2, [], False)]
        worker.waits.timing("run.wait_time", 7)
        self.clock.advance(REPORT_INTERVAL_S)
        assert sent[-1] == ("load", 2, [7], False)
        assert len(sent) == 2
        service.stopService()
        self.clock.advance(REPORT_INTERVAL_S * 4)
        assert len(sent) == 2


def test_wait_samples_keep_the_newest_figures_up_to_their_bound() -> None:
    waits = WaitSamples()
    for ms in range(MAX_SAMPLES + 10):
        waits.timing("run.wait_time", ms)
    taken = waits.take()
    assert (len(taken), taken[0], taken[-1]) == (MAX_SAMPLES, 10, MAX_SAMPLES + 9)
    assert waits.take() == []


def test_the_node_views_answer_on_a_real_link_shape() -> None:
    """The handlers are what ``Link`` calls with the marshalled arguments: the load's
    waits arrive as a list, the stats as a dict."""
    clock = Clock()
    node = NodeViews(1, clock, WaitWindow(clock))
    parent_end, worker_end = pair()
    node.attach(0, parent_end)
    handlers: dict[str, Callable[..., Any]] = parent_end.handlers
    handlers["load"](1, [5, 6], True)
    assert node.started() and node.load(4) == Load(1, 4, 6.0)
