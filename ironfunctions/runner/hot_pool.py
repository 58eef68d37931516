"""The hot containers of one route on this node (SPEC §4 "Hot functions").

A ``RoutePool`` holds up to the route's ``max_concurrency`` containers
(``HotContainer``), each serving one call at a time: a call takes an idle container,
else a new one is started if the pool is below its limit, else the call waits its
turn (a ``WaitQueue``: FIFO, at most the route's timeout, counted as wait time). Each
live container holds one ``Slots`` slot, so cold and hot containers together stay
within ``MAX_CONCURRENCY``.

Containers report to their pool through ``ContainerOwner`` (``runner/hot_owner.py``):
one that finished a call goes to the longest waiting call or becomes idle; one that
died, misbehaved or expired is removed (its slot released) and, if calls wait,
replaced. What the pools of a node share (driver, slots, clock, limits...) is one
frozen ``HotContext``.

A *retired* pool (its route changed) takes no new calls; its containers finish the
calls already given to it and are then removed, and the pool tells its runner it is
drained.

When hot routes want more containers than their app's (or the node's) slots, a pool
may be asked to *give back* a container for a route holding fewer
(``HotRunner.reclaim_idle``): an idle one goes at once, else the next one that ends its
call (or starts) is removed instead of taking the next waiting call, and the pool's
waiting calls are served by its other containers. A start that cannot get a slot
within ``ADMISSION_WAIT`` while the pool has containers fails no call for the same
reason: the calls stay queued for those containers (each within its route timeout).
With worker processes, calls may go to another worker (``runner/hot_context.py``).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ironfunctions.errors import Overloaded, RouteMoved
from ironfunctions.models import CANCELLED_MESSAGE, Call, CallResult, CallStatus, Route
from ironfunctions.runner.admission import RouteElsewhere, RouteFull
from ironfunctions.runner.hot_container import EXITED, HotContainer, ms
from ironfunctions.runner.hot_context import ELSEWHERE_S, CallOrigins, Forwarding, FullWindow, GoElsewhere, HotContext
from ironfunctions.runner.protocol import RequestEncoder, hot_container_spec
from ironfunctions.runner.waitqueue import WaitQueue

REMOVE_TIMEOUT_S = 30.0
log = Logger()

class _ExitedAtStart(Exception):
    """A new hot container's function exited before it could take a call."""


