"""Node-wide container slots for a node of worker processes (``WORKERS`` > 1, issue 15).

Each worker runs its own containers, cold calls and hot pools as a single process does,
and asks the parent for a slot once per container start, never per call: a call on a
warm hot container sends nothing. The parent's ``SlotBroker`` holds the node's one
``Slots`` (``MAX_CONCURRENCY``, ``APP_MAX_CONCURRENCY``, the fair per-app queue,
``ADMISSION_WAIT``, ``ADMISSION_MAX_WAITING``: ``runner/admission.py``) and counts each
hot route's containers across the workers against the route's ``max_concurrency``; a
worker's ``RemoteSlots`` stands where a single process has its ``Slots``.

A hot route at its ``max_concurrency`` on the node: a worker that holds some of its
containers is told ``RouteFull`` (its calls wait for its own containers, as they wait
in one process for the pool's); a worker that holds none is told ``RouteElsewhere``
with the worker that holds the most, to which it forwards the route's calls. So a route
at the default ``max_concurrency`` 1 runs on one container wherever its calls land.

Pressure (idle hot containers must not keep others out, ``HotRunner.reclaim_idle``):
the broker is ``Slots``' pressure hook; for a waiting start it asks the workers one at
a time (the one whose pool waits first, then the others by the slots they hold) until
one frees a slot, one such round at a time per kind of waiting call. ``Slots`` asks
again every ``PRESSURE_RETRY_S`` while calls wait, as in one process.

A route's containers are evened out over the workers that ask for them, so a route
at ``max_concurrency`` 2 under load on two workers settles on one container in each
and its calls stop crossing between them; a place given back is kept for the start
that asked, and counts against the route from then on (``workers/route_places.py``).

A worker that dies: its waits end at once (``detach``); its slots return once the
parent has removed its containers (``release_worker``), so the node never runs more
than ``MAX_CONCURRENCY`` containers, even for a moment.

The messages (``workers/link.py``): ``slot_acquire(ticket, app, route, limit)`` answered
``"ok"``, ``"full"`` or ``("elsewhere", worker)`` (or ``Overloaded``);
``slot_withdraw(ticket)`` and ``slot_release(app, route)`` notices; the parent's
``slot_reclaim(scope, route, wanted, own)`` request answered True when a slot is on its
way.
"""

from __future__ import annotations

from itertools import count
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.errors import Overloaded
from ironfunctions.runner.admission import RouteElsewhere, RouteFull, Slots
from ironfunctions.runner.fairqueue import RouteKey
from ironfunctions.workers.channel import Channel, Relay
from ironfunctions.workers.route_places import ELSEWHERE, FULL, RESERVE_S, RoutePlaces

__all__ = ["RESERVE_S", "Channel", "RemoteSlots", "RouteElsewhere", "RouteFull", "SlotBroker"]

log = Logger()

GRANTED = "ok"

# reclaim(scope, route, wanted): ``HotRunner.reclaim_idle``'s surface in a worker.
WorkerReclaim = Callable[[str | None, RouteKey | None, int | None], bool]


def _route(value: Any) -> RouteKey | None:
    return None if value is None else (str(value[0]), str(value[1]))


class _Wait:
    __slots__ = ("route", "deferred", "for_slot")

    def __init__(self, route: RouteKey | None) -> None:
        self.route = route
        self.deferred: Deferred[Any] | None = None
        self.for_slot = False  # waiting in ``Slots`` (not for a place of its route)

    def waiting_on(self, deferred: Deferred[Any]) -> None:
        self.deferred = deferred


