"""Admission: at most ``limit`` containers at once on this node, at most ``app_limit``
of them for one app, with a bounded wait.

A call that cannot get a slot within ``wait_bound`` seconds (``ADMISSION_WAIT``), or
that finds ``max_waiting`` calls already waiting (``ADMISSION_MAX_WAITING``), is
refused with ``Overloaded`` (the API answers 503 + Retry-After): the node never
accepts work it cannot run and its memory stays bounded however many clients pile up.

Fair share (SPEC §8, ``APP_MAX_CONCURRENCY``): one app never holds more than
``app_limit`` slots. Running calls cannot be preempted, so this cap is what keeps
slots free for another app's call to start at once while one app floods the node; an
app at its cap waits for one of its own containers to end, even when slots are free
(a node that serves a single app sets ``APP_MAX_CONCURRENCY`` to ``MAX_CONCURRENCY``).
Each app's waiting calls form their own FIFO line (``runner/fairqueue.py``); a freed
slot goes to the waiting app that holds the fewest slots, so a flooding app's queue
never stands in front of another app's call. Waits caused by the cap are counted as
``app.throttled``.

Cold calls hold a slot for one container run; hot pools (``runner/hot_pool.py``) hold
one per live container, so both share the node's ``MAX_CONCURRENCY`` and an app's
``APP_MAX_CONCURRENCY``. Idle hot containers must not keep cold calls and other routes
out until their idle timeout: a call that has to wait asks the ``on_pressure`` hooks to
free a slot, among the containers of the waiting call's own app when that app is at its
cap (only those free a slot it may take), of any app otherwise, and asks again every
``PRESSURE_RETRY_S`` while it still waits, since what could not be freed at once (a
container idle for a moment only, or busy) may be freed a little later. What the hot
runner frees, and what it leaves alone so that hot routes do not take each other's
containers call after call, is ``HotRunner.reclaim_idle``'s rule (``runner/hot.py``).
Only calls that wait pay for this: a call that finds a free slot asks nothing.
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ironfunctions.errors import Overloaded
from ironfunctions.metrics import IMetrics
from ironfunctions.runner.fairqueue import FairWaitQueue, RouteKey
from ironfunctions.runner.waitqueue import DEFAULT_MAX_WAITING

__all__ = [
    "DEFAULT_MAX_WAITING", "DEFAULT_WAIT_BOUND_S", "PRESSURE_RETRY_S", "Reclaim", "RouteElsewhere", "RouteFull",
    "RouteKey", "Slots", "SlotSource",
]

DEFAULT_WAIT_BOUND_S = 10.0  # ADMISSION_WAIT's default
# How often the hooks are asked again while calls wait: short against ADMISSION_WAIT,
# long against a call on a hot container (one pass over the hot pools per waiting
# app and route each time).
PRESSURE_RETRY_S = 0.25

log = Logger()

# reclaim(app, route): free a slot for a waiting call, among ``app``'s containers (any
# app's when None). ``route`` is what the call waits for: the (app, path) of the hot
# route whose pool waits to start a container, None for a cold call. True if a slot
# is on its way (it is released once its container is gone).
Reclaim = Callable[[str | None, RouteKey | None], bool]


class RouteFull(Overloaded):
    """The hot route is at its ``max_concurrency`` on the node and this worker holds
    some of its containers: its calls wait for those."""

    def __init__(self) -> None:
        super().__init__("the route's containers are all started", retry_after=1)


class RouteElsewhere(Overloaded):
    """The hot route is at its ``max_concurrency`` on the node, all of its containers
    on ``worker``: calls of the route go there."""

    def __init__(self, worker: int) -> None:
        super().__init__(f"the route's containers run in worker {worker}", retry_after=1)
        self.worker = worker


class SlotSource(Protocol):
    """What runners need of the node's container slots: ``Slots`` in one process,
    ``workers.slots.RemoteSlots`` in a worker process."""

    limit: int

    @property
    def in_use(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def held(self, app: str) -> int: ...

    async def acquire(self, app: str, route: RouteKey | None = None, route_limit: int = 0) -> None: ...

    def release(self, app: str, route: RouteKey | None = None) -> None: ...

    def on_pressure(self, reclaim: Callable[..., bool]) -> None: ...


class Slots:
    """A counting semaphore with a per-app cap and a bounded, time-limited, fair queue.

    :param limit: containers this node runs at once (``MAX_CONCURRENCY``).
    :param clock: times the waits.
    :param max_waiting: calls that may wait at once (``ADMISSION_MAX_WAITING``).
    :param wait_bound: seconds a call may wait (``ADMISSION_WAIT``).
    :param app_limit: containers one app may hold (``APP_MAX_CONCURRENCY``); 0: ``limit``.
    :param metrics: where ``app.throttled`` is counted.
    """

    def __init__(
        self,
        limit: int,
        clock: IReactorTime,
        max_waiting: int = DEFAULT_MAX_WAITING,
        wait_bound: float = DEFAULT_WAIT_BOUND_S,
        app_limit: int = 0,
        metrics: IMetrics | None = None,
    ) -> None:
        self.limit = limit
        self.app_limit = app_limit or limit
        self.in_use = 0
        self._held: dict[str, int] = {}
        self._wait_bound = wait_bound
        self._waiters = FairWaitQueue(clock, max_waiting)
        self._pressure: list[Callable[..., bool]] = []
        self._metrics = metrics
        self._clock = clock
        self._retry: IDelayedCall | None = None  # while calls wait and hooks are set

    def on_pressure(self, reclaim: Callable[..., bool]) -> None:
        """Call ``reclaim(app, route)`` when a caller has to wait for a slot, and every
        ``PRESSURE_RETRY_S`` while it waits: ``app`` is the caller's app when it waits
        because that app is at its cap, else None; ``route`` is what it waits for
        (``acquire``'s)."""
        self._pressure.append(reclaim)

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now (``/stats``' ``Queue``)."""
        return len(self._waiters)

    def held(self, app: str) -> int:
        """Slots ``app`` holds now."""
        return self._held.get(app, 0)

    async def acquire(self, app: str, route: RouteKey | None = None, route_limit: int = 0) -> None:
        """Take a slot for ``app``, waiting at most ``wait_bound`` s. Raise ``Overloaded``.

        :param route: what the slot is for: the (app, path) of a hot route whose pool
            starts a container with it, None for a cold call (see ``on_pressure``).
        :param route_limit: the route's ``max_concurrency``: in one process its pool
            keeps to it; a worker process's ``RemoteSlots`` (``workers/slots.py``) has
            the parent count it across the node's workers.
        """
        held = self._held.get(app, 0)
        # No waiter could take a free slot (``_hand_over`` serves them as slots free),
        # so a free slot within the app's cap is this caller's.
        if self.in_use < self.limit and held < self.app_limit:
            self.in_use += 1
            self._held[app] = held + 1
            return
        waiter = self._waiters.wait(app, self._wait_bound, route)  # Overloaded when full
        if held >= self.app_limit and self._metrics is not None:
            self._metrics.count("app.throttled", 1, app=app)
        if self._pressure:
            self._press(app, route)
            if self._waiters and self._retry is None:
                self._retry = self._clock.callLater(PRESSURE_RETRY_S, self._press_again)
        try:
            await waiter  # Overloaded after wait_bound; the slot is counted by _hand_over
        except CancelledError:
            raise Overloaded(retry_after=1) from None
        finally:  # served, refused or gone: no retry outlives the last waiting call
            if not self._waiters and self._retry is not None:
                self._retry.cancel()
                self._retry = None

    def _press(self, app: str, route: RouteKey | None) -> bool:
        """Ask the hooks to free a slot for a call of ``app`` waiting for ``route``."""
        scope = app if self._held.get(app, 0) >= self.app_limit else None
        try:
            for reclaim in self._pressure:
                if reclaim(scope, route):
                    return True
        except Exception:  # a bug in a hook must not strand a waiter in the queue
            log.failure("Freeing a container slot failed")
        return False

    def _press_again(self) -> None:
        """Calls still wait: ask again, once for each kind of waiting call (the hooks
        may free a slot now that they could not before)."""
        self._retry = None
        for app, route in self._waiters.requests():  # a list: pressing may serve waiters
            self._press(app, route)
        if self._waiters and self._retry is None:
            self._retry = self._clock.callLater(PRESSURE_RETRY_S, self._press_again)

    def release(self, app: str, route: RouteKey | None = None) -> None:
        """Give ``app``'s slot back (of hot ``route``'s container, as it was acquired);
        it goes to a waiting call if one may take it."""
        held = self._held[app] - 1
        if held:
            self._held[app] = held
        else:
            del self._held[app]
        self.in_use -= 1
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        while self.in_use < self.limit:
            handoff = self._waiters.pop_next(self.held, self.app_limit)
            if handoff is None:
                return
            self.in_use += 1
            self._held[handoff.app] = self._held.get(handoff.app, 0) + 1
            handoff.fire()  # may run the caller on, even release again: state is settled
