"""Each hot route's containers across the workers of a node, against the route's
``max_concurrency`` (the parent's ``SlotBroker``, ``workers/slots.py``, issue 15).

A start of a route below its limit is counted at once. At the limit, the worker is
told ``FULL`` when it holds some of the route's containers (its calls wait for them),
else ``(ELSEWHERE, holder)``: its calls go to the worker holding the most.

Evening out: when another worker holds more than one more of the route's containers
than the asking worker, that worker is asked to give one back (``give_back(holder,
route, GIVE_ANY)``: an idle container at once, else the next one to end its call);
else, when the asking worker holds some (its calls wait for them), a worker holding
some is asked for one that has been idle ``RECLAIM_MIN_IDLE_S`` (``GIVE_IDLE``: calls
must not wait in one worker while a container idles in another); else (the asking
worker holds none) the holder is asked for its container only if all the route's
calls it served lately came from other workers (``GIVE_FOLLOW``,
``runner/hot_context.py``: the container follows its calls). The place freed is kept
for the asking start, which waits for it up to ``RESERVE_S``.
The worker's other starts of the route are told ``FULL`` meanwhile (its calls wait
for the one on its way). A kept place counts against the route from the moment it
is kept, so the route never has more than ``max_concurrency`` containers counted,
even for a moment.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ironfunctions.runner.fairqueue import RouteKey
from ironfunctions.runner.hot_context import GIVE_ANY, GIVE_FOLLOW, GIVE_IDLE

__all__ = ["ELSEWHERE", "FULL", "RESERVE_S", "GiveBack", "RoutePlaces"]

log = Logger()

RESERVE_S = 2.0  # how long a start waits for the place of a route evened out for it

FULL = "full"
ELSEWHERE = "elsewhere"

# give_back(holder, route, mode): ask worker ``holder`` to give a container of
# ``route`` back (``mode``: which, ``runner/hot_context.py``); fires True when one is
# on its way, False when it holds none ``mode`` allows; None: the worker is gone.
GiveBack = Callable[[int, RouteKey, str], "Deferred[Any] | None"]


class _Place:
    """A place of a route kept for a worker's start while another worker gives one back."""

    __slots__ = ("worker", "limit", "deferred", "timer")

    def __init__(self, worker: int, limit: int, deferred: Deferred[bool]) -> None:
        self.worker = worker
        self.limit = limit
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