class SlotBroker(Relay):
    """The parent's side: grants its workers' container starts against ``slots``."""

    def __init__(self, slots: Slots, clock: IReactorTime) -> None:
        super().__init__()
        self.slots = slots
        slots.on_pressure(self._pressure)
        # worker -> (app, route) -> slots granted (route None: a cold container)
        self._granted: dict[int, dict[tuple[str, RouteKey | None], int]] = {}
        self._routes = RoutePlaces(clock, self._ask_give_back)
        # (worker, ticket) -> the start's wait for a slot
        self._waits: dict[tuple[int, int], _Wait] = {}
        self._pressing: set[tuple[str | None, RouteKey | None]] = set()

    def serve(self, worker: int, link: Channel) -> None:
        """Serve ``worker``'s slot requests on ``link``."""
        link.handle("slot_acquire", lambda ticket, app, route, limit: Deferred.fromCoroutine(
            self.acquire(worker, ticket, app, _route(route), limit)))
        link.handle("slot_withdraw", lambda ticket: self.withdraw(worker, ticket))
        link.handle("slot_release", lambda app, route: self.release(worker, app, _route(route)))

    def detach(self, worker: int) -> None:
        """``worker`` is gone: its waits end. Its slots stay taken until
        ``release_worker``: its containers may still run until they are removed."""
        super().detach(worker)
        for (owner, ticket), wait in list(self._waits.items()):
            if owner == worker and wait.deferred is not None:
                wait.deferred.cancel()

    def release_worker(self, worker: int) -> None:
        """A gone worker's containers are removed: every slot it held returns."""
        if worker in self._links:
            return  # attached again meanwhile: what it holds is its replacement's
        for (app, route), granted in self._granted.pop(worker, {}).items():
            for _ in range(granted):
                self._forget(worker, route)
                self.slots.release(app)

    def held(self, worker: int) -> int:
        """Slots ``worker`` holds now."""
        return sum(self._granted.get(worker, {}).values())

    def route_containers(self, route: RouteKey) -> dict[int, int]:
        """The route's containers per worker, granted or being granted."""
        return self._routes.containers(route)

    async def acquire(self, worker: int, ticket: int, app: str, route: RouteKey | None, limit: int) -> Any:
        """A container start of ``worker``: ``GRANTED`` once a slot is its, ``FULL`` or
        ``(ELSEWHERE, holder)`` when ``route`` is at ``limit`` containers on the node;
        ``Overloaded`` as ``Slots.acquire``."""
        if worker not in self._links:
            raise Overloaded("worker is gone", retry_after=1)
        wait = self._waits[(worker, ticket)] = _Wait(route)  # known before Slots asks for pressure
        try:
            if route is not None:
                refused = await self._routes.take(worker, route, limit, wait.waiting_on)
                if refused is not None:
                    return refused
            try:
                wait.for_slot = True
                wait.deferred = Deferred.fromCoroutine(self.slots.acquire(app, route))
                await wait.deferred
            except BaseException:
                self._forget(worker, route)
                raise
        finally:
            self._waits.pop((worker, ticket), None)
        if worker not in self._links:  # it died while its start waited
            self._forget(worker, route)
            self.slots.release(app)
            raise Overloaded("worker is gone", retry_after=1)
        granted = self._granted.setdefault(worker, {})
        granted[(app, route)] = granted.get((app, route), 0) + 1
        return GRANTED

    def withdraw(self, worker: int, ticket: int) -> None:
        """``worker`` no longer wants the start ``ticket`` waits for (its call was
        cancelled); a slot granted meanwhile comes back as a release."""
        wait = self._waits.get((worker, ticket))
        if wait is not None and wait.deferred is not None:
            wait.deferred.cancel()

    def release(self, worker: int, app: str, route: RouteKey | None) -> None:
        """One of ``worker``'s containers is gone: its slot returns."""
        granted = self._granted.get(worker, {})
        held = granted.get((app, route), 0)
        if not held:
            log.warn("Worker {worker} released a slot it did not hold ({app})", worker=worker, app=app)
            return
        if held == 1:
            del granted[(app, route)]
        else:
            granted[(app, route)] = held - 1
        self._forget(worker, route)
        self.slots.release(app)

    def _ask_give_back(self, holder: int, route: RouteKey, mode: str) -> Deferred[Any] | None:
        link = self._links.get(holder)
        return None if link is None else link.request("slot_give_back", route, mode)

    def _forget(self, worker: int, route: RouteKey | None) -> None:
        if route is not None:
            self._routes.forget(worker, route)

    # -- pressure

    def _pressure(self, scope: str | None, route: RouteKey | None) -> bool:
        """``Slots``' hook: ask the workers, one at a time, to free a slot for a start
        waiting for ``route`` (within ``scope``'s containers when the app is at its
        cap). Nothing is promised now (False): ``Slots`` asks again while calls wait."""
        key = (scope, route)
        if key in self._pressing:
            return False
        requester = next((w for (w, _), wait in self._waits.items() if wait.for_slot and wait.route == route), None)
        others = sorted((w for w in self._links if w != requester), key=lambda w: -self.held(w))
        order = ([requester] if requester is not None and requester in self._links else []) + others
        if not order:
            return False
        wanted = 1
        if requester is not None and route is not None:
            wanted = self._granted.get(requester, {}).get((route[0], route), 0) + 1
        self._pressing.add(key)
        d = Deferred.fromCoroutine(self._press(order, requester, scope, route, wanted))
        d.addErrback(lambda f: log.failure("Asking the workers for a slot failed", f))
        d.addBoth(lambda _: self._pressing.discard(key))
        return False

    async def _press(self, order: list[int], requester: int | None, scope: str | None,
                     route: RouteKey | None, wanted: int) -> None:
        for worker in order:
            link = self._links.get(worker)
            if link is None:
                continue
            try:
                freed = await link.request("slot_reclaim", scope, route, wanted, worker == requester)
            except Exception as e:
                log.warn("Worker {worker} could not be asked for a slot: {error}", worker=worker, error=str(e))
                continue
            if freed:
                return


