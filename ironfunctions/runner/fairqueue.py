"""Calls waiting for a container slot, one FIFO per app, served fairly (SPEC §8
"Apps share fairly").

``Slots`` (``runner/admission.py``) keeps its waiters here. Each app's calls wait in
their own first-come-first-served line, each for a bounded time (then ``Overloaded``:
503 + Retry-After) and at most ``max_waiting`` of them across all apps. When a slot
frees, ``pop_next`` picks whom it goes to with ``next_app`` (pure): only apps below
their cap may take one, and among those the app holding the fewest slots goes first
(its oldest call), ties to the call that has waited the longest. So a flooding app,
whose calls queue up by the hundred, cannot keep a quieter app's call waiting behind
them: the quieter app holds fewer containers and its call is served first.

Each waiter also names what it waits for (``route``: the hot route whose pool would
start a container with the slot, None for a cold call), so that ``Slots`` can ask its
pressure hooks to free a slot for each kind of waiting call (``requests``).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ironfunctions.errors import Overloaded

__all__ = ["FairWaitQueue", "Handoff", "RouteKey", "next_app"]

RouteKey = tuple[str, str]  # a route's (app, path)


def next_app(heads: Mapping[str, int], held: Callable[[str], int], cap: int) -> str | None:
    """The app whose oldest waiting call gets a freed slot (pure), or None.

    :param heads: app -> the ticket (arrival order) of its oldest waiting call.
    :param held: slots an app holds now.
    :param cap: slots an app may hold (``APP_MAX_CONCURRENCY``); apps at it are skipped.
    """
    best: tuple[int, int] | None = None
    chosen = None
    for app, ticket in heads.items():
        holds = held(app)
        if holds >= cap:
            continue
        key = (holds, ticket)
        if best is None or key < best:
            best, chosen = key, app
    return chosen


class _Waiter:
    """One call waiting: its app, its place in line, what it waits for (see the module
    doc), its Deferred and deadline timer."""

    __slots__ = ("app", "ticket", "route", "deferred", "timer")

    def __init__(self, app: str, ticket: int, route: RouteKey | None, deferred: Deferred[None]) -> None:
        self.app = app
        self.ticket = ticket
        self.route = route
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


class Handoff:
    """A waiter taken out of the queue: account its slot to ``app``, then ``fire()``
    (which resumes the waiting call at once, so the accounting must come first)."""

    __slots__ = ("app", "_waiter")

    def __init__(self, waiter: _Waiter) -> None:
        self.app = waiter.app
        self._waiter = waiter

    def fire(self) -> None:
        self._waiter.deferred.callback(None)


class FairWaitQueue:
    """Calls waiting for a slot, one FIFO per app (see the module doc).

    :param clock: times each waiter's deadline.
    :param max_waiting: calls that may wait at once, all apps together.
    """

    def __init__(self, clock: IReactorTime, max_waiting: int) -> None:
        self._clock = clock
        self._max_waiting = max_waiting
        self._lines: dict[str, deque[_Waiter]] = {}  # only apps with a waiting call
        self._count = 0
        self._tickets = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The apps that have calls waiting."""
        return iter(self._lines)

    def waiting_of(self, app: str) -> int:
        line = self._lines.get(app)
        return 0 if line is None else len(line)

    def wait(self, app: str, timeout: float, route: RouteKey | None = None) -> Deferred[None]:
        """Join ``app``'s line for at most ``timeout`` seconds, for ``route`` (see the
        module doc). The Deferred fires when a slot is handed over, fails with
        ``Overloaded`` after ``timeout``; cancelling it leaves the line. Raise
        ``Overloaded`` when ``max_waiting`` calls wait."""
        if self._count >= self._max_waiting:
            raise Overloaded(retry_after=max(1, int(timeout)))
        self._tickets += 1
        waiter = _Waiter(app, self._tickets, route, Deferred(self._cancelled))
        line = self._lines.get(app)
        if line is None:
            line = self._lines[app] = deque()
        line.append(waiter)
        self._count += 1
        waiter.timer = self._clock.callLater(timeout, self._expired, waiter)
        return waiter.deferred

    def requests(self) -> list[tuple[str, RouteKey | None]]:
        """The distinct (app, route) the waiting calls wait for, each app's in the
        order of its line (calls waiting alike need to be asked for once)."""
        seen: dict[tuple[str, RouteKey | None], None] = {}
        for app, line in self._lines.items():
            for waiter in line:
                seen[app, waiter.route] = None
        return list(seen)

    def pop_next(self, held: Callable[[str], int], cap: int) -> Handoff | None:
        """Take out the call a freed slot goes to (``next_app``); None if no waiting
        call may have it (none waits, or every waiting app is at ``cap``)."""
        app = next_app({a: line[0].ticket for a, line in self._lines.items()}, held, cap)
        if app is None:
            return None
        line = self._lines[app]
        waiter = line.popleft()
        self._left(waiter, line)
        return Handoff(waiter)

    def _left(self, waiter: _Waiter, line: deque[_Waiter]) -> None:
        self._count -= 1
        if not line:
            del self._lines[waiter.app]
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None

    def _remove(self, waiter: _Waiter) -> bool:
        line = self._lines.get(waiter.app)
        if line is None:
            return False
        try:
            line.remove(waiter)
        except ValueError:
            return False  # already served
        self._left(waiter, line)
        return True

    def _expired(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if self._remove(waiter):
            waiter.deferred.errback(Failure(Overloaded(retry_after=1)))

    def _cancelled(self, deferred: Deferred[None]) -> None:
        """The caller gave up: its place goes (its Deferred fails with CancelledError)."""
        for line in self._lines.values():
            for waiter in line:
                if waiter.deferred is deferred:
                    self._remove(waiter)
                    return
