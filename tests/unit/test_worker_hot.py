"""Hot routes on a node of worker processes (issue 15): each worker's ``HotRunner``
with its own containers, the parent's ``SlotBroker`` and ``ForwardRelay``, over
loopback links, with ``FakeDriver``'s scripted hot containers on a ``Clock``.

A route's ``max_concurrency`` counts the whole node's containers; calls of a route
whose containers all run in another worker are sent there (a route at 1 runs on one
container whichever worker its calls reach); a route under load on both workers is
evened out to a container in each, after which no call crosses; a route's container
follows its calls to the worker they reach when none reach the worker it is in; a
worker whose route is full asks the parent again only now and then, not per call."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import Overloaded, RouteMoved
from ironfunctions.models import CallStatus
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.hot import HotRunner
from ironfunctions.runner.hot_context import ELSEWHERE_S, FOLLOW_MIN_CALLS, FOLLOW_S, FULL_S
from ironfunctions.workers.forward import Forwarder, ForwardRelay
from ironfunctions.workers.slots import RESERVE_S, RemoteSlots, SlotBroker
from ironfunctions.workers.wire import error_fields, rebuild_error

from tests.unit.test_hot_share import START_S, EngineLikeDriver, Load, route_call
from tests.unit.test_worker_slots import LoopChannel, pair


class Worker:
    def __init__(self, index: int, clock: Clock, broker: SlotBroker, relay: ForwardRelay) -> None:
        parent_end, worker_end = pair(clock)
        broker.attach(index, parent_end)
        relay.attach(index, parent_end)
        self.index = index
        self.link: LoopChannel = worker_end
        self.driver = EngineLikeDriver(clock)
        self.slots = RemoteSlots(worker_end, broker.slots.limit)
        forwarder = Forwarder(worker_end)
        self.runner = HotRunner(self.driver, self.slots, clock, "node1",
                                forward=forwarder.forward, forward_cancel=forwarder.cancel)
        forwarder.serve(self.runner.run, self.runner.cancel)
        self.slots.on_pressure(self.runner.reclaim_idle)
        self.slots.on_give_back(self.runner.give_back_route)

    def sent(self, kind: str) -> int:
        return sum(1 for message in self.link.sent if message[0] == kind)

    def served_here(self) -> int:
        """Calls this worker's containers answered (its own and forwarded ones)."""
        return sum(len(c.requests) for c in self.driver.attached.values())


class WorkerNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = SlotBroker(Slots(8, self.clock, 100, 10.0, app_limit=8), self.clock)
        self.relay = ForwardRelay()
        self.workers = [Worker(i, self.clock, self.broker, self.relay) for i in (0, 1)]

    def advance(self, seconds: float, step: float = 0.001) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def warm(self, worker: Worker, max_concurrency: int, calls: int = 1) -> None:
        """``calls`` calls at once on ``worker`` (each starts a container, up to the route's limit)."""
        ds = [Deferred.fromCoroutine(worker.runner.run(route_call("/hot1", -1 - n, max_concurrency=max_concurrency)))
              for n in range(calls)]
        self.advance(START_S + 0.05)
        assert all(self.successResultOf(d).status == CallStatus.SUCCESS for d in ds)

    def load(self, worker: Worker, connections: int, max_concurrency: int) -> Load:
        """``connections`` clients of ``worker`` on ``/hot1`` (call ids differ across workers)."""
        return Load(worker.runner, self.clock, [("a", "/hot1")], connections,
                    first=100_000 * worker.index, max_concurrency=max_concurrency)

    def starts(self) -> int:
        return sum(len(w.driver.started_specs) for w in self.workers)

    def test_a_route_at_one_runs_on_one_container_whichever_worker_its_calls_reach(self) -> None:
        self.warm(self.workers[0], 1)
        loads = [self.load(w, 4, 1) for w in self.workers]
        self.advance(5)
        for load in loads:
            load.running = False
        self.advance(1)
        assert all(not load.failures for load in loads), [f.value for load in loads for f in load.failures]
        assert all(r.status == CallStatus.SUCCESS for load in loads for r in load.results)
        assert len(loads[1].results) > 100  # worker 1's clients were served...
        assert self.starts() == 1  # ...on worker 0's one container
        assert self.workers[1].served_here() == 0
        assert self.workers[0].served_here() == sum(len(load.results) for load in loads) + 1
        assert self.broker.route_containers(("a", "/hot1")) == {0: 1}

    def test_a_route_of_two_under_load_on_both_workers_is_evened_out_and_calls_stop_crossing(self) -> None:
        self.warm(self.workers[0], 2, calls=2)  # both of the route's containers in worker 0
        assert self.broker.route_containers(("a", "/hot1")) == {0: 2}
        loads = [self.load(w, 4, 2) for w in self.workers]
        self.advance(2 * RESERVE_S)
        assert self.broker.route_containers(("a", "/hot1")) == {0: 1, 1: 1}
        forwarded = self.workers[1].sent("forward")
        served = [w.served_here() for w in self.workers]
        self.advance(5)
        for load in loads:
            load.running = False
        self.advance(1)
        assert self.workers[1].sent("forward") == forwarded  # none crossed since
        assert all(w.served_here() - s > 100 for w, s in zip(self.workers, served))
        assert all(not load.failures for load in loads)
        assert self.starts() <= 3  # warm-up, worker 0's second (given back), worker 1's

    def test_calls_waiting_in_one_worker_get_the_container_idling_in_the_other(self) -> None:
        self.warm(self.workers[0], 2)
        self.warm(self.workers[1], 2)  # one container of the route in each
        assert self.broker.route_containers(("a", "/hot1")) == {0: 1, 1: 1}
        load = self.load(self.workers[1], 4, 2)  # the route's calls now reach worker 1 only
        self.advance(3)
        assert self.broker.route_containers(("a", "/hot1")) == {1: 2}
        load.running = False
        self.advance(1)
        assert not load.failures and self.workers[1].sent("forward") == 0

    def test_a_route_at_one_follows_its_calls_to_the_worker_they_reach(self) -> None:
        self.warm(self.workers[0], 1)  # the route's one container is in worker 0...
        load = self.load(self.workers[1], 4, 1)  # ...and its calls now reach worker 1 only
        self.advance(FOLLOW_S + 1)
        assert self.broker.route_containers(("a", "/hot1")) == {1: 1}
        forwarded = self.workers[1].sent("forward")
        self.advance(3)
        load.running = False
        self.advance(1)
        # The calls waiting in worker 0 when its container went came back and ran in 1.
        assert not load.failures, [f.value for f in load.failures]
        assert all(r.status == CallStatus.SUCCESS for r in load.results)
        assert self.workers[1].sent("forward") == forwarded  # none crossed since
        assert self.starts() == 2

    def test_a_call_sent_back_twice_gets_503_rather_than_cross_again(self) -> None:
        self.warm(self.workers[0], 1)
        # Worker 0's container moves on each time a call of worker 1 reaches it.
        self.workers[0].link.handle("hot_run", lambda *_: fail(RouteMoved()))
        d = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 1, max_concurrency=1)))
        self.advance(0.05)
        self.failureResultOf(d, RouteMoved)  # an Overloaded: 503 with Retry-After
        assert self.workers[1].sent("forward") == 2

    def test_a_container_stays_where_some_of_its_calls_come_from_or_where_few_are_sent(self) -> None:
        self.warm(self.workers[0], 1)
        slow = []
        for n in range(3 * FOLLOW_MIN_CALLS // 2):  # too few a second: a hop costs less than a start
            slow.append(Deferred.fromCoroutine(
                self.workers[1].runner.run(route_call("/hot1", 1000 + n, max_concurrency=1))))
            self.advance(2 * FOLLOW_S / FOLLOW_MIN_CALLS)
        loads = [self.load(w, 2, 1) for w in self.workers]  # many, but worker 0 has clients of its own
        self.advance(3 * FOLLOW_S)
        for load in loads:
            load.running = False
        self.advance(1)
        assert all(self.successResultOf(d).status == CallStatus.SUCCESS for d in slow)
        assert all(not load.failures for load in loads)
        assert self.starts() == 1 and self.broker.route_containers(("a", "/hot1")) == {0: 1}

    def test_a_worker_whose_route_is_full_does_not_ask_the_parent_per_call(self) -> None:
        self.warm(self.workers[0], 2)
        loads = [self.load(w, 4, 2) for w in self.workers]
        self.advance(2 * RESERVE_S)
        asked = [w.sent("slot_acquire") for w in self.workers]
        self.advance(5)
        calls = sum(len(load.results) for load in loads)
        for load in loads:
            load.running = False
        # Each worker has 4 clients on its one container: calls wait every time, and
        # each wait would ask for a container of the full route without FULL_S.
        extra = [w.sent("slot_acquire") - a for w, a in zip(self.workers, asked)]
        assert calls > 1000
        assert all(e <= 5 / FULL_S + 2 for e in extra), extra

    def test_a_forwarded_call_is_cancelled_where_it_runs(self) -> None:
        self.warm(self.workers[0], 1)
        for driver in (w.driver for w in self.workers):
            driver._delays = iter(lambda: 5.0, None)  # type: ignore[assignment]  # calls that take 5 s
        busy = Deferred.fromCoroutine(self.workers[0].runner.run(route_call("/hot1", 1, max_concurrency=1)))
        forwarded = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 2, max_concurrency=1)))
        self.advance(0.1)
        assert self.workers[1].sent("forward") == 1
        assert self.successResultOf(Deferred.fromCoroutine(self.workers[1].runner.cancel("C2")))
        self.advance(0.1)
        result = self.successResultOf(forwarded)
        assert result.status == CallStatus.CANCELLED  # it waited there: it ends at once, ran nowhere
        self.advance(6)
        assert self.successResultOf(busy).status == CallStatus.SUCCESS

    def test_calls_go_to_the_worker_holding_the_route_only_for_a_while_then_ask_again(self) -> None:
        self.warm(self.workers[0], 1)
        d = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 1, max_concurrency=1)))
        self.advance(0.05)
        assert self.successResultOf(d).status == CallStatus.SUCCESS
        assert self.workers[1].sent("slot_acquire") == 1
        d = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 2, max_concurrency=1)))
        self.advance(0.05)
        self.successResultOf(d)
        assert self.workers[1].sent("slot_acquire") == 1  # sent on without asking
        self.advance(ELSEWHERE_S)
        self.advance(30)  # worker 0's container idles out: the route is free
        d = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 3, max_concurrency=1)))
        self.advance(START_S + 0.05)
        assert self.successResultOf(d).status == CallStatus.SUCCESS
        assert self.workers[1].sent("slot_acquire") == 2 and len(self.workers[1].driver.started_specs) == 1

    def test_a_call_forwarded_to_a_worker_that_is_gone_gets_503(self) -> None:
        self.warm(self.workers[0], 1)
        self.relay.detach(0)  # worker 0 is restarting; its link is gone from the relay
        d = Deferred.fromCoroutine(self.workers[1].runner.run(route_call("/hot1", 1, max_concurrency=1)))
        self.advance(0.05)
        self.failureResultOf(d, Overloaded)


def test_a_call_sent_back_because_its_route_moved_crosses_the_link_as_itself() -> None:
    error = rebuild_error(*error_fields(RouteMoved()))
    assert type(error) is RouteMoved and error.retry_after == 1
