"""Hot functions (format ``http``, SPEC §4): per-route pools of long-lived containers.

``HotRunner`` is the agent's ``CallRunner`` for format ``http``. It keeps one
``RoutePool`` per route (and app config) on this node. A pool holds up to the route's
``max_concurrency`` containers, each serving one call at a time over its attached
stdin/stdout (``runner.protocol``): a call takes an idle container, else a new one is
started if the pool is below its limit, else the call waits its turn (FIFO, at most the
route's timeout, counted as wait time). Each live container holds one ``Slots`` slot,
so cold and hot containers together stay within ``MAX_CONCURRENCY``.

A container is killed and replaced when it dies, writes anything that is not exactly
one response to the call in flight, or overruns the call's timeout; that call gets a
502 (``error``) or 504 (``timeout``) result, and a killed container never serves
another call, so no byte of one call's output reaches another. A container idle for
the route's ``idle_timeout`` is stopped and removed.

A pool is *retired* when its route changes: through this node (``retire``, a
``RouteCache.on_invalidate`` listener) or through another node (a call arrives with a
route value that differs from the pool's). A retired pool takes no new calls; its
containers finish the calls already given to the pool and are then removed.

Per call, the work here is: pop an idle container, encode the request, write it, parse
the answer. Timers are lazy (one ``DelayedCall`` per container, moved only when it
would fire too late), so a call on a warm container schedules nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Mapping

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.errors import Overloaded
from ironfunctions.metrics import IMetrics
from ironfunctions.models import CALL_ERROR, Call, CallResult, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.hot_container import EXITED, HotContainer, ms
from ironfunctions.runner.plan import FunctionPolicy
from ironfunctions.runner.protocol import (
    RequestEncoder,
    hot_container_spec,
)

DEFAULT_MAX_WAITING = 1000
REMOVE_TIMEOUT_S = 30.0
log = Logger()


class HotRunner:
    """Runs calls of format ``http`` on pooled hot containers (see the module doc).

    :param driver: starts and removes the containers (``start_attached``/``remove``).
    :param slots: the node's container admission, shared with the cold runner.
    :param clock: time for waits, timeouts and idle expiry.
    :param node_id: labels the containers (crash and stop cleanup).
    :param metrics: receives the ``hot.containers`` gauge per route.
    :param max_response_size: largest response body a function may announce.
    :param max_waiting: calls that may wait for a container of one route.
    :param policy: how the containers are hardened (``FUNCTION_*`` settings).
    """

    def __init__(
        self,
        driver: IContainerDriver,
        slots: Slots,
        clock: IReactorTime,
        node_id: str,
        metrics: IMetrics,
        network_mode: str = "bridge",
        max_response_size: int = 6 * 1024 * 1024,
        max_waiting: int = DEFAULT_MAX_WAITING,
        policy: FunctionPolicy = FunctionPolicy(),
    ) -> None:
        self._driver = driver
        self._slots = slots
        self._clock = clock
        self._node_id = node_id
        self._metrics = metrics
        self._network_mode = network_mode
        self._max_response_size = max_response_size
        self._max_waiting = max_waiting
        self._policy = policy
        self._pools: dict[tuple[str, str], RoutePool] = {}
        self._draining: set[RoutePool] = set()

    async def run(self, call: Call) -> CallResult:
        """Run ``call`` on a hot container of its route. Raise ``Overloaded`` when no
        container frees up within the route's timeout, ``ImageNotFound`` or
        ``DockerUnavailable`` when the container for it cannot start."""
        pool = self._pools.get(call.route.key)
        if pool is None or not pool.serves(call):
            pool = self._new_pool(call)
        return await pool.run(call)

    def _new_pool(self, call: Call) -> RoutePool:
        key = call.route.key
        old = self._pools.pop(key, None)
        if old is not None:
            self._retire_pool(old)
        pool = RoutePool(self, call.route, call.app_config)
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
            for container in pool.serving():
                if container.cancel_call(call_id):
                    return True
        return False

    def reclaim_idle(self) -> bool:
        """Stop the hot container idle the longest, of any route, so its slot can go to
        a call waiting for one (a ``Slots.on_pressure`` hook): idle containers must not
        keep cold calls and other routes out until their ``idle_timeout``. False if
        none is idle."""
        oldest: tuple[float, RoutePool] | None = None
        for pool in self._pools.values():
            since = pool.least_recently_used()
            if since is not None and (oldest is None or since < oldest[0]):
                oldest = (since, pool)
        if oldest is None:
            return False
        oldest[1].reclaim()
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


class _Waiter:
    """A call waiting for a container of its pool."""

    __slots__ = ("deferred", "queued_at", "timer")

    def __init__(self, queued_at: float, forget: "Callable[[_Waiter], None]") -> None:
        # Cancelling the wait gives up the call's place in the queue: a container
        # must not be handed to a call that is gone.
        self.deferred: Deferred[HotContainer] = Deferred(lambda _: forget(self))
        self.queued_at = queued_at
        self.timer: IDelayedCall | None = None


class _ExitedAtStart(Exception):
    """A new hot container's function exited before it could take a call."""


