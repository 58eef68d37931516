"""Outage-style rate-limited warnings: one line when a failure starts, a count at most
every ``interval`` seconds while it goes on, one line when it ends.

During a backend outage the code that meets it retries (the recorder every 0.2 s, each
async worker every second, the node gauges every 5 s): a warning per retry turns a
minute's outage into hundreds of identical lines, and the one line that matters (since
when, how many, when it ended) gets lost among them (issue 13). ``Outage`` decides
what to say (pure: it takes ``now``); ``OutageLog`` says it through a ``Logger``.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

DEFAULT_INTERVAL_S = 60.0

STARTED, ONGOING, ENDED = "started", "ongoing", "ended"


@attrs.frozen
class Report:
    """What to log now about an outage.

    :ivar kind: ``started`` (the first failure), ``ongoing`` (failures went on for
        another interval) or ``ended`` (the first success after failures).
    :ivar failures: failures since the previous line (the first one for ``started``).
    :ivar total: failures since the outage started.
    :ivar seconds: seconds since the outage started (integer).
    """

    kind: str
    failures: int
    total: int
    seconds: int


@attrs.define
class Outage:
    """Counts the failures of one recurring operation and says when to log them."""

    interval: float = DEFAULT_INTERVAL_S
    _since: float | None = None  # when the outage started; None: no outage
    _last_line: float = 0.0
    _total: int = 0
    _unreported: int = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, now: float) -> Report | None:
        """Count one failure at ``now``; return the line to log, if one is due."""
        self._total += 1
        self._unreported += 1
        if self._since is None:
            self._since = self._last_line = now
            self._unreported = 0
            return Report(STARTED, 1, 1, 0)
        if now - self._last_line >= self.interval:
            report = Report(ONGOING, self._unreported, self._total, int(now - self._since))
            self._last_line = now
            self._unreported = 0
            return report
        return None

    def recovered(self, now: float) -> Report | None:
        """The operation worked at ``now``: end the outage, if there was one."""
        if self._since is None:
            return None
        report = Report(ENDED, self._unreported, self._total, int(now - self._since))
        self._since = None
        self._total = self._unreported = 0
        return report


class OutageLog:
    """Logs one recurring failure outage-style through ``log``.

    Each message is a format string; besides the fields given to ``failed`` /
    ``recovered`` it may use ``{failures}`` (since the previous line), ``{total}`` and
    ``{seconds}`` (since the outage started). ``started`` and ``ongoing`` are warnings,
    ``ended`` is info.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, started: str, ongoing: str, ended: str,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._log = log
        self._clock = clock
        self._formats = {STARTED: started, ONGOING: ongoing, ENDED: ended}
        self._outage = Outage(interval)

    @property
    def ongoing(self) -> bool:
        return self._outage.ongoing

    def failed(self, **fields: Any) -> None:
        """One more failure (``fields``: e.g. the error); logs when a line is due."""
        self._emit(self._outage.failed(self._clock.seconds()), fields)

    def recovered(self, **fields: Any) -> None:
        """The operation worked: logs the end of the outage, if there was one."""
        self._emit(self._outage.recovered(self._clock.seconds()), fields)

    def _emit(self, report: Report | None, fields: dict[str, Any]) -> None:
        if report is None:
            return
        emit = self._log.info if report.kind == ENDED else self._log.warn
        emit(self._formats[report.kind], outage=report.kind, failures=report.failures,
             total=report.total, seconds=report.seconds, **fields)