class RoutePool:
    """The hot containers of one route on this node (see the module doc).

    :param context: what the node's pools share.
    :param route: the route (and ``app_config`` its app's config) the pool serves.
    :param on_drained: called with the pool once it is retired and empty.
    """

    def __init__(
        self,
        context: HotContext,
        route: Route,
        app_config: Mapping[str, str],
        on_drained: Callable[[RoutePool], None],
    ) -> None:
        self._context = context
        self._clock = context.clock
        self._on_drained = on_drained
        self.route = route
        self.app_config = app_config
        self._encoder = RequestEncoder(route, app_config)
        self._spec = hot_container_spec(
            route, app_config, context.node_id, context.network_mode, context.policy)
        self._live: set[HotContainer] = set()
        self._idle: list[HotContainer] = []  # a stack: the most recently used first,
        # so that when load drops the others go idle long enough to expire.
        self._starting = 0
        self._slotted = 0  # starts that hold their slot (the container is on its way)
        self._give_back = 0  # containers to remove as soon as they are free
        self._waiters: WaitQueue[HotContainer] = WaitQueue(
            context.clock, context.max_waiting,
            expired_message="No hot container of this route became free within its timeout",
            on_leave=self._check_drained,
        )
        self._retired = False
        self._fields = {"app": route.app_name, "path": route.path}
        self._waiting: dict[str, Deferred[HotContainer]] = {}  # calls waiting here, by id
        self._cancelled: set[str] = set()
        self._full = FullWindow(self._clock, self._maybe_start)  # RouteFull: no start asked for a while
        self._away = Forwarding(context)  # calls sent to another worker process
        self.origins = CallOrigins()  # whether its calls come from other workers lately

    @property
    def size(self) -> int:
        """Live containers (starting ones not included)."""
        return len(self._live)

    @property
    def share(self) -> int:
        """The slots it holds (live containers, and starts that have their slot) less
        those it is to give back: what it counts as when hot routes share slots."""
        return len(self._live) + self._slotted - self._give_back

    def wants_slot(self) -> bool:
        """Whether a call waits that no start holding a slot will take (a start still
        waiting for its slot is needed)."""
        return len(self._waiters) > self._slotted

    @property
    def retired(self) -> bool:
        """Whether it takes no new calls (its route changed, or the node stops)."""
        return self._retired

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
        return not self._retired

    async def run(self, call: Call, forwarded: bool = False) -> CallResult:
        """Run ``call`` on one of the pool's containers. Raise ``Overloaded`` when none
        frees up within the route's timeout, ``ImageNotFound``/``DockerUnavailable``
        when the one started for it cannot start.

        :param forwarded: another worker process sent it here (it is not sent on).
        """
        self.origins.came(self._clock.seconds(), forwarded)
        return await self._run(call, forwarded)

    async def _run(self, call: Call, forwarded: bool, bounced: bool = False) -> CallResult:
        """``run``; ``bounced``: it came back from the worker it was sent to, whose
        container of the route moved away while it waited there (``RouteMoved``)."""
        if self._idle:
            return await self._idle.pop().serve(call, 0, 0)
        if not forwarded and not self._live and not self._starting:
            worker = self._away.target(self._clock.seconds())
            if worker is not None:
                return await self._away.run(worker, call, None if bounced else self._again)
        queued_at = self._clock.seconds()
        call_id = call.id
        waiter = self._wait()
        self._waiting[call_id] = waiter  # so that a cancel can end the wait (cancel_call)
        elsewhere: int | None = None
        try:
            container = await waiter
        except GoElsewhere as e:
            if forwarded:  # back to the worker that sent it, which runs it again
                raise RouteMoved() from None
            elsewhere = e.worker
        except _ExitedAtStart:
            return CallResult(call_id, CallStatus.ERROR, error=EXITED, wait_ms=ms(self._clock.seconds() - queued_at))
        except CancelledError:
            if call_id not in self._cancelled:
                raise
            self._cancelled.discard(call_id)
            return CallResult(call_id, CallStatus.CANCELLED, error=CANCELLED_MESSAGE,
                              wait_ms=ms(self._clock.seconds() - queued_at))
        finally:
            del self._waiting[call_id]
        if elsewhere is not None:
            return await self._away.run(elsewhere, call, None if bounced else self._again)
        waited = self._clock.seconds() - queued_at
        start_ms = 0
        if container.calls == 0:  # started for the waiting calls: part of the wait was its start
            start_ms = min(container.start_ms, ms(waited))
        return await container.serve(call, max(0, ms(waited) - start_ms), start_ms)

    def _again(self, call: Call) -> Awaitable[CallResult]:
        return self._run(call, False, bounced=True)

    def cancel_call(self, call_id: str) -> bool:
        """Kill the container serving ``call_id``, if one of this pool's does (the call
        ends at once with an error result); or end its wait for a container, if it
        waits here (it ends ``cancelled`` and takes no container); or have the worker
        it was forwarded to stop it."""
        if self._away.cancel(call_id):
            return True
        waiter = self._waiting.get(call_id)
        if waiter is not None:
            self._cancelled.add(call_id)
            waiter.cancel()
            return True
        for container in list(self._live):
            if container.cancel_call(call_id):
                return True
        return False

    # -- waiting and starting

    def _wait(self) -> Deferred[HotContainer]:
        waiter = self._waiters.wait(self.route.timeout)  # Overloaded when full
        self._maybe_start()
        return waiter

    def _maybe_start(self) -> None:
        """Start a container if calls wait that the starting ones will not take and
        the route's limit allows."""
        while (
            self._starting < len(self._waiters)
            and len(self._live) + self._starting < self.route.max_concurrency
            and not self._full.blocks()
        ):
            self._starting += 1
            d = Deferred.fromCoroutine(self._start())
            d.addErrback(self._start_crashed)

    async def _start(self) -> None:
        context = self._context
        began = self._clock.seconds()
        try:
            await context.slots.acquire(self.route.app_name, self.route.key, self.route.max_concurrency)
        except RouteElsewhere as e:
            self._starting -= 1
            if self._live:  # (raced with its own container's release) they serve the calls
                return
            self._away.send_to(e.worker, self._clock.seconds() + ELSEWHERE_S)
            while self._waiters.fail_oldest(GoElsewhere(e.worker)):
                pass
            self._check_drained()
            return
        except RouteFull:
            # The route's containers are all taken, some by this worker's pools: calls wait for them.
            self._starting -= 1
            self._full.begin()
            return
        except Overloaded as e:
            self._starting -= 1
            if self._live and not self._retired:
                # No slot (within ADMISSION_WAIT), but this pool's containers serve the
                # calls waiting here: they keep their place, and their own timeout. The
                # next call that has to wait asks for a container again.
                return
            self._start_failed(e)
            return
        except Exception as e:
            self._starting -= 1
            self._start_failed(e)
            return
        self._slotted += 1
        container = HotContainer(
            self, self._clock, self._encoder, self.route.idle_timeout, context.max_response_size,
            self._fields, began, context.stderr_log,
        )
        try:
            attached = await context.driver.start_attached(self._spec, container)
        except Exception as e:
            self._starting -= 1
            self._slotted -= 1
            if self._give_back:  # its slot is the one to give back
                self._give_back -= 1
            context.slots.release(self.route.app_name, self.route.key)
            self._start_failed(e)
            return
        self._starting -= 1
        self._slotted -= 1
        container.started(attached, ms(self._clock.seconds() - began))
        self._live.add(container)
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
        if not self._waiters.fail_oldest(error):
            log.warn("Could not start a hot container: {error}", error=str(error), **self._fields)
        self._maybe_start()
        self._check_drained()

    # -- ContainerOwner: what its containers report

    def available(self, container: HotContainer) -> None:
        """``container`` finished a call (or started): give it to the longest waiting
        call, else keep it idle (or remove it, when the pool is retired or is to give
        a container back)."""
        if self._give_back:
            self.kill(container)
            return
        if self._waiters.give(container):
            return
        if self._retired:
            self.kill(container)
        else:
            self._idle.append(container)
            container.went_idle()

    def kill(self, container: HotContainer) -> Deferred[None]:
        """Take ``container`` out of service and remove it (kill, then rm); the
        Deferred fires when it is gone."""
        container.stop_serving()
        return self._lost(container)

    def exited(self, container: HotContainer) -> None:
        """``container``'s function exited: remove it (and replace it if calls wait)."""
        self._lost(container)

    def idle_expired(self, container: HotContainer) -> None:
        """``container`` was idle for the route's ``idle_timeout``."""
        log.debug("Hot container {container_id} idle for {idle_timeout}s: stopping",
                  container_id=container.container_id, idle_timeout=self.route.idle_timeout,
                  **self._fields)
        self.kill(container)

    # -- containers going

    def least_recently_used(self) -> float | None:
        """When the container idle the longest went idle; None if none is."""
        return self._idle[0].idle_since if self._idle else None

    def reclaim(self) -> None:
        """Stop the container idle the longest: a call elsewhere needs its slot."""
        container = self._idle[0]
        log.debug("Hot container {container_id} stopped: its slot is needed",
                  container_id=container.container_id, **self._fields)
        self.kill(container)

    def give_back(self) -> None:
        """Give one container's slot back for a route holding fewer: the one idle the
        longest now, else the next one that is free (see the module doc)."""
        if self._idle:
            self.reclaim()
            return
        log.debug("A hot container will be stopped after its call: its slot is needed", **self._fields)
        self._give_back += 1

    def _lost(self, container: HotContainer) -> Deferred[None]:
        """``container`` serves no more calls (dead or being killed): remove it,
        release its slot, and start a replacement if calls are waiting."""
        if container not in self._live:
            return container.removed
        self._live.discard(container)
        self._full.end()  # its place in the route's limit is free: a start may ask
        if self._give_back:  # whatever took it out, its slot is the one to give back
            self._give_back -= 1
        try:
            self._idle.remove(container)
        except ValueError:
            pass
        container.cancel_timer()
        d = Deferred.fromCoroutine(self._remove(container))
        self._maybe_start()
        return d

    async def _remove(self, container: HotContainer) -> None:
        context = self._context
        container_id = container.container_id
        try:
            d = Deferred.fromCoroutine(context.driver.remove(container_id))
            d.addTimeout(REMOVE_TIMEOUT_S, self._clock)
            await d
        except Exception as e:
            log.error("Could not remove hot container {container_id}: {error}",
                      container_id=container_id, error=str(e), **self._fields)
        finally:
            context.slots.release(self.route.app_name, self.route.key)
            container.mark_removed()
            self._check_drained()

    # -- retirement

    def retire(self) -> None:
        """Take no new calls; remove idle containers now, busy ones after their call
        (calls already waiting here are still served)."""
        if self._retired:
            return
        self._retired = True
        if not self._waiters:
            for container in list(self._idle):
                self.kill(container)
        self._check_drained()

    def close(self) -> list[Deferred[None]]:
        """Remove every container now, busy or not; fail waiting calls."""
        self._retired = True
        self._full.stop()
        while self._waiters.fail_oldest(Overloaded("node is stopping", retry_after=1)):
            pass
        return [self.kill(container) for container in list(self._live)]

    def _check_drained(self) -> None:
        if self._retired and not self._live and not self._starting and not self._waiters:
            self._on_drained(self)
