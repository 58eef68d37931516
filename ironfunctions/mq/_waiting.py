"""Reservers waiting for work on this node, woken the moment work arrives.

This is what makes ``reserve(timeout=...)`` free of poll-sleep latency: a push on the
same node (or a backend notification) fires every waiter at once; each then retries
its reservation.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")
TryReserve = Callable[[], Awaitable[tuple[Optional[T], Optional[float]]]]


class Waiters:
    """A set of pending waits, each ending at a deadline or at ``wake_all``.

    ``generation`` counts wake-ups, so a reserver can tell whether work arrived while
    it was looking (and look again instead of sleeping through it).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiting: dict[Deferred[None], IDelayedCall] = {}
        self.generation = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, seconds: float) -> Deferred[None]:
        """A Deferred firing with None after ``seconds`` or at the next ``wake_all``,
        whichever comes first. Cancelling it forgets the wait."""

        def cancel(d: Deferred[None]) -> None:
            call = self._waiting.pop(d, None)
            if call is not None and call.active():
                call.cancel()

        d: Deferred[None] = Deferred(cancel)

        def expire() -> None:
            if self._waiting.pop(d, None) is not None:
                d.callback(None)

        self._waiting[d] = self._clock.callLater(max(0.0, seconds), expire)
        return d

    def wake_all(self) -> None:
        """End every pending wait now."""
        self.generation += 1
        waiting, self._waiting = self._waiting, {}
        for d, call in waiting.items():
            if call.active():
                call.cancel()
            d.callback(None)


async def reserve_loop(
    try_once: TryReserve[T],
    waiters: Waiters,
    clock: IReactorTime,
    timeout: float,
    closed: Callable[[], bool],
    poll_interval: float | None = None,
) -> T | None:
    """Call ``try_once`` until it finds something or ``timeout`` seconds pass.

    ``try_once`` returns ``(found, next_due)``: the reservation or None, and how many
    seconds until a hidden item (delayed or leased) becomes visible, if any. Between
    tries, sleep until a wake-up, ``next_due`` or ``poll_interval`` (a fallback for
    wake-ups a backend could not deliver), whichever is first.
    """
    deadline = clock.seconds() + max(0.0, timeout)
    while not closed():
        generation = waiters.generation
        found, next_due = await try_once()
        if found is not None:
            return found
        remaining = deadline - clock.seconds()
        if remaining <= 0 or closed():
            return None
        if waiters.generation != generation:
            continue  # something was pushed while we looked
        wait = remaining
        if next_due is not None:
            wait = min(wait, max(0.0, next_due))
        if poll_interval is not None:
            wait = min(wait, poll_interval)
        await waiters.wait(wait)
    return None