class RemoteSlots:
    """``Slots``' surface in a worker process: starts ask the parent's ``SlotBroker``.

    :param link: the link to the parent.
    :param limit: the node's ``MAX_CONCURRENCY`` (for the balancer agent's load).
    """

    def __init__(self, link: Channel, limit: int) -> None:
        self._link = link
        self.limit = limit
        self.in_use = 0  # this worker's containers
        self.waiting = 0  # this worker's starts waiting for the parent
        self._held: dict[str, int] = {}
        self._tickets = count(1)
        self._pressure: list[WorkerReclaim] = []
        self._give_back: Callable[[RouteKey, str], bool] = lambda route, mode: False
        link.handle("slot_reclaim", self._reclaim)
        link.handle("slot_give_back", lambda route, mode: self._give_back(_route(route) or ("", ""), str(mode)))

    def on_pressure(self, reclaim: WorkerReclaim) -> None:
        """Call ``reclaim(scope, route, wanted)`` when the parent asks this worker to
        free a slot (``HotRunner.reclaim_idle``)."""
        self._pressure.append(reclaim)

    def on_give_back(self, give_back: Callable[[RouteKey, str], bool]) -> None:
        """Call ``give_back(route, mode)`` when the parent evens ``route`` out over
        workers (``HotRunner.give_back_route``)."""
        self._give_back = give_back

    def held(self, app: str) -> int:
        """Slots ``app`` holds in this worker."""
        return self._held.get(app, 0)

    async def acquire(self, app: str, route: RouteKey | None = None, route_limit: int = 0) -> None:
        """Take a slot of the node for a container of ``app`` (of hot ``route``, whose
        ``max_concurrency`` is ``route_limit``). Raise ``Overloaded`` as ``Slots.acquire``,
        ``RouteFull`` or ``RouteElsewhere`` when the route is at its limit on the node."""
        ticket = next(self._tickets)
        withdrawn = False

        def withdraw(_: Deferred[Any]) -> None:
            nonlocal withdrawn
            withdrawn = True
            self._link.notify("slot_withdraw", ticket)

        outcome: Deferred[Any] = Deferred(withdraw)

        def answered(value: Any) -> None:
            if not withdrawn:
                outcome.callback(value)
            elif value == GRANTED:  # granted as the call went: the slot goes back
                self._link.notify("slot_release", app, route)

        def failed(failure: Any) -> None:
            if not withdrawn:
                outcome.errback(failure)

        self._link.request("slot_acquire", ticket, app, route, route_limit).addCallbacks(answered, failed)
        self.waiting += 1
        try:
            value = await outcome
        except CancelledError:
            raise Overloaded(retry_after=1) from None
        finally:
            self.waiting -= 1
        if value == GRANTED:
            self.in_use += 1
            self._held[app] = self._held.get(app, 0) + 1
            return
        if value == FULL:
            raise RouteFull()
        if isinstance(value, (list, tuple)) and value and value[0] == ELSEWHERE:
            raise RouteElsewhere(int(value[1]))
        raise Overloaded(f"unexpected answer from the node's parent: {value!r}", retry_after=1)

    def release(self, app: str, route: RouteKey | None = None) -> None:
        """A container of ``app`` (of hot ``route``) is gone: its slot goes back."""
        held = self._held.get(app, 0)
        if held <= 1:
            self._held.pop(app, None)
        else:
            self._held[app] = held - 1
        self.in_use -= 1
        self._link.notify("slot_release", app, route)

    def _reclaim(self, scope: str | None, route: Any, wanted: int, own: bool) -> bool:
        route_key = _route(route)
        try:
            for reclaim in self._pressure:
                if reclaim(scope, route_key if own else None, None if own else wanted):
                    return True
        except Exception:
            log.failure("Freeing a container slot for the node failed")
        return False
