"""Hot routes that together want more containers than their app's (or the node's) cap
share the slots instead of thrashing (``HotRunner.reclaim_idle``, the ``Slots``
pressure hook and its retries), with ``FakeDriver``'s scripted hot containers on a
``Clock``.

The finding (bench/README.md, issue 15): 4 routes x ``max_concurrency`` 2 of one app
under ``APP_MAX_CONCURRENCY`` 4, calls spread over the routes: a route's start took
another route's container that was idle for a moment between two calls, so calls paid
container starts, and a route left with none kept the clients' connections waiting
(its start asked once and then waited up to ``ADMISSION_WAIT``).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import Overloaded
from ironfunctions.models import Call, CallRequest, CallResult, CallStatus, Route
from ironfunctions.runner.admission import PRESSURE_RETRY_S, Slots
from ironfunctions.runner.hot import RECLAIM_MIN_IDLE_S, HotRunner

from tests.unit.test_hot import HotFakeDriver

START_S = 0.3  # a hot container's start (the real engine: ~0.3-1 s)
RTT_S = 0.001  # from a call's answer to the client's next request
STAGGER_S = 0.0025  # between two connections' first requests, as wrk opens them
ROUTES = ("/hot1", "/hot2", "/hot3", "/hot4")


def route_call(path: str, n: int, app: str = "a", **route_kw: Any) -> Call:
    fields: dict[str, Any] = {"format": "http", "max_concurrency": 2, "timeout": 30, "idle_timeout": 10}
    fields.update(route_kw)
    route = Route(app_name=app, path=path, image="hotimg", **fields)
    return Call(f"C{n}", route, CallRequest(method="POST", url=f"http://h/r/{app}{path}", body=b"hi"))


class EngineLikeDriver(HotFakeDriver):
    """Hot containers that take ``START_S`` to start, calls that take 5-15 ms (not all
    alike, so containers go idle at different moments), and removals that take
    ``remove_delay`` s, as on a real engine (kill + rm): a slot comes back a while after
    its container was chosen to go."""

    def __init__(self, clock: Clock, remove_delay: float = 0.05) -> None:
        super().__init__(clock)
        self.start_delay = START_S
        self.remove_delay = remove_delay
        self._delays = itertools.cycle([0.009, 0.005, 0.013, 0.007, 0.015, 0.011])

    @property
    def delay(self) -> float:
        return next(self._delays)

    @delay.setter
    def delay(self, value: float) -> None:
        pass  # HotFakeDriver's fixed delay: the cycle above is used instead

    async def remove(self, container_id: str) -> None:
        await deferLater(self.clock, self.remove_delay)
        await super().remove(container_id)


class Load:
    """``connections`` closed-loop clients, each sending its next call ``RTT_S`` after
    its last one ended, the calls spread over ``targets`` (app, path) in turn (as wrk
    with the bench's Lua script); the connections start ``STAGGER_S`` apart."""

    def __init__(self, runner: HotRunner, clock: Clock, targets: list[tuple[str, str]], connections: int,
                 first: int = 0, **route_kw: Any) -> None:
        self._runner = runner
        self._clock = clock
        self._targets = targets
        self._route_kw = route_kw  # the routes' fields (route_call's)
        self._numbers = itertools.count(first)
        self.results: list[CallResult] = []
        self.failures: list[Failure] = []
        self.running = True
        for k in range(connections):
            clock.callLater(k * STAGGER_S, self._next)

    def _next(self) -> None:
        if not self.running:
            return
        n = next(self._numbers)
        app, path = self._targets[n % len(self._targets)]
        d = Deferred.fromCoroutine(self._runner.run(route_call(path, n, app, **self._route_kw)))
        d.addCallbacks(self._done, self._failed)

    def _done(self, result: CallResult) -> None:
        self.results.append(result)
        self._clock.callLater(RTT_S, self._next)

    def _failed(self, failure: Failure) -> None:
        self.failures.append(failure)
        self._clock.callLater(0.1, self._next)  # as a client backing off


class SharingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.driver = EngineLikeDriver(self.clock)

    def node(self, limit: int, app_limit: int = 0) -> tuple[Slots, HotRunner]:
        slots = Slots(limit, self.clock, 100, 10.0, app_limit=app_limit)
        runner = HotRunner(self.driver, slots, self.clock, "node1")
        slots.on_pressure(runner.reclaim_idle)
        return slots, runner

    def advance(self, seconds: float, step: float = 0.001) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def run_load(self, runner: HotRunner, targets: list[tuple[str, str]], seconds: float) -> Load:
        """One call per route first, in turn (as the bench's warm-up), then the load."""
        for n, (app, path) in enumerate(targets):
            warm = Deferred.fromCoroutine(runner.run(route_call(path, -1 - n, app)))
            self.advance(START_S + 0.02)
            assert self.successResultOf(warm).status == CallStatus.SUCCESS
        load = Load(runner, self.clock, targets, connections=8)
        self.advance(seconds)
        return load

    def settle(self, slots: Slots, runner: HotRunner, *loads: Load) -> None:
        """Stop the load, let every call end and every container expire: nothing is
        left waiting and no timer is left behind."""
        for load in loads:
            load.running = False
        self.advance(30, step=0.05)
        assert slots.in_use == 0 and slots.waiting == 0
        assert sum(runner.containers().values()) == 0
        assert self.clock.getDelayedCalls() == []

    def test_routes_of_one_app_over_its_cap_settle_on_a_share_each_instead_of_thrashing(self) -> None:
        """4 routes x max_concurrency 2 = 8 wanted, APP_MAX_CONCURRENCY 4: one
        container each, started once, and every call served (20 s: past ADMISSION_WAIT)."""
        slots, runner = self.node(limit=8, app_limit=4)
        load = self.run_load(runner, [("a", p) for p in ROUTES], seconds=20)
        starts = len(self.driver.started_specs)
        assert starts <= 8, f"{starts} container starts for {len(load.results)} calls"
        assert runner.containers() == {("a", p): 1 for p in ROUTES}
        assert load.failures == [] and len(load.results) > 5000
        assert all(r.status == CallStatus.SUCCESS for r in load.results)
        self.advance(20)  # the same load goes on: no container moves any more
        assert len(self.driver.started_specs) == starts and load.failures == []
        self.settle(slots, runner, load)

    def test_routes_of_many_apps_over_the_node_limit_settle_too(self) -> None:
        """The same node-wide: 4 apps' routes want 8 containers of MAX_CONCURRENCY 4."""
        slots, runner = self.node(limit=4)
        targets = [(f"app{i}", "/hot") for i in range(4)]
        load = self.run_load(runner, targets, seconds=20)
        assert len(self.driver.started_specs) <= 8
        assert runner.containers() == {target: 1 for target in targets}
        assert load.failures == [] and len(load.results) > 5000
        self.settle(slots, runner, load)

    def test_a_route_with_no_container_gets_one_from_a_route_holding_two(self) -> None:
        """Balancing: /hot1 holds the app's whole cap (2 busy containers, calls queued);
        /hot2's first call gets one of them, taken when its call ends, and the queued
        calls of /hot1 are served by its other container. No ping-pong after."""
        slots, runner = self.node(limit=8, app_limit=2)
        busy = self.run_load(runner, [("a", "/hot1")], seconds=1)
        assert runner.containers() == {("a", "/hot1"): 2}
        first = len(busy.results)
        other = Load(runner, self.clock, [("a", "/hot2")], connections=1)
        self.advance(1)
        assert other.results and other.results[0].wait_ms < 1000
        self.advance(5)
        assert runner.containers() == {("a", "/hot1"): 1, ("a", "/hot2"): 1}
        assert len(self.driver.started_specs) == 3
        assert busy.failures == other.failures == [] and len(busy.results) - first > 300
        self.settle(slots, runner, busy, other)

    def test_a_cold_call_gets_the_slot_of_a_container_idle_the_minimum_time(self) -> None:
        """Both slots hold hot containers that were busy a moment ago: not taken at
        once (they are their routes' working set), but once one has been idle
        RECLAIM_MIN_IDLE_S, well within ADMISSION_WAIT."""
        slots, runner = self.node(limit=2)
        for n, path in enumerate(("/hot1", "/hot2")):
            Deferred.fromCoroutine(runner.run(route_call(path, n)))
        self.advance(START_S + 0.02)
        assert sum(runner.containers().values()) == 2
        idle_since = self.clock.seconds()
        cold = Deferred.fromCoroutine(slots.acquire("b"))
        served: list[float] = []
        cold.addCallback(lambda _: served.append(self.clock.seconds() - idle_since))
        self.advance(0.5)
        self.assertNoResult(cold)
        self.advance(RECLAIM_MIN_IDLE_S + PRESSURE_RETRY_S)
        self.successResultOf(cold)
        # idle the minimum time, found by the next retry, then removed (kill + rm)
        assert RECLAIM_MIN_IDLE_S <= served[0] <= RECLAIM_MIN_IDLE_S + PRESSURE_RETRY_S + self.driver.remove_delay
        assert sum(runner.containers().values()) == 1 and slots.in_use == 2
        slots.release("b")

    def test_a_cold_call_of_an_app_at_its_cap_gets_a_slot_from_its_busy_route(self) -> None:
        """The app's one route holds its cap of 2, both containers busy with calls
        queued behind: a cold call (which counts as holding none) gets one of them when
        its call ends; the route's queue is served by the other."""
        slots, runner = self.node(limit=8, app_limit=2)
        load = self.run_load(runner, [("a", "/hot1")], seconds=1)
        cold = Deferred.fromCoroutine(slots.acquire("a"))
        self.advance(0.5)
        self.successResultOf(cold)
        assert runner.containers() == {("a", "/hot1"): 1}
        self.advance(2)
        assert load.failures == [] and runner.containers() == {("a", "/hot1"): 1}
        slots.release("a")
        self.settle(slots, runner, load)


class PressureRetryTests(SynchronousTestCase):
    """A call still waiting for a slot asks the hooks again every PRESSURE_RETRY_S, and
    no retry outlives the waiting calls."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slots = Slots(1, self.clock, max_waiting=10, wait_bound=5)
        self.asked: list[tuple[str | None, tuple[str, str] | None]] = []
        self.slots.on_pressure(self.hook)
        self.successResultOf(Deferred.fromCoroutine(self.slots.acquire("a")))

    def hook(self, app: str | None, route: tuple[str, str] | None) -> bool:
        self.asked.append((app, route))
        return False

    def test_a_waiting_call_asks_again_until_it_is_served(self) -> None:
        waiter = Deferred.fromCoroutine(self.slots.acquire("a", ("a", "/hot")))
        assert self.asked == [("a", ("a", "/hot"))]
        self.clock.advance(PRESSURE_RETRY_S)
        self.clock.advance(PRESSURE_RETRY_S)
        assert len(self.asked) == 3
        self.slots.release("a")
        self.successResultOf(waiter)
        assert self.clock.getDelayedCalls() == []

    def test_calls_waiting_alike_are_asked_for_once_per_retry(self) -> None:
        waiters = [Deferred.fromCoroutine(self.slots.acquire("b")) for _ in range(5)]
        del self.asked[:]
        self.clock.advance(PRESSURE_RETRY_S)
        assert self.asked == [(None, None)]  # b is not at its cap: any app's container helps
        for d in waiters:
            d.cancel()
            self.failureResultOf(d, Overloaded)
        assert self.clock.getDelayedCalls() == []

    def test_no_retry_is_left_after_a_refused_or_cancelled_wait(self) -> None:
        refused = Deferred.fromCoroutine(self.slots.acquire("a"))
        self.clock.advance(5)
        self.failureResultOf(refused, Overloaded)
        assert self.clock.getDelayedCalls() == []
        gone = Deferred.fromCoroutine(self.slots.acquire("a"))
        gone.cancel()
        self.failureResultOf(gone, Overloaded)
        assert self.clock.getDelayedCalls() == []
