"""Leaving the balancer without losing a call (SPEC §7, §9): the drain sequence.

When SIGTERM arrives, twistd calls the root service's ``stopService`` (a reactor
"before shutdown" trigger: its Deferred delays the shutdown). The root stops its
children last added first, so ``DrainService``, added last of all, stops first:

1. at once, ``Drain.begin``: the load-balancer agent answers ``drain`` and ``/health``
   turns 503 ``draining``, while the node goes on serving everything that arrives;
2. after ``DRAIN_GRACE`` (long enough for the balancer to poll the agent twice), the
   next children stop: the listener closes, async workers stop reserving and the agent
   waits for in-flight calls until the shutdown deadline (``Drain.remaining``:
   ``SHUTDOWN_TIMEOUT`` after the grace), then reservations go back and this node's
   containers are removed.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger


class Drain:
    """Whether this node is leaving, why, and how long it may still wait for its calls.

    :param clock: times the shutdown deadline.
    :param timeout: ``SHUTDOWN_TIMEOUT``: the longest wait for in-flight calls once the
        grace is over.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._deadline: float | None = None
        self.reason = ""  # empty while the node is not draining

    @property
    def draining(self) -> bool:
        return bool(self.reason)

    def begin(self, reason: str) -> None:
        """Start draining (once; a second call keeps the first reason)."""
        if not self.reason:
            self.reason = reason
            self.log.info("Draining ({reason}): the balancer is told to send no new calls", reason=reason)

    def grace_over(self) -> None:
        """The grace is over: the wait for in-flight calls starts now."""
        if self._deadline is None:
            self._deadline = self._clock.seconds() + self._timeout

    def remaining(self) -> float:
        """Seconds left to wait for in-flight calls: the whole ``timeout`` until the
        grace is over, then what is left of it (never below zero)."""
        if self._deadline is None:
            return self._timeout
        return max(0.0, self._deadline - self._clock.seconds())


class DrainService(Service):
    """Add it last to the root, so it stops first: it begins the drain and holds the
    rest of the shutdown back for ``grace`` seconds."""

    name = "drain"

    def __init__(self, drain: Drain, grace: float, clock: IReactorTime) -> None:
        self._drain = drain
        self._grace = grace
        self._clock = clock

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        self._drain.begin("shutdown")

        async def grace() -> None:
            if self._grace > 0:
                await deferLater(self._clock, self._grace, lambda: None)
            self._drain.grace_over()

        return Deferred.fromCoroutine(grace())
