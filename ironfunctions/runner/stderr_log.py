"""A function's stderr in the daemon's log, within the node's ``StderrBudget`` (SPEC §8).

Each logged line is one event, the line in one field::

    msg="function stderr" line="..." app=myapp path=/hello call_id=01J...

and a call (or an idle hot container's minute) that wrote more than its share gets one
summary instead of the rest::

    msg="function stderr truncated" lines=100000 bytes=1100000 logged=100 truncated=99900 app=... call_id=...

``lines`` counts newlines (a last line without one counts too) in all the function
wrote, ``bytes`` its size, ``logged`` the lines in the log, ``truncated`` the others.
A line longer than ``LINE_MAX`` bytes is cut (ending with ``…``) in the daemon's log;
the call's own log keeps it whole. Only the lines that are logged are ever split:
the rest is counted with ``bytes.count``, so a flood costs the reactor one C-speed
pass over what was kept, not an event per line.
"""

from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.models import CallResult
from ironfunctions.runner.stderr_budget import StderrBudget

LINE_MAX = 1024

log = Logger()


def count_lines(data: bytes) -> int:
    """Lines in ``data``: its newlines, plus one for a last line without a newline."""
    if not data:
        return 0
    newlines = data.count(b"\n")
    return newlines if data.endswith(b"\n") else newlines + 1


def first_lines(data: bytes, n: int) -> list[bytes]:
    """The first ``n`` lines of ``data`` (without their newline); the rest is not split."""
    lines: list[bytes] = []
    start, end = 0, len(data)
    while len(lines) < n and start < end:
        stop = data.find(b"\n", start)
        if stop < 0:
            lines.append(data[start:])
            break
        lines.append(data[start:stop])
        start = stop + 1
    return lines


def line_text(line: bytes) -> str:
    """One stderr line as the log shows it: CR of a CRLF dropped, cut at ``LINE_MAX``."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > LINE_MAX:
        return line[:LINE_MAX].decode("utf-8", "replace") + "…"
    return line.decode("utf-8", "replace")


class StderrLog:
    """Logs functions' stderr for this node; one instance per node, shared by the agent
    (a call's stderr when it ends) and the hot containers (stderr between calls), so
    that an app's budget counts all of its calls."""

    def __init__(self, clock: IReactorTime, budget: StderrBudget | None = None) -> None:
        self.budget = budget if budget is not None else StderrBudget(clock.seconds)
        self._clock = clock

    def call(self, result: CallResult, app: str, path: str, call_id: str) -> None:
        """Log what a call wrote to stderr (``result.stderr`` and what was counted but
        not kept beyond it), within the budget."""
        stderr = result.stderr
        kept = count_lines(stderr)
        lines = kept + result.stderr_lost_lines
        if result.stderr_lost_bytes and not stderr.endswith(b"\n"):
            lines = max(kept, lines - 1)  # the line cut in two counts once
        if not lines:
            return
        granted = self.budget.call_lines(app, kept)
        for line in first_lines(stderr, granted):
            log.info("function stderr", line=line_text(line), app=app, path=path, call_id=call_id)
        if granted < lines:
            _summary(lines, len(stderr) + result.stderr_lost_bytes, granted,
                     {"app": app, "path": path, "call_id": call_id})

    def idle(self, app: str) -> IdleStderr:
        """A tally for what one hot container of ``app`` writes between calls."""
        return IdleStderr(self, app)

    def now(self) -> float:
        return self._clock.seconds()


class IdleStderr:
    """What one hot container writes between calls: at most ``per_call`` lines a minute
    (and within its app's budget) reach the log, then one summary per minute that
    dropped lines, written when the container next takes a call, writes after the
    minute, or goes (``flush``)."""

    def __init__(self, owner: StderrLog, app: str) -> None:
        self._owner = owner
        self._app = app
        self._window = owner.budget.idle_window()
        self._newlines = self._bytes = self._logged = 0
        self._open = False  # the last chunk ended inside a line

    def feed(self, data: bytes, fields: Mapping[str, str]) -> None:
        """``data`` written between calls; ``fields`` go on its log lines."""
        if self._bytes and self._window.expired(self._owner.now()):
            self.flush(lambda: fields)
        granted = self._owner.budget.idle_lines(self._app, self._window, count_lines(data))
        for line in first_lines(data, granted):
            log.info("function stderr", line=line_text(line), **fields)
        # Chunks end anywhere: a line cut between two counts once, by its newline.
        self._newlines += data.count(b"\n")
        self._open = not data.endswith(b"\n")
        self._bytes += len(data)
        self._logged += granted

    def flush(self, fields: Callable[[], Mapping[str, str]]) -> None:
        """Write the summary of what was dropped since the last one, if anything was
        (``fields()`` its fields). Cheap when nothing was written: it runs per call."""
        if not self._bytes:
            return
        lines = self._newlines + self._open
        if lines > self._logged:
            _summary(lines, self._bytes, self._logged, fields())
        self._newlines = self._bytes = self._logged = 0
        self._open = False


def _summary(lines: int, size: int, logged: int, fields: Mapping[str, str]) -> None:
    log.info("function stderr truncated", lines=lines, bytes=size, logged=logged, truncated=lines - logged,
             **fields)