class RoutePlaces:
    """The hot routes' containers per worker, and the places kept for starts."""

    def __init__(self, clock: IReactorTime, give_back: GiveBack) -> None:
        self._clock = clock
        self._give_back = give_back
        # route -> worker -> its containers, granted or being granted
        self._counts: dict[RouteKey, dict[int, int]] = {}
        # route -> worker -> the place of the route kept for its start
        self._kept: dict[RouteKey, dict[int, _Place]] = {}

    def containers(self, route: RouteKey) -> dict[int, int]:
        """The route's containers per worker, granted or being granted."""
        return dict(self._counts.get(route, {}))

    async def take(self, worker: int, route: RouteKey, limit: int,
                   waiting: Callable[[Deferred[Any]], None]) -> Any:
        """Count a container of ``route`` for ``worker`` (None), or say why not
        (``FULL``, ``(ELSEWHERE, holder)``). ``waiting(d)`` is told the Deferred the
        start waits on for a place given back (cancel it to withdraw the start)."""
        limit = max(1, limit)
        if worker not in self._kept.get(route, {}):
            if self._room(route, limit):
                self._count(worker, route)
                return None
            holder, mode = self._holder_to_ask(worker, route)
            if holder is not None:
                place = self._keep(worker, route, limit, holder, mode)
                waiting(place.deferred)
                if await place.deferred:  # handed over: counted for it
                    return None
                if self._room(route, limit):  # freed meanwhile, kept for no one
                    self._count(worker, route)
                    return None
        # Full: this worker's calls wait for its own containers (or the one on its way
        # to it), or go where the route's containers are.
        counts = self._counts.get(route, {})
        kept = self._kept.get(route, {})
        if counts.get(worker) or worker in kept:
            return FULL
        if counts:
            return (ELSEWHERE, max(counts, key=lambda w: (counts[w], -w)))
        return (ELSEWHERE, next(iter(kept))) if kept else FULL

    def forget(self, worker: int, route: RouteKey) -> None:
        """One of ``worker``'s containers of ``route`` is gone (or never started): a
        place kept for a start is its now."""
        counts = self._counts.get(route)
        if counts is None or worker not in counts:
            return
        counts[worker] -= 1
        if not counts[worker]:
            del counts[worker]
        handed: list[_Place] = []
        for place in list(self._kept.get(route, {}).values()):
            if sum(counts.values()) >= place.limit:
                break
            self._unkeep(route, place)
            counts[place.worker] = counts.get(place.worker, 0) + 1
            handed.append(place)
        if not counts:
            del self._counts[route]
        for place in handed:  # last: each start goes on at once, and may come back here
            place.deferred.callback(True)

    def _room(self, route: RouteKey, limit: int) -> bool:
        return sum(self._counts.get(route, {}).values()) + len(self._kept.get(route, {})) < limit

    def _count(self, worker: int, route: RouteKey) -> None:
        counts = self._counts.setdefault(route, {})
        counts[worker] = counts.get(worker, 0) + 1

    def _holder_to_ask(self, worker: int, route: RouteKey) -> tuple[int | None, str]:
        """The worker to give a container of the route back for ``worker``, and which
        (``mode``): one holding more than one more of them than ``worker`` (any of its
        containers); else the one holding the most: an idle one when ``worker`` holds
        some (its calls wait for them); when it holds none, only if the holder's calls
        of the route all come from other workers (else ``worker`` sends its calls to
        the holder, ``ELSEWHERE``: moving a container costs a start, sending a call a
        hop)."""
        counts = self._counts.get(route, {})
        holder = max((w for w in counts if w != worker), key=lambda w: counts[w], default=None)
        if holder is None:
            return None, GIVE_IDLE
        mine = counts.get(worker, 0)
        if counts[holder] > mine + 1:
            return holder, GIVE_ANY
        return holder, (GIVE_IDLE if mine else GIVE_FOLLOW)

    def _keep(self, worker: int, route: RouteKey, limit: int, holder: int, mode: str) -> _Place:
        """Keep the next place of ``route`` for ``worker``'s start and ask ``holder``
        to give a container back. The place's Deferred fires True once the place is
        counted for ``worker``, False when ``holder`` has none to give or ``RESERVE_S``
        passed."""
        def cancel(_: Deferred[bool]) -> None:  # the start was withdrawn, or its worker died
            self._unkeep(route, place)

        place = _Place(worker, limit, Deferred(cancel))
        self._kept.setdefault(route, {})[worker] = place
        place.timer = self._clock.callLater(RESERVE_S, self._give_up, route, place)
        asked = self._give_back(holder, route, mode)
        if asked is None:
            self._give_up(route, place)
            return place

        def answered(gave: Any) -> None:
            if not gave:  # none to give (that ``mode`` allows): nothing is on its way
                self._give_up(route, place)
                return
            log.debug("Route {app}{path} at its max_concurrency: worker {holder} gives a container back for worker {worker}",
                      app=route[0], path=route[1], holder=holder, worker=worker)

        def failed(f: Any) -> None:
            log.warn("Worker {worker} could not give a container back: {error}", worker=holder, error=str(f.value))
            self._give_up(route, place)

        asked.addCallbacks(answered, failed)
        return place

    def _unkeep(self, route: RouteKey, place: _Place) -> bool:
        kept = self._kept.get(route, {})
        if kept.get(place.worker) is not place:
            return False
        del kept[place.worker]
        if not kept:
            del self._kept[route]
        if place.timer is not None and place.timer.active():
            place.timer.cancel()
        return True

    def _give_up(self, route: RouteKey, place: _Place) -> None:
        if self._unkeep(route, place):
            place.deferred.callback(False)
