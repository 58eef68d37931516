"""Apps share the node fairly (SPEC §8, ``APP_MAX_CONCURRENCY``): the pure choice of
whom a freed slot goes to, ``Slots`` with a per-app cap, and the agent with a flooding
app (``Clock``, ``FakeDriver``, no reactor)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import Overloaded
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallResult, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.agent import Agent
from ironfunctions.runner.fairqueue import next_app

from tests.fake_images import fake_driver
from tests.images import image_tag


class NextAppTests(SynchronousTestCase):
    def test_nobody_waiting_means_nobody_is_chosen(self) -> None:
        assert next_app({}, lambda app: 0, 2) is None

    def test_apps_at_their_cap_are_skipped_even_if_they_waited_longest(self) -> None:
        held = {"a": 2, "b": 1}
        assert next_app({"a": 1, "b": 5}, held.__getitem__, 2) == "b"
        assert next_app({"a": 1}, held.__getitem__, 2) is None

    def test_the_app_holding_fewest_slots_goes_first(self) -> None:
        held = {"flood": 3, "quiet": 0}
        assert next_app({"flood": 1, "quiet": 9}, held.__getitem__, 4) == "quiet"

    def test_ties_go_to_the_call_waiting_longest(self) -> None:
        held = {"a": 1, "b": 1}
        assert next_app({"a": 7, "b": 3}, held.__getitem__, 4) == "b"


def acquire(slots: Slots, app: str) -> Deferred[None]:
    return Deferred.fromCoroutine(slots.acquire(app))


class SlotsFairShareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = MemoryMetrics()
        self.slots = Slots(4, self.clock, max_waiting=10, wait_bound=5, app_limit=2, metrics=self.metrics)

    def test_an_app_at_its_cap_waits_though_slots_are_free_and_another_app_does_not(self) -> None:
        self.successResultOf(acquire(self.slots, "a"))
        self.successResultOf(acquire(self.slots, "a"))
        third = acquire(self.slots, "a")
        self.assertNoResult(third)
        assert self.slots.in_use == 2 and self.slots.waiting == 1
        self.successResultOf(acquire(self.slots, "b"))  # a free slot, at once
        assert self.metrics.total("app.throttled", app="a") == 1
        assert self.metrics.total("app.throttled") == 1  # b's call was not throttled
        self.slots.release("a")
        self.successResultOf(third)  # a's own slot came back to it
        assert (self.slots.in_use, self.slots.held("a"), self.slots.held("b")) == (3, 2, 1)

    def test_an_app_calls_wait_in_their_order(self) -> None:
        self.successResultOf(acquire(self.slots, "a"))
        self.successResultOf(acquire(self.slots, "a"))
        first, second = acquire(self.slots, "a"), acquire(self.slots, "a")
        self.slots.release("a")
        self.successResultOf(first)
        self.assertNoResult(second)

    def test_a_freed_slot_goes_to_the_app_holding_fewer_before_an_older_waiter(self) -> None:
        slots = Slots(4, self.clock, max_waiting=10, wait_bound=5, app_limit=4)
        for _ in range(3):
            self.successResultOf(acquire(slots, "flood"))
        self.successResultOf(acquire(slots, "other"))
        flood_waiter = acquire(slots, "flood")  # node full; flood is below its cap of 4
        quiet_waiter = acquire(slots, "quiet")
        slots.release("other")
        self.successResultOf(quiet_waiter)  # holds 0: before flood, which holds 3
        self.assertNoResult(flood_waiter)
        slots.release("flood")
        self.successResultOf(flood_waiter)
        assert (slots.in_use, slots.held("flood"), slots.held("quiet"), slots.waiting) == (4, 3, 1, 0)

    def test_a_flooding_app_cannot_keep_another_app_out(self) -> None:
        """The finding: with one FIFO for all, app b's call queued behind a's flood."""
        for _ in range(2):
            self.successResultOf(acquire(self.slots, "a"))
        flood = [acquire(self.slots, "a") for _ in range(8)]
        b_calls = [acquire(self.slots, "b") for _ in range(2)]
        for d in b_calls:
            self.successResultOf(d)
        assert all(not d.called for d in flood)
        assert self.metrics.total("app.throttled", app="a") == 8

    def test_waits_end_with_Overloaded_after_the_wait_bound(self) -> None:
        self.successResultOf(acquire(self.slots, "a"))
        self.successResultOf(acquire(self.slots, "a"))
        waiter = acquire(self.slots, "a")
        self.clock.advance(4.9)
        self.assertNoResult(waiter)
        self.clock.advance(0.1)
        failure = self.failureResultOf(waiter, Overloaded)
        assert failure.value.retry_after == 1
        assert self.slots.waiting == 0 and self.clock.getDelayedCalls() == []
        self.slots.release("a")
        assert self.slots.in_use == 1

    def test_at_most_max_waiting_calls_wait_across_apps(self) -> None:
        slots = Slots(1, self.clock, max_waiting=2, wait_bound=7)
        self.successResultOf(acquire(slots, "a"))
        waiting = [acquire(slots, "a"), acquire(slots, "b")]
        refused = self.failureResultOf(acquire(slots, "c"), Overloaded)
        assert refused.value.retry_after == 7
        assert all(not d.called for d in waiting)

    def test_a_cancelled_wait_takes_no_slot(self) -> None:
        self.successResultOf(acquire(self.slots, "a"))
        self.successResultOf(acquire(self.slots, "a"))
        gone, stays = acquire(self.slots, "a"), acquire(self.slots, "a")
        gone.cancel()
        self.failureResultOf(gone, Overloaded)  # the caller gave up: it is told it was not served
        assert self.slots.waiting == 1
        self.slots.release("a")
        self.successResultOf(stays)
        assert self.slots.held("a") == 2 and self.slots.waiting == 0

    def test_a_slot_released_by_the_call_it_was_handed_to_settles_right(self) -> None:
        """Handing a slot over resumes the waiter at once; if it gives the slot back
        at once (a container that failed to start), the books still balance."""
        self.successResultOf(acquire(self.slots, "a"))
        self.successResultOf(acquire(self.slots, "a"))
        waiter = acquire(self.slots, "a")
        waiter.addCallback(lambda _: self.slots.release("a"))
        self.slots.release("a")
        assert (self.slots.in_use, self.slots.held("a")) == (1, 1)

    def test_pressure_hooks_are_told_which_app_is_capped_and_what_the_call_waits_for(self) -> None:
        asked: list[tuple[str | None, tuple[str, str] | None]] = []

        def reclaim(app: str | None, route: tuple[str, str] | None) -> bool:
            asked.append((app, route))
            return False

        self.slots.on_pressure(reclaim)
        slots = self.slots
        for app in ("a", "a", "b", "b"):
            self.successResultOf(acquire(slots, app))
        acquire(slots, "a")  # a at its cap: only an idle container of a's helps
        Deferred.fromCoroutine(slots.acquire("c", ("c", "/hot")))  # the node is full: any app's helps
        assert asked == [("a", None), (None, ("c", "/hot"))]


def make_call(app: str, call_id: str, sleep: str) -> Call:
    route = Route(app_name=app, path="/slow", image=image_tag("sleep"), timeout=30)
    return Call(call_id, route, CallRequest(method="POST", url=f"http://h/r/{app}/slow", body=b""),
                app_config={"SLEEP": sleep})


class AgentFairShareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.driver = fake_driver(self.clock)

    def agent(self, app_limit: int) -> Agent:
        agent = Agent.cold(self.driver, self.clock, "node", MemoryMetrics(), max_concurrency=4,
                           wait_bound=30, app_limit=app_limit)
        agent.startService()
        self.addCleanup(self.finish, agent)
        return agent

    def finish(self, agent: Agent) -> None:
        """Let every call end and stop the agent: no call is left suspended."""
        for _ in range(30):
            self.clock.advance(1)
        self.successResultOf(agent.stopService())
        assert agent.slots.in_use == 0 and agent.slots.waiting == 0

    def flood_then_other_app(self, agent: Agent) -> tuple[list[Deferred[CallResult]], Deferred[CallResult]]:
        def run(call: Call) -> Deferred[CallResult]:
            return Deferred.fromCoroutine(agent.run_call(call))

        flood = [run(make_call("a", f"A{n}", "2")) for n in range(10)]
        self.clock.advance(0.1)
        other = run(make_call("b", "B1", "0"))
        return flood, other

    def test_another_app_runs_at_once_while_one_app_floods(self) -> None:
        flood, other = self.flood_then_other_app(self.agent(app_limit=2))
        self.clock.advance(0)
        result: Any = self.successResultOf(other)
        assert result.status == "success" and result.wait_ms == 0
        assert sum(d.called for d in flood) == 0
        self.clock.advance(2)
        assert sum(d.called for d in flood) == 2  # a ran two at a time

    def test_without_a_cap_the_other_app_waits_for_a_container_to_end_but_not_behind_the_flood(self) -> None:
        """Without a cap (app_limit = the node's limit) a holds every slot and b waits
        until one ends; the freed slot still goes to b (it holds fewer) before a's
        six queued calls."""
        flood, other = self.flood_then_other_app(self.agent(app_limit=4))
        self.clock.advance(0)
        self.assertNoResult(other)
        self.clock.advance(1.9)
        self.clock.advance(0)
        result: Any = self.successResultOf(other)
        assert result.status == "success" and result.wait_ms == 1900
        assert sum(d.called for d in flood) == 4
