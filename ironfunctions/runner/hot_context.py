"""What every hot pool of a node shares (``runner/hot_pool.py``): one frozen
``HotContext`` per ``HotRunner``.

In a worker process (``WORKERS`` > 1) a route's ``max_concurrency`` counts the whole
node's containers (``workers/slots.py``). A pool whose start is told ``RouteElsewhere``
(the route's containers all run in another worker) sends its waiting calls, and the
calls that come in the next ``ELSEWHERE_S``, to that worker (``HotContext.forward``);
after that a call tries to start a container here again (the other worker may have
given one back meanwhile). A call forwarded here is never forwarded again.

A route's container follows its calls: when every call of a route a worker has
served for ``FOLLOW_S`` came from other workers (at least ``FOLLOW_MIN_CALLS`` of
them), it gives the container up for the worker asking for it (``GIVE_FOLLOW``,
``workers/route_places.py``). A forwarded call costs two hops through the parent
(~0.3 ms here), a move one container start (~0.2 s) once: one client's calls on one
connection, or a balancer's on a worker the container is not in, stop crossing.
Calls forwarded here that still wait when the container goes are sent back
(``RouteMoved``) and run where it went.
"""

from __future__ import annotations

from collections import deque
from typing import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.errors import Overloaded, RouteMoved
from ironfunctions.models import Call, CallResult
from ironfunctions.runner.admission import SlotSource
from ironfunctions.runner.plan import FunctionPolicy
from ironfunctions.runner.stderr_log import StderrLog
from ironfunctions.runner.waitqueue import DEFAULT_MAX_WAITING

__all__ = [
    "ELSEWHERE_S", "FOLLOW_MIN_CALLS", "FOLLOW_S", "FULL_S", "GIVE_ANY", "GIVE_FOLLOW", "GIVE_IDLE", "CallOrigins",
    "Forward", "Forwarding", "FullWindow", "GoElsewhere", "HotContext",
]

ELSEWHERE_S = 0.25  # how long a pool told RouteElsewhere sends its calls to that worker
# How long a pool told RouteFull (it has containers; the node's others are in other
# workers) asks for no more: its waiting calls take its own containers meanwhile, and
# asking again on every call that waits would be a message per call.
FULL_S = 0.25

# How a worker is asked to give one of a route's containers back for another worker
# (``HotRunner.give_back_route``, ``workers/route_places.py``):
GIVE_ANY = "any"  # the next free one: it holds more than one more than the asking worker
GIVE_IDLE = "idle"  # only one idle RECLAIM_MIN_IDLE_S: the asking worker's calls wait for its own
GIVE_FOLLOW = "follow"  # only if its calls of the route all come from other workers lately

# A container serving only other workers' calls, at least FOLLOW_MIN_CALLS of them in
# FOLLOW_S and none of its own worker's for FOLLOW_S, moves to a worker asking for it.
# Below that rate a hop per call costs less than the calls waiting for a start.
FOLLOW_S = 1.0
FOLLOW_MIN_CALLS = 50