class RoutePool:
    """The hot containers of one route on this node (see the module doc)."""

    def __init__(self, runner: HotRunner, route: Route, app_config: Mapping[str, str]) -> None:
        self._runner = runner
        self._clock = runner._clock
        self.route = route
        self.app_config = app_config
        self.encoder = RequestEncoder(route, app_config)
        self.max_response_size = runner._max_response_size
        self._spec = hot_container_spec(
            route, app_config, runner._node_id, runner._network_mode, runner._policy)
        self._live: set[HotContainer] = set()
        self._idle: list[HotContainer] = []  # a stack: the most recently used first,
        # so that when load drops the others go idle long enough to expire.
        self._starting = 0
        self._waiters: deque[_Waiter] = deque()
        self.retired = False
        self._fields = {"app": route.app_name, "path": route.path}

    @property
    def size(self) -> int:
        return len(self._live)

    def serves(self, call: Call) -> bool:
        """Whether ``call`` may run here: same route and app config as the pool's
        (a changed value means the route changed, perhaps through another node)."""
        if call.route is not self.route:
            if call.route != self.route:
                return False
            self.route = call.route  # equal: compare by identity next time
        if call.app_config is not self.app_config:
            if call.app_config != self.app_config:
                return False
            self.app_config = call.app_config
        return not self.retired

    async def run(self, call: Call) -> CallResult:
        if self._idle:
            return await self._idle.pop().serve(call, 0, 0)
        queued_at = self._clock.seconds()
        try:
            container = await self._wait(queued_at)
        except _ExitedAtStart:
            return CallResult(call.id, CALL_ERROR, error=EXITED, wait_ms=ms(self._clock.seconds() - queued_at))
        waited = self._clock.seconds() - queued_at
        start_ms = 0
        if container.calls == 0:  # started for the waiting calls: part of the wait was its start
            start_ms = min(container.start_ms, ms(waited))
        return await container.serve(call, max(0, ms(waited) - start_ms), start_ms)

    # -- waiting and starting

    def _wait(self, queued_at: float) -> Deferred[HotContainer]:
        if len(self._waiters) >= self._runner._max_waiting:
            raise Overloaded(retry_after=max(1, self.route.timeout))
        waiter = _Waiter(queued_at, self._forget)
        self._waiters.append(waiter)
        waiter.timer = self._clock.callLater(self.route.timeout, self._waited_too_long, waiter)
        self._maybe_start()
        return waiter.deferred

    def _forget(self, waiter: _Waiter) -> None:
        """A waiting call was cancelled: it leaves the queue."""
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        self._check_drained()

    def _waited_too_long(self, waiter: _Waiter) -> None:
        waiter.timer = None
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        waiter.deferred.errback(Overloaded(
            "No hot container of this route became free within its timeout", retry_after=1
        ))
        self._check_drained()

    def _next_waiter(self) -> _Waiter | None:
        if not self._waiters:
            return None
        waiter = self._waiters.popleft()
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        return waiter

    def _maybe_start(self) -> None:
        """Start a container if calls wait that the starting ones will not take and
        the route's limit allows."""
        while (
            self._starting < len(self._waiters)
            and len(self._live) + self._starting < self.route.max_concurrency
        ):
            self._starting += 1
            d = Deferred.fromCoroutine(self._start())
            d.addErrback(self._start_crashed)

    async def _start(self) -> None:
        runner = self._runner
        began = self._clock.seconds()
        try:
            await runner._slots.acquire()
        except Exception as e:
            self._starting -= 1
            self._start_failed(e)
            return
        container = HotContainer(self, began)
        try:
            attached = await runner._driver.start_attached(self._spec, container)
        except Exception as e:
            self._starting -= 1
            runner._slots.release()
            self._start_failed(e)
            return
        self._starting -= 1
        container.attached = attached
        container.start_ms = ms(self._clock.seconds() - began)
        self._live.add(container)
        self._gauge()
        log.debug("Started hot container {container_id}", container_id=attached.container_id, **self._fields)
        if container.dead:
            # Its function exited while it started: the call it was started for gets
            # the 502 (starting another for the same call would loop until timeout).
            self._start_failed(_ExitedAtStart())
            self._lost(container)
            return
        self.available(container)

    def _start_crashed(self, failure: Failure) -> None:
        log.failure("Starting a hot container failed", failure,
                    app=self.route.app_name, path=self.route.path)

    def _start_failed(self, error: Exception) -> None:
        """The start for the oldest waiting call failed: that call fails with it
        (``ImageNotFound``, ``DockerUnavailable``, ``Overloaded``)."""
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.deferred.errback(Failure(error))
        else:
            log.warn("Could not start a hot container: {error}", error=str(error), **self._fields)
        self._maybe_start()
        self._check_drained()

    # -- containers coming and going

    def serving(self) -> list[HotContainer]:
        """The pool's containers (idle ones included)."""
        return list(self._live)

    def available(self, container: HotContainer) -> None:
        """``container`` finished a call (or started): give it to the longest waiting
        call, else keep it idle (or remove it, when the pool is retired)."""
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.deferred.callback(container)
        elif self.retired:
            self._kill(container)
        else:
            self._idle.append(container)
            container.went_idle()

    def least_recently_used(self) -> float | None:
        """When the container idle the longest went idle; None if none is."""
        return self._idle[0].idle_since if self._idle else None

    def reclaim(self) -> None:
        """Stop the container idle the longest: a call elsewhere needs its slot."""
        container = self._idle[0]
        log.debug("Hot container {container_id} stopped: its slot is needed",
                  container_id=container.container_id, **self._fields)
        self._kill(container)

    def expired(self, container: HotContainer) -> None:
        """``container`` was idle for the route's ``idle_timeout``."""
        log.debug("Hot container {container_id} idle for {idle_timeout}s: stopping",
                  container_id=container.container_id, idle_timeout=self.route.idle_timeout,
                  **self._fields)
        self._kill(container)

    def _kill(self, container: HotContainer) -> Deferred[None]:
        """Take ``container`` out of service and remove it (kill, then rm); the
        Deferred fires when it is gone."""
        container.dead = True
        return self._lost(container)

    def _lost(self, container: HotContainer) -> Deferred[None]:
        """``container`` serves no more calls (dead or being killed): remove it,
        release its slot, and start a replacement if calls are waiting."""
        if container not in self._live:
            return container.removed
        self._live.discard(container)
        try:
            self._idle.remove(container)
        except ValueError:
            pass
        container.cancel_timer()
        self._gauge()
        d = Deferred.fromCoroutine(self._remove(container))
        self._maybe_start()
        return d

    async def _remove(self, container: HotContainer) -> None:
        runner = self._runner
        container_id = container.container_id
        try:
            d = Deferred.fromCoroutine(runner._driver.remove(container_id))
            d.addTimeout(REMOVE_TIMEOUT_S, self._clock)
            await d
        except Exception as e:
            log.error("Could not remove hot container {container_id}: {error}",
                      container_id=container_id, error=str(e), **self._fields)
        finally:
            runner._slots.release()
            container.removed.callback(None)
            self._check_drained()

    def _gauge(self) -> None:
        self._runner._metrics.gauge("hot.containers", len(self._live), **self._fields)

    # -- retirement

    def retire(self) -> None:
        """Take no new calls; remove idle containers now, busy ones after their call
        (calls already waiting here are still served)."""
        if self.retired:
            return
        self.retired = True
        if not self._waiters:
            for container in list(self._idle):
                self._kill(container)
        self._check_drained()

    def close(self) -> list[Deferred[None]]:
        """Remove every container now, busy or not; fail waiting calls."""
        self.retired = True
        while self._waiters:
            waiter = self._next_waiter()
            assert waiter is not None
            waiter.deferred.errback(Overloaded("node is stopping", retry_after=1))
        return [self._kill(container) for container in list(self._live)]

    def _check_drained(self) -> None:
        if self.retired and not self._live and not self._starting and not self._waiters:
            self._runner._drained(self)
