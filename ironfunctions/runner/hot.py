"""Hot functions (format ``http``, SPEC §4): per-route pools of long-lived containers.

``HotRunner`` is the agent's ``CallRunner`` for format ``http``. It keeps one
``RoutePool`` (``runner/hot_pool.py``) per route (and app config) on this node. A pool
holds up to the route's ``max_concurrency`` containers (``runner/hot_container.py``),
each serving one call at a time over its attached stdin/stdout (``runner.protocol``): a
call takes an idle container, else a new one is started if the pool is below its
limit, else the call waits its turn (FIFO, at most the route's timeout, counted as wait
time). Each live container holds one ``Slots`` slot, so cold and hot containers
together stay within ``MAX_CONCURRENCY``.

A container is killed and replaced when it dies, writes anything that is not exactly
one response to the call in flight, or overruns the call's timeout; that call gets a
502 (``error``) or 504 (``timeout``) result, and a killed container never serves
another call, so no byte of one call's output reaches another. A container idle for
the route's ``idle_timeout`` is stopped and removed.

A pool is *retired* when its route changes: through this node (``retire``, a
``RouteCache.on_invalidate`` listener) or through another node (a call arrives with a
route value that differs from the pool's). A retired pool takes no new calls; its
containers finish the calls already given to the pool and are then removed.

Hot containers hold slots, so a call waiting for one (``Slots.on_pressure``,
``runner/admission.py``) may take a hot container's: ``reclaim_idle`` stops one idle for
at least ``RECLAIM_MIN_IDLE_S`` (idle containers must not keep cold calls and other
routes out until their ``idle_timeout``), else moves one from the route holding the most
to the waiting one when that evens them out; a container idle for a moment only, between
two calls of a busy route, is never taken. Routes that together want more containers
than their slots thus settle on even shares instead of taking each other's containers
call after call (bench/README.md, issue 15).

Per call, the work here is: pop an idle container, encode the request, write it, parse
the answer. Timers are lazy (one ``DelayedCall`` per container, moved only when it
would fire too late), so a call on a warm container schedules nothing.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.models import Call, CallResult
from ironfunctions.runner.admission import RouteKey, SlotSource
from ironfunctions.runner.hot_context import GIVE_ANY, GIVE_FOLLOW, GIVE_IDLE, Forward, HotContext
from ironfunctions.runner.hot_pool import RoutePool
from ironfunctions.runner.plan import FunctionPolicy
from ironfunctions.runner.stderr_log import StderrLog
from ironfunctions.runner.waitqueue import DEFAULT_MAX_WAITING

# A container idle this long may be stopped for a call waiting for a slot: well above
# the gap between two calls of a busy route (so a route's working set is left alone),
# well below any idle_timeout (so idle containers do not keep others out for long).
RECLAIM_MIN_IDLE_S = 1.0

log = Logger()


class HotRunner:
    """Runs calls of format ``http`` on pooled hot containers (see the module doc).

    Its parameters are the fields of ``HotContext`` (``runner/hot_pool.py``), which every
    pool of this runner shares; give it the agent's ``stderr_log`` so that an app's stderr
    budget counts its hot and cold calls together.
    """

    def __init__(
        self,
        driver: IContainerDriver,
        slots: SlotSource,
        clock: IReactorTime,
        node_id: str,
        network_mode: str = "bridge",
        max_response_size: int = 6 * 1024 * 1024,
        max_waiting: int = DEFAULT_MAX_WAITING,
        policy: FunctionPolicy = FunctionPolicy(),
        stderr_log: StderrLog | None = None,
        forward: Forward | None = None,
        forward_cancel: Callable[[int, str], None] | None = None,
    ) -> None:
        self._context = HotContext(
            driver, slots, clock, node_id, stderr_log if stderr_log is not None else StderrLog(clock),
            network_mode, max_response_size, max_waiting, policy, forward, forward_cancel,
        )
        self._pools: dict[tuple[str, str], RoutePool] = {}
        self._draining: set[RoutePool] = set()

    async def run(self, call: Call, forwarded: bool = False) -> CallResult:
        """Run ``call`` on a hot container of its route. Raise ``Overloaded`` when no
        container frees up within the route's timeout, ``ImageNotFound`` or
        ``DockerUnavailable`` when the container for it cannot start.

        :param forwarded: another worker process of the node sent it here
            (``workers/forward.py``); it runs here or fails, it is not sent on.
        """
        pool = self._pools.get(call.route.key)
        if pool is None or not pool.serves(call):
            pool = self._new_pool(call)
        return await pool.run(call, forwarded)

    def _new_pool(self, call: Call) -> RoutePool:
        key = call.route.key
        old = self._pools.pop(key, None)
        if old is not None:
            self._retire_pool(old)
        pool = RoutePool(self._context, call.route, call.app_config, self._drained)
        self._pools[key] = pool
        return pool

    def _retire_pool(self, pool: RoutePool) -> None:
        self._draining.add(pool)
        pool.retire()

    def _drained(self, pool: RoutePool) -> None:
        self._draining.discard(pool)

    async def cancel(self, call_id: str) -> bool:
        """Kill the container serving ``call_id`` (its call ends with an error result;
        the pool starts another container for the next call)."""
        for pool in [*self._pools.values(), *self._draining]:
            if pool.cancel_call(call_id):
                return True
        return False

    def reclaim_idle(self, app: str | None = None, route: RouteKey | None = None,
                     wanted: int | None = None) -> bool:
        """Free a slot for a call waiting for one, if that is fair now (a
        ``Slots.on_pressure`` hook, asked again while the call waits). False if nothing
        may be freed now.

        :param app: only ``app``'s containers count (an app at its
            ``APP_MAX_CONCURRENCY`` can only use a slot of its own); None: any app's.
        :param route: the hot route whose pool waits to start a container; None for a
            cold call (which holds no container, so counts as a route with none).
        :param wanted: what the waiting pool would hold after getting a slot, when it is
            another worker process's (``workers/slots.py``); by default its share + 1.

        1. The container idle the longest is stopped if it has been idle
           ``RECLAIM_MIN_IDLE_S``.
        2. Else the pool holding the most slots gives one back if it holds more than
           the waiting route would after getting one: an idle container at once, else
           its next free one. After the move the two differ by one at most, so neither
           takes it back: no ping-pong.
        3. Else nothing: the call waits, and ``Slots`` asks again a little later.
        A pool whose waiting calls were served meanwhile asks for nothing.
        """
        requester = self._pools.get(route) if route is not None else None
        if requester is not None and not requester.wants_slot():
            return False
        pools = [p for p in self._pools.values() if app is None or p.route.app_name == app]
        oldest: tuple[float, RoutePool] | None = None
        for pool in pools:
            since = pool.least_recently_used()
            if since is not None and (oldest is None or since < oldest[0]):
                oldest = (since, pool)
        if oldest is not None and self._context.clock.seconds() - oldest[0] >= RECLAIM_MIN_IDLE_S:
            oldest[1].reclaim()
            return True
        if wanted is None:
            wanted = (requester.share if requester is not None else 0) + 1
        richest = max((p for p in pools if p is not requester), default=None,
                      key=lambda p: (p.share, p.least_recently_used() is not None))
        if richest is not None and richest.share > wanted:
            richest.give_back()
            return True
        return False

    def give_back_route(self, route: RouteKey, mode: str = GIVE_ANY) -> bool:
        """Give one of ``route``'s containers back for another worker process of the
        node (``workers/route_places.py``); an idle one at once, else the next one to
        end its call. False if it holds none, or none that ``mode`` allows:

        - ``GIVE_ANY``: the other worker holds fewer of them;
        - ``GIVE_IDLE``: the other worker's calls wait while one here has idled
          ``RECLAIM_MIN_IDLE_S``;
        - ``GIVE_FOLLOW``: the other worker holds none, and every call of the route
          here came from other workers lately (``CallOrigins``).
        """
        pool = self._pools.get(route)
        if pool is None or pool.share <= 0:
            return False
        now = self._context.clock.seconds()
        if mode == GIVE_IDLE:
            since = pool.least_recently_used()
            if since is None or now - since < RECLAIM_MIN_IDLE_S:
                return False
        elif mode == GIVE_FOLLOW:
            if not pool.origins.all_forwarded(now):
                return False
            log.info("Hot container of {app}{path} moves to the worker its calls come from",
                     app=route[0], path=route[1])
        pool.give_back()
        return True

    def retire(self, app_name: str, path: str | None = None) -> None:
        """Retire the pools of a route (or, with no path, of every route of an app):
        their containers finish the calls they were given and are removed. A
        ``RouteCache.on_invalidate`` listener."""
        for key in [k for k in self._pools if k[0] == app_name and (path is None or k[1] == path)]:
            self._retire_pool(self._pools.pop(key))

    def containers(self) -> dict[tuple[str, str], int]:
        """Live hot containers per route (app, path), including retiring ones."""
        counts: dict[tuple[str, str], int] = {}
        for pool in [*self._pools.values(), *self._draining]:
            key = pool.route.key
            counts[key] = counts.get(key, 0) + pool.size
        return counts

    async def close(self) -> None:
        """Remove every hot container now (the agent calls this at stop, after
        draining in-flight calls). Returns once the removals are done."""
        pools = [*self._pools.values(), *self._draining]
        self._pools.clear()
        removals: list[Deferred[None]] = []
        for pool in pools:
            self._draining.add(pool)
            removals.extend(pool.close())
        if removals:
            await gatherResults(removals, consumeErrors=True)
