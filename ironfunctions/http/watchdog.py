"""``Watchdog``: the one node-wide tick that holds every client connection to its
``Deadline`` (``http/deadlines.py``).

A ``callLater`` per connection, moved on every request, costs a heap operation per
call on the hot path; instead each channel notes its phase, and once a ``interval``
(1 s) this walks the open connections and tells those past their bound
(``Watched.expire``). Bounds are then kept to within a second, which is all a
20 s or 60 s timeout needs. The tick runs only while connections are open. It also
runs the site's periodic work (``on_tick``: the connection cap's alarm).
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ironfunctions.http.deadlines import ClientLimits, Deadline, Verdict

log = Logger()


class Watched(Protocol):
    """A connection the watchdog holds to its deadline."""

    deadline: Deadline

    def expire(self, verdict: Verdict) -> None:
        """The deadline has passed: answer (408) and close, close, or abort."""


class Watchdog:
    """See the module docstring."""

    def __init__(self, clock: IReactorTime, limits: ClientLimits, interval: float = 1.0,
                 on_tick: Callable[[float], None] | None = None) -> None:
        self.clock = clock
        self.limits = limits
        self._interval = interval
        self._on_tick = on_tick
        self._watched: set[Watched] = set()
        self._loop: LoopingCall | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, conn: Watched) -> None:
        self._watched.add(conn)
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: log.failure("The connection watchdog stopped", f))

    def unwatch(self, conn: Watched) -> None:
        self._watched.discard(conn)

    def _tick(self) -> None:
        now = self.clock.seconds()
        limits = self.limits
        for conn in list(self._watched):
            try:
                verdict = conn.deadline.check(now, limits)
                if verdict is not None:
                    conn.expire(verdict)
            except Exception:
                log.failure("Enforcing a connection's deadline failed")
        if self._on_tick is not None:
            try:
                self._on_tick(now)
            except Exception:
                log.failure("The connection watchdog's periodic work failed")
        if not self._watched and self._loop is not None:
            self._loop.stop()
            self._loop = None
