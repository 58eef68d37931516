"""Admission: at most ``limit`` containers at once on this node, with a bounded wait.

A call that cannot get a slot within ``wait_bound`` seconds, or that finds
``max_waiting`` calls already waiting, is refused with ``Overloaded`` (the API answers
503 + Retry-After): the node never accepts work it cannot run and its memory stays
bounded however many clients pile up. Slots are handed to waiters in FIFO order
(a ``WaitQueue``, the same queue the hot pools use).

Cold calls hold a slot for one container run; hot pools (``runner/hot_pool.py``) hold
one per live container, so both share the node's ``MAX_CONCURRENCY``. A call that has
to wait asks the ``on_pressure`` hooks to free a slot: the hot runner then stops its
longest idle container rather than keep it until its idle timeout.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.errors import Overloaded
from ironfunctions.runner.waitqueue import DEFAULT_MAX_WAITING, WaitQueue

__all__ = ["DEFAULT_MAX_WAITING", "DEFAULT_WAIT_BOUND_S", "Slots"]

DEFAULT_WAIT_BOUND_S = 10.0

log = Logger()


class Slots:
    """A counting semaphore with a bounded, time-limited queue."""

    def __init__(self, limit: int, clock: IReactorTime, max_waiting: int, wait_bound: float) -> None:
        self.limit = limit
        self.in_use = 0
        self._wait_bound = wait_bound
        self._waiters: WaitQueue[None] = WaitQueue(clock, max_waiting)
        self._pressure: list[Callable[[], bool]] = []

    def on_pressure(self, reclaim: Callable[[], bool]) -> None:
        """Call ``reclaim()`` when a caller has to wait for a slot; it returns True if
        it is freeing one (released once that container is gone)."""
        self._pressure.append(reclaim)

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now (``/stats``' ``Queue``)."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting at most ``wait_bound`` s. Raise ``Overloaded``."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = self._waiters.wait(self._wait_bound)  # Overloaded when full
        try:
            for reclaim in self._pressure:
                if reclaim():
                    break
        except Exception:  # a bug in a hook must not strand this waiter in the queue
            log.failure("Freeing a container slot failed")
        try:
            await waiter  # Overloaded after wait_bound
        except CancelledError:
            raise Overloaded(retry_after=1) from None

    def release(self) -> None:
        """Give a slot back (to the longest waiter, if any)."""
        if not self._waiters.give(None):  # else the slot passes on; in_use is unchanged
            self.in_use -= 1