class GoElsewhere(Exception):
    """The route's containers run in worker ``worker``: the waiting call goes there."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker

# forward(worker, call): run a call of a route on another worker process of the node.
Forward = Callable[[int, Call], Awaitable[CallResult]]


@attrs.frozen
class HotContext:
    """What every hot pool of a node shares.

    :param driver: starts and removes the containers (``start_attached``/``remove``).
    :param slots: the node's container admission, shared with the cold runner.
    :param clock: time for waits, timeouts and idle expiry.
    :param node_id: labels the containers (crash and stop cleanup).
    :param stderr_log: the node's function stderr log (shared with the agent).
    :param network_mode: the containers' network.
    :param max_response_size: largest response body a function may announce.
    :param max_waiting: calls that may wait for a container of one route.
    :param policy: how the containers are hardened (``FUNCTION_*`` settings).
    :param forward: runs a call on another worker process (see the module doc); None
        in a single process, whose ``Slots`` never answers ``RouteElsewhere``.
    :param forward_cancel: ``forward_cancel(worker, call_id)`` stops a call forwarded there.
    """

    driver: IContainerDriver
    slots: SlotSource
    clock: IReactorTime
    node_id: str
    stderr_log: StderrLog
    network_mode: str = "bridge"
    max_response_size: int = 6 * 1024 * 1024
    max_waiting: int = DEFAULT_MAX_WAITING
    policy: FunctionPolicy = FunctionPolicy()
    forward: Forward | None = None
    forward_cancel: Callable[[int, str], None] | None = None


class FullWindow:
    """A pool told ``RouteFull`` asks for no start for ``FULL_S`` (``blocks``); then
    ``expired()`` runs (the pool starts one if calls still wait)."""

    __slots__ = ("_clock", "_expired", "_until", "_timer")

    def __init__(self, clock: IReactorTime, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._expired = expired
        self._until = 0.0
        self._timer: IDelayedCall | None = None

    def begin(self) -> None:
        self._until = self._clock.seconds() + FULL_S
        if self._timer is None:
            self._timer = self._clock.callLater(FULL_S, self._fire)

    def blocks(self) -> bool:
        return bool(self._until) and self._until > self._clock.seconds()

    def end(self) -> None:
        """A place of the route is free (a container here went): a start may ask."""
        self._until = 0.0

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._until = 0.0
        self._expired()


class CallOrigins:
    """Where a pool's calls came from lately: this worker's clients, or other workers'."""

    __slots__ = ("_own", "_forwarded")

    def __init__(self) -> None:
        self._own = float("-inf")  # when the last call of this worker's own came
        self._forwarded: deque[float] = deque(maxlen=FOLLOW_MIN_CALLS)  # the latest forwarded calls' times

    def came(self, now: float, forwarded: bool) -> None:
        if forwarded:
            self._forwarded.append(now)
        else:
            self._own = now

    def all_forwarded(self, now: float) -> bool:
        """Whether every call for ``FOLLOW_S`` came from other workers, at least
        ``FOLLOW_MIN_CALLS`` of them."""
        return (now - self._own >= FOLLOW_S and len(self._forwarded) == FOLLOW_MIN_CALLS
                and now - self._forwarded[0] <= FOLLOW_S)


class Forwarding:
    """A pool's calls sent to another worker: where they go for now (``send_to``, until
    a time), and which are away (so that a cancel follows them)."""

    def __init__(self, context: HotContext) -> None:
        self._context = context
        self._to: tuple[int, float] | None = None
        self._away: dict[str, int] = {}  # call id -> the worker it was sent to

    def send_to(self, worker: int, until: float) -> None:
        self._to = (worker, until)

    def target(self, now: float) -> int | None:
        """The worker the pool's calls go to now, if any."""
        if self._to is not None and now >= self._to[1]:
            self._to = None
        return None if self._to is None else self._to[0]

    async def run(self, worker: int, call: Call,
                  again: Callable[[Call], Awaitable[CallResult]] | None) -> CallResult:
        """Run ``call`` on ``worker``; if the route's container moved away from there
        while the call waited (``RouteMoved``), ``again(call)`` (None: it is a 503)."""
        forward = self._context.forward
        if forward is None:
            raise Overloaded("the route's containers run elsewhere", retry_after=1)
        self._away[call.id] = worker
        try:
            return await forward(worker, call)
        except RouteMoved:
            if again is None:
                raise
        finally:
            self._away.pop(call.id, None)
        return await again(call)

    def cancel(self, call_id: str) -> bool:
        """Stop ``call_id`` where it was sent; False if it is not away."""
        worker = self._away.get(call_id)
        if worker is None or self._context.forward_cancel is None:
            return False
        self._context.forward_cancel(worker, call_id)
        return True
