"""Node-wide slots for worker processes (``workers/slots.py``, issue 15): the parent's
``SlotBroker`` and the workers' ``RemoteSlots`` over loopback links, on a ``Clock``.

Every limit a single process keeps with its ``Slots`` must hold across workers:
``MAX_CONCURRENCY``, ``APP_MAX_CONCURRENCY``, a route's ``max_concurrency``; a cancelled
start leaks no slot, a dead worker's slots come back, and pressure on idle containers
reaches the worker holding them."""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import Overloaded
from ironfunctions.runner.admission import PRESSURE_RETRY_S, RouteElsewhere, RouteFull, RouteKey, Slots
from ironfunctions.runner.hot_context import GIVE_ANY, GIVE_FOLLOW, GIVE_IDLE
from ironfunctions.workers.slots import RESERVE_S, RemoteSlots, SlotBroker


class LoopChannel:
    """One end of an in-process link: requests run the other end's handler at once
    (the real ``Link`` moves the same tuples over a unix socket)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock  # given: requests are answered on a later turn, as over a socket
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.peer: LoopChannel | None = None
        self.sent: list[tuple[Any, ...]] = []

    def handle(self, kind: str, handler: Callable[..., Any]) -> None:
        self.handlers[kind] = handler

    def request(self, kind: str, *args: Any) -> Deferred[Any]:
        assert self.peer is not None
        self.sent.append((kind, *args))
        if self.clock is not None:
            later: Deferred[Any] = Deferred()
            self.clock.callLater(0, lambda: self._deliver(kind, args).chainDeferred(later))
            return later
        return self._deliver(kind, args)

    def _deliver(self, kind: str, args: tuple[Any, ...]) -> Deferred[Any]:
        assert self.peer is not None
        try:
            value = self.peer.handlers[kind](*args)
        except Exception as e:
            return fail(e)
        if isinstance(value, Coroutine):
            return ensureDeferred(value)
        return value if isinstance(value, Deferred) else succeed(value)

    def notify(self, kind: str, *args: Any) -> None:
        assert self.peer is not None
        self.sent.append((kind, *args))
        self.peer.handlers[kind](*args)


def pair(clock: Clock | None = None) -> tuple[LoopChannel, LoopChannel]:
    parent, worker = LoopChannel(clock), LoopChannel(clock)
    parent.peer, worker.peer = worker, parent
    return parent, worker


HOT: RouteKey = ("a", "/hot")


class BrokerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.slots = Slots(4, self.clock, max_waiting=10, wait_bound=5, app_limit=3)
        self.broker = SlotBroker(self.slots, self.clock)
        self.workers: dict[int, RemoteSlots] = {}
        for index in (0, 1):
            parent_end, worker_end = pair()
            self.broker.attach(index, parent_end)
            self.workers[index] = RemoteSlots(worker_end, 4)

    def acquire(self, worker: int, app: str, route: RouteKey | None = None, limit: int = 0) -> Deferred[None]:
        return Deferred.fromCoroutine(self.workers[worker].acquire(app, route, limit))

    def test_max_concurrency_counts_every_workers_containers(self) -> None:
        for app in ("a", "b"):
            self.successResultOf(self.acquire(0, app))
            self.successResultOf(self.acquire(1, app))
        fifth = self.acquire(1, "c")
        self.assertNoResult(fifth)  # 4 containers on the node, 2 in each worker
        assert self.slots.in_use == 4 and self.workers[1].waiting == 1
        self.workers[0].release("a")
        self.successResultOf(fifth)
        assert self.slots.in_use == 4 and self.workers[1].in_use == 3 and self.workers[0].in_use == 1

    def test_an_apps_cap_counts_its_containers_in_every_worker(self) -> None:
        self.successResultOf(self.acquire(0, "a"))
        self.successResultOf(self.acquire(1, "a"))
        self.successResultOf(self.acquire(1, "a"))
        fourth = self.acquire(0, "a")
        self.assertNoResult(fourth)  # a holds 3 = APP_MAX_CONCURRENCY, a slot is free
        self.successResultOf(self.acquire(0, "b"))  # another app is not held up
        self.clock.advance(5)
        self.failureResultOf(fourth, Overloaded)  # ADMISSION_WAIT, as in one process

    def test_a_route_at_its_max_concurrency_is_full_where_it_runs_and_elsewhere_in_the_other_worker(self) -> None:
        self.successResultOf(self.acquire(0, "a", HOT, 1))
        self.failureResultOf(self.acquire(0, "a", HOT, 1), RouteFull)
        elsewhere = self.failureResultOf(self.acquire(1, "a", HOT, 1), RouteElsewhere)
        assert elsewhere.value.worker == 0
        assert self.broker.route_containers(HOT) == {0: 1}
        self.workers[0].release("a", HOT)
        self.successResultOf(self.acquire(1, "a", HOT, 1))  # free again: whoever asks first
        assert self.broker.route_containers(HOT) == {1: 1}

    def test_a_route_of_two_spreads_over_both_workers_and_no_further(self) -> None:
        self.successResultOf(self.acquire(0, "a", HOT, 2))
        self.successResultOf(self.acquire(1, "a", HOT, 2))
        self.failureResultOf(self.acquire(0, "a", HOT, 2), RouteFull)
        self.failureResultOf(self.acquire(1, "a", HOT, 2), RouteFull)
        assert self.slots.in_use == 2

    def test_a_start_waiting_for_a_slot_counts_against_its_route(self) -> None:
        for app in ("x", "y", "z", "w"):
            self.successResultOf(self.acquire(0, app))
        waiting = self.acquire(0, "a", HOT, 1)
        self.assertNoResult(waiting)
        # The route's one container is on its way in worker 0: worker 1 sends there.
        self.failureResultOf(self.acquire(1, "a", HOT, 1), RouteElsewhere)
        self.workers[0].release("x")
        self.successResultOf(waiting)

    def test_a_withdrawn_start_leaks_no_slot_and_no_route_count(self) -> None:
        for app in ("x", "y", "z", "w"):
            self.successResultOf(self.acquire(0, app))
        waiting = self.acquire(1, "a", HOT, 1)
        waiting.cancel()  # the call was cancelled while its start waited
        self.failureResultOf(waiting, Overloaded)
        assert self.broker.route_containers(HOT) == {} and self.slots.waiting == 0
        self.workers[0].release("x")
        assert self.slots.in_use == 3 and self.workers[1].in_use == 0

    def test_a_slot_granted_as_the_start_was_withdrawn_comes_back(self) -> None:
        parent_end, worker_end = pair()
        answer: Deferred[Any] = Deferred()
        parent_end.handle("slot_acquire", lambda *args: answer)  # the parent answers later
        released: list[tuple[Any, ...]] = []
        parent_end.handle("slot_withdraw", lambda ticket: None)  # too late: already granted
        parent_end.handle("slot_release", lambda *args: released.append(args))
        remote = RemoteSlots(worker_end, 4)
        start = Deferred.fromCoroutine(remote.acquire("a", HOT, 1))
        start.cancel()
        self.failureResultOf(start, Overloaded)
        answer.callback("ok")
        assert released == [("a", HOT)] and remote.in_use == 0

    def test_a_dead_workers_waits_end_at_once_and_its_slots_return_once_its_containers_are_gone(self) -> None:
        for app in ("a", "b", "c"):
            self.successResultOf(self.acquire(0, app))
        self.successResultOf(self.acquire(0, "d", HOT, 1))
        waiting_in_dead = self.acquire(0, "e")
        waiting_in_live = self.acquire(1, "e")
        self.broker.detach(0)
        self.failureResultOf(waiting_in_dead, Overloaded)
        self.assertNoResult(waiting_in_live)  # its 4 containers may still run
        self.broker.release_worker(0)  # removed
        self.successResultOf(waiting_in_live)
        assert self.slots.in_use == 1 and self.broker.held(0) == 0
        self.successResultOf(self.acquire(1, "d", HOT, 1))  # its route is free again

    def test_a_worker_gone_answers_no_more_grants(self) -> None:
        self.broker.detach(1)
        self.failureResultOf(self.acquire(1, "a"), Overloaded)
        assert self.slots.in_use == 0


class EvenOutTests(SynchronousTestCase):
    """A route at its limit, all of it in one worker, while another worker asks: the
    holder gives one back and the place it frees goes to the asking start, and the
    route never counts more than its ``max_concurrency`` containers meanwhile."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slots = Slots(8, self.clock, max_waiting=10, wait_bound=5, app_limit=8)
        self.broker = SlotBroker(self.slots, self.clock)
        self.gives: list[tuple[int, str]] = []
        self.gave = True
        self.workers: dict[int, RemoteSlots] = {}
        for index in (0, 1):
            parent_end, worker_end = pair()
            self.broker.attach(index, parent_end)
            self.workers[index] = RemoteSlots(worker_end, 8)
            self.workers[index].on_give_back(self.give_back(index))
        for _ in range(2):
            self.successResultOf(self.acquire(0))

    def give_back(self, index: int) -> Callable[[RouteKey, str], bool]:
        def give(route: RouteKey, mode: str) -> bool:
            self.gives.append((index, mode))
            return self.gave
        return give

    def acquire(self, worker: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self.workers[worker].acquire("a", HOT, 2))

    def test_the_place_given_back_goes_to_the_asking_start_and_the_route_never_counts_three(self) -> None:
        first = self.acquire(1)
        second = self.acquire(1)  # two calls wait in worker 1: its pool starts two
        self.assertNoResult(first)  # waits for the place worker 0 gives back
        self.failureResultOf(second, RouteFull)  # its calls wait for the one on its way
        assert self.gives == [(0, GIVE_ANY)]  # any of its containers: the next free one
        assert self.broker.route_containers(HOT) == {0: 2} and self.slots.in_use == 2
        self.failureResultOf(self.acquire(0), RouteFull)  # the holder cannot take it back
        self.workers[0].release("a", HOT)  # the container given back is gone
        self.successResultOf(first)
        assert self.broker.route_containers(HOT) == {0: 1, 1: 1} and self.slots.in_use == 2

    def test_a_start_waits_for_the_place_at_most_reserve_s_then_goes_where_the_route_runs(self) -> None:
        waiting = self.acquire(1)
        self.clock.advance(RESERVE_S)
        assert self.failureResultOf(waiting, RouteElsewhere).value.worker == 0
        self.workers[0].release("a", HOT)  # given back late: free for whoever asks
        self.successResultOf(self.acquire(0))
        assert self.broker.route_containers(HOT) == {0: 2}

    def test_a_holder_with_none_to_give_answers_at_once(self) -> None:
        self.gave = False
        self.failureResultOf(self.acquire(1), RouteElsewhere)
        assert self.broker.route_containers(HOT) == {0: 2}

    def test_a_withdrawn_start_keeps_no_place(self) -> None:
        waiting = self.acquire(1)
        waiting.cancel()
        self.failureResultOf(waiting, Overloaded)
        self.workers[0].release("a", HOT)
        assert self.broker.route_containers(HOT) == {0: 1}
        self.successResultOf(self.acquire(0))  # the place is free for anyone

    def one_each(self) -> None:
        self.workers[0].release("a", HOT)
        self.successResultOf(self.acquire(1))
        assert self.broker.route_containers(HOT) == {0: 1, 1: 1}

    def test_a_worker_whose_calls_wait_gets_the_container_idling_in_another(self) -> None:
        self.one_each()
        waiting = self.acquire(1)  # worker 1's calls wait for its one container
        assert self.gives == [(0, GIVE_IDLE)]  # only one that has idled a while
        self.assertNoResult(waiting)
        self.workers[0].release("a", HOT)
        self.successResultOf(waiting)
        assert self.broker.route_containers(HOT) == {1: 2}

    def test_with_none_idle_the_worker_is_told_full_at_once(self) -> None:
        self.one_each()
        self.gave = False
        self.failureResultOf(self.acquire(1), RouteFull)
        assert self.broker.route_containers(HOT) == {0: 1, 1: 1}

    def test_a_worker_holding_none_sends_its_calls_unless_the_holders_calls_all_come_from_elsewhere(self) -> None:
        self.workers[0].release("a", HOT)  # worker 0 holds 1 of a route at 1
        self.gave = False  # worker 0's own clients call the route too
        elsewhere = self.failureResultOf(Deferred.fromCoroutine(self.workers[1].acquire("a", HOT, 1)), RouteElsewhere)
        assert elsewhere.value.worker == 0 and self.gives == [(0, GIVE_FOLLOW)]
        self.gave = True  # they stopped: its container serves worker 1's calls only
        moving = Deferred.fromCoroutine(self.workers[1].acquire("a", HOT, 1))
        self.assertNoResult(moving)  # waits for the place, as worker 0's container goes
        self.workers[0].release("a", HOT)
        self.successResultOf(moving)
        assert self.broker.route_containers(HOT) == {1: 1} and self.gives[-1] == (0, GIVE_FOLLOW)

    def test_a_dead_workers_kept_place_is_given_up(self) -> None:
        waiting = self.acquire(1)
        self.broker.detach(1)
        self.failureResultOf(waiting, Overloaded)
        self.workers[0].release("a", HOT)
        self.successResultOf(self.acquire(0))
        assert self.broker.route_containers(HOT) == {0: 2}


