"""What every hot pool of a node shares (``runner/hot_pool.py``): one frozen
``HotContext`` per ``HotRunner``.

In a worker process (``WORKERS`` > 1) a route's ``max_concurrency`` counts the whole
node's containers (``workers/slots.py``). A pool whose start is told ``RouteElsewhere``
(the route's containers all run in another worker) sends its waiting calls, and the
calls that come in the next ``ELSEWHERE_S``, to that worker (``HotContext.forward``);
after that a call tries to start a container here again (the other worker may have
given one back meanwhile). A call forwarded here is never forwarded again.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.errors import Overloaded
from ironfunctions.models import Call, CallResult
from ironfunctions.runner.admission import SlotSource
from ironfunctions.runner.plan import FunctionPolicy
from ironfunctions.runner.stderr_log import StderrLog
from ironfunctions.runner.waitqueue import DEFAULT_MAX_WAITING

__all__ = ["ELSEWHERE_S", "FULL_S", "Forward", "Forwarding", "GoElsewhere", "HotContext"]

ELSEWHERE_S = 0.25  # how long a pool told RouteElsewhere sends its calls to that worker
# How long a pool told RouteFull (it has containers; the node's others are in other
# workers) asks for no more: its waiting calls take its own containers meanwhile, and
# asking again on every call that waits would be a message per call.
FULL_S = 0.25


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

    async def run(self, worker: int, call: Call) -> CallResult:
        forward = self._context.forward
        if forward is None:
            raise Overloaded("the route's containers run elsewhere", retry_after=1)
        self._away[call.id] = worker
        try:
            return await forward(worker, call)
        finally:
            del self._away[call.id]

    def cancel(self, call_id: str) -> bool:
        """Stop ``call_id`` where it was sent; False if it is not away."""
        worker = self._away.get(call_id)
        if worker is None or self._context.forward_cancel is None:
            return False
        self._context.forward_cancel(worker, call_id)
        return True
