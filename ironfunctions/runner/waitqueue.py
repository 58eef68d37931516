"""A FIFO of callers waiting for something scarce, each for a bounded time.

A call waiting for a hot container of its route (``hot_pool.RoutePool``) waits in
one; a call waiting for a container slot (``admission.Slots``) waits in its app's line
of a ``fairqueue.FairWaitQueue``, which has the same rules per app. A waiter joins at
the end and is served first come, first served; it leaves early when it waits longer than its timeout (it then fails with
``Overloaded``, which the API answers 503 + Retry-After) or when its caller cancels
the wait. The queue is bounded: when ``max_waiting`` callers already wait, a new one
is refused at once, so the node's memory stays bounded however many clients pile up.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ironfunctions.errors import Overloaded

DEFAULT_MAX_WAITING = 1000  # callers one queue holds (ADMISSION_MAX_WAITING's default)

T = TypeVar("T")


class _Waiter(Generic[T]):
    """One caller in a ``WaitQueue``: its Deferred and its deadline timer."""

    __slots__ = ("deferred", "timer")

    def __init__(self, deferred: Deferred[T]) -> None:
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


class WaitQueue(Generic[T]):
    """Callers waiting for a ``T``, served in FIFO order (see the module doc).

    :param clock: times each waiter's deadline.
    :param max_waiting: callers that may wait at once; ``wait`` refuses more.
    :param expired_message: the ``Overloaded`` message a waiter that waited too long
        fails with (``None``: ``Overloaded``'s own).
    :param on_leave: called after a waiter left early (expired or cancelled), e.g. to
        notice that nothing waits any more.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_waiting: int = DEFAULT_MAX_WAITING,
        expired_message: str | None = None,
        on_leave: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._max_waiting = max_waiting
        self._expired_message = expired_message
        self._on_leave = on_leave
        self._waiters: deque[_Waiter[T]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def wait(self, timeout: float) -> Deferred[T]:
        """Join the queue for at most ``timeout`` seconds. The Deferred fires with what
        ``give`` hands this caller, or fails with ``Overloaded`` after ``timeout``, or
        with what ``fail_oldest`` passes; cancelling it leaves the queue.
        Raise ``Overloaded`` (retry after the timeout) when the queue is full."""
        if len(self._waiters) >= self._max_waiting:
            raise Overloaded(retry_after=max(1, int(timeout)))
        # Cancelling the wait gives up the place in the queue: what the queue hands
        # out must not go to a caller that is gone.
        waiter: _Waiter[T] = _Waiter(Deferred(self._cancelled))
        self._waiters.append(waiter)
        waiter.timer = self._clock.callLater(timeout, self._expired, waiter)
        return waiter.deferred

    def give(self, value: T) -> bool:
        """Hand ``value`` to the caller waiting the longest; False if none waits."""
        waiters = self._waiters
        if not waiters:  # the common case on a busy hot route: checked inline, it is per call
            return False
        waiter = waiters.popleft()
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        waiter.deferred.callback(value)
        return True

    def fail_oldest(self, error: Exception) -> bool:
        """Fail the caller waiting the longest with ``error``; False if none waits."""
        waiter = self._pop()
        if waiter is None:
            return False
        waiter.deferred.errback(Failure(error))
        return True

    def _pop(self) -> _Waiter[T] | None:
        if not self._waiters:
            return None
        waiter = self._waiters.popleft()
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        return waiter

    def _expired(self, waiter: _Waiter[T]) -> None:
        """``waiter`` waited its whole timeout: it fails with ``Overloaded``."""
        waiter.timer = None
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return  # already served
        waiter.deferred.errback(Failure(Overloaded(self._expired_message, retry_after=1)))
        if self._on_leave is not None:
            self._on_leave()

    def _cancelled(self, deferred: Deferred[T]) -> None:
        """The caller cancelled its wait: it leaves the queue (its Deferred then fails
        with ``CancelledError``)."""
        for waiter in self._waiters:
            if waiter.deferred is deferred:
                break
        else:
            return  # already served
        self._waiters.remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        if self._on_leave is not None:
            self._on_leave()
