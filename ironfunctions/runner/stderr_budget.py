"""How much of a function's stderr may reach the daemon's log (SPEC §8, pure).

A function is a tenant's code: what it writes to stderr goes to its call's own log
(``/v1/apps/{app}/calls/{id}/log``, up to 1 MiB), but only a bounded share of it to
the daemon's log, which every tenant and the operator share:

- at most ``per_call`` lines of each call (100), and, for a hot container between
  calls, ``per_call`` lines per ``period`` (a minute);
- at most ``per_app`` lines per ``period`` for all of an app's calls on this node
  (1,000 a minute).

``per_app`` is the node's: with worker processes (``WORKERS`` > 1) each worker
counts its own calls against its share of it (``workers/shares.py``: 500 lines a
minute each of two workers), so an app's lines in the node's log stay within 1,000
a minute wherever its calls run, with no message between processes per line.

Windows are fixed: one starts at its first use and lasts ``period`` seconds. Time is
the injected ``clock`` (seconds), so the tests drive it.
"""

from __future__ import annotations

from typing import Callable

PER_CALL = 100
PER_APP = 1000
PERIOD_S = 60.0


class Window:
    """At most ``limit`` lines in a window of ``period`` seconds that starts when first
    charged after the previous one ended."""

    __slots__ = ("limit", "period", "start", "used")

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.start = float("-inf")
        self.used = 0

    def expired(self, now: float) -> bool:
        return now >= self.start + self.period

    def available(self, now: float) -> int:
        return self.limit if self.expired(now) else self.limit - self.used

    def charge(self, now: float, lines: int) -> None:
        if self.expired(now):
            self.start, self.used = now, 0
        self.used += lines


class StderrBudget:
    """The node's stderr budget: per call, per idle hot container, per app.

    :param clock: seconds (``reactor.seconds``).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        per_call: int = PER_CALL,
        per_app: int = PER_APP,
        period: float = PERIOD_S,
    ) -> None:
        self._clock = clock
        self.per_call = per_call
        self.per_app = per_app
        self.period = period
        self._apps: dict[str, Window] = {}
        self._swept = clock()

    def call_lines(self, app: str, lines: int) -> int:
        """How many of a call's first ``lines`` lines go to the log (charged to ``app``)."""
        return self._grant(app, min(lines, self.per_call), None)

    def idle_window(self) -> Window:
        """A new hot container's window for what it writes between calls."""
        return Window(self.per_call, self.period)

    def idle_lines(self, app: str, window: Window, lines: int) -> int:
        """How many of ``lines`` written between calls by the hot container that owns
        ``window`` go to the log (charged to both)."""
        return self._grant(app, lines, window)

    def _grant(self, app: str, lines: int, window: Window | None) -> int:
        if lines <= 0:
            return 0
        now = self._clock()
        budget = self._apps.get(app)
        if budget is None:
            self._sweep(now)
            budget = self._apps[app] = Window(self.per_app, self.period)
        granted = min(lines, budget.available(now))
        if window is not None:
            granted = min(granted, window.available(now))
        if granted > 0:
            budget.charge(now, granted)
            if window is not None:
                window.charge(now, granted)
        return granted

    def _sweep(self, now: float) -> None:
        """Forget apps whose window ended (at most once a period), so the table holds
        only apps that wrote stderr lately."""
        if now - self._swept < self.period:
            return
        self._swept = now
        for app in [app for app, window in self._apps.items() if window.expired(now)]:
            del self._apps[app]

    @property
    def apps(self) -> int:
        """Apps with a window (for tests: the table stays bounded)."""
        return len(self._apps)