class PressureTests(SynchronousTestCase):
    """A start waiting for a slot asks the workers, its own first, one at a time."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slots = Slots(2, self.clock, max_waiting=10, wait_bound=5, app_limit=2)
        self.broker = SlotBroker(self.slots, self.clock)
        self.asked: list[tuple[int, str | None, RouteKey | None, int | None]] = []
        self.frees: dict[int, bool] = {0: False, 1: False}
        self.ends: dict[int, LoopChannel] = {}
        self.workers: dict[int, RemoteSlots] = {}
        for index in (0, 1):
            parent_end, worker_end = pair()
            self.broker.attach(index, parent_end)
            self.ends[index] = parent_end
            self.workers[index] = RemoteSlots(worker_end, 2)
            self.workers[index].on_pressure(self.hook(index))

    def hook(self, index: int) -> Callable[[str | None, RouteKey | None, int | None], bool]:
        def reclaim(scope: str | None, route: RouteKey | None, wanted: int | None) -> bool:
            self.asked.append((index, scope, route, wanted))
            return self.frees[index]
        return reclaim

    def acquire(self, worker: int, app: str, route: RouteKey | None = None, limit: int = 0) -> Deferred[None]:
        return Deferred.fromCoroutine(self.workers[worker].acquire(app, route, limit))

    def test_the_waiting_pools_worker_is_asked_first_then_the_worker_holding_the_slots(self) -> None:
        self.successResultOf(self.acquire(0, "a", ("a", "/one"), 1))
        self.successResultOf(self.acquire(0, "a", ("a", "/two"), 1))
        waiting = self.acquire(1, "a", HOT, 1)
        self.assertNoResult(waiting)
        # Worker 1's own pool first (its wants_slot, its share), then worker 0 with the
        # share worker 1's pool would have after the slot.
        assert self.asked == [(1, "a", HOT, None), (0, "a", None, 1)]

    def test_asking_stops_at_the_first_worker_that_frees_one(self) -> None:
        self.successResultOf(self.acquire(0, "a"))
        self.successResultOf(self.acquire(1, "a"))
        self.frees[0] = True
        self.frees[1] = True
        self.acquire(1, "b")
        assert [w for w, *_ in self.asked] == [1]

    def test_asked_again_while_the_start_waits_and_never_after(self) -> None:
        self.successResultOf(self.acquire(0, "a"))
        self.successResultOf(self.acquire(0, "a"))
        waiting = self.acquire(1, "b")
        rounds = len(self.asked)
        self.clock.advance(PRESSURE_RETRY_S)
        assert len(self.asked) == 2 * rounds  # asked again: an idle container may be old enough now
        self.workers[0].release("a")
        self.successResultOf(waiting)
        before = len(self.asked)
        self.clock.advance(PRESSURE_RETRY_S * 4)
        assert len(self.asked) == before

    def test_one_round_of_asking_at_a_time_per_kind_of_waiting_call(self) -> None:
        self.successResultOf(self.acquire(0, "a"))
        self.successResultOf(self.acquire(0, "a"))
        answer: Deferred[bool] = Deferred()
        self.ends[1].peer.handlers["slot_reclaim"] = lambda *args: answer  # type: ignore[union-attr]
        self.acquire(1, "b")
        self.acquire(1, "b")
        self.clock.advance(PRESSURE_RETRY_S)
        assert [s for s in self.ends[1].sent if s[0] == "slot_reclaim"] == [("slot_reclaim", None, None, 1, True)]
        answer.callback(False)
        assert any(w == 0 for w, *_ in self.asked)  # the round goes on to worker 0
