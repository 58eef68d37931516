"""One logfmt line per log event, for journald and log shippers.

``time=2026-11-28T08:52:01.123Z level=info msg="Ran myapp/hello" app=myapp call_id=...``

Metric events (emitted by ``metrics.LogMetrics``) print as
``time=... level=info metric=run.requests value=1 type=count app=myapp``, the keys
logspout-statsd parses. Select with ``twistd --logger=ironfunctions.logging.observer``;
the plugin installs it by default.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Callable

from twisted.logger import FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate
from twisted.logger import formatEvent
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_LEVEL_NAMES = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}

# Keys of Twisted's own (new and legacy) events that are bookkeeping, not data.
_INTERNAL = frozenset(
    {"message", "format", "isError", "system", "time", "why", "failure", "printed", "factory",
     "protocol", "metric_event", "self", "request"}
)
_METRIC_KEYS = ("metric", "value", "type")
_BATCH_KEYS = frozenset({"metric_batch", "count"})


def logfmt_value(value: Any) -> str:
    """A logfmt value: bare when safe, else double-quoted with escapes."""
    if type(value) is str:  # the common case first: a field of a log line or metric
        text = value
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, (int, float)):
        return str(value)
    else:
        text = str(value)
    # C-speed tests, not a generator over the characters: this runs for every field of
    # every log line.
    printable = text.isprintable()
    if text and printable and " " not in text and "=" not in text and '"' not in text and "\\" not in text:
        return text
    if printable:  # only spaces, quotes, "=" or backslashes: the chain is the fastest
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    else:
        # Control characters never reach the log raw (SPEC §8): a function's stderr or a
        # client's bytes could otherwise move a terminal's cursor, hide text behind bidi
        # overrides or forge a second line.
        escaped = text.translate(_ESCAPES)
        if not escaped.isprintable():  # other invisible ones: format, private, unassigned
            escaped = "".join(c if c.isprintable() else _escape_char(c) for c in escaped)
    return f'"{escaped}"'


def _escape_char(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# What ``logfmt_value`` escapes in a value that is not printable: quotes and backslashes,
# C0 (with the usual \n \r \t), DEL, C1, and the line separators and bidi controls
# (U+061C, U+200E/F, U+2028..U+202E, U+2066..U+2069) that are invisible in a terminal.
_ESCAPES: dict[int, str] = {
    code: _escape_char(chr(code))
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F),
                 *range(0x2066, 0x206A))
}
_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


_stamp_cache: list[Any] = [-1, ""]  # (second, "YYYY-MM-DDTHH:MM:SS"): one strftime a second


def _timestamp(stamp: float) -> str:
    second = int(stamp)
    if second != _stamp_cache[0]:
        _stamp_cache[0] = second
        _stamp_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"time={_stamp_cache[1]}.{int(stamp * 1000) % 1000:03d}Z"


def _fields(event: dict[str, Any], skip: frozenset[str] | set[str]) -> list[str]:
    return [
        f"{key}={logfmt_value(value)}"
        for key, value in event.items()
        if not key.startswith("log_") and key not in _INTERNAL and key not in skip
        and isinstance(value, (str, int, float, bool))
    ]


def format_logfmt(event: dict[str, Any], tag: str = "") -> str:
    """Render one event as logfmt: one line (without the final newline), or, for a
    batch of metrics (``metrics.LogMetrics.many``), one line per metric. ``tag``
    (e.g. ``" worker=1"``) follows the level on every line."""
    stamp = event.get("log_time") or time.time()
    head = _timestamp(stamp) + " level=" + _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "info") + tag
    lines = event.get("metric_lines")
    if lines is not None:  # already rendered by metrics.LogMetrics
        if not lines:
            return ""
        # One join that puts the head before every line, rather than a string per line.
        head += " "
        return head + ("\n" + head).join(lines)
    batch = event.get("metric_batch")
    if batch is not None:
        tail = " ".join(_fields(event, _BATCH_KEYS))
        tail = " " + tail if tail else ""
        return "\n".join(
            f"{head} metric={metric} value={value} type={kind}{tail}" for metric, value, kind in batch
        )
    parts = [head]
    if event.get("metric_event"):
        parts.extend(f"{k}={logfmt_value(event[k])}" for k in _METRIC_KEYS)
        skip: frozenset[str] = frozenset(_METRIC_KEYS)
    else:
        parts.append("msg=" + logfmt_value(formatEvent(event)))
        skip = frozenset()
        failure = event.get("log_failure")
        if failure is not None:
            parts.append("error=" + logfmt_value(failure.getErrorMessage()))
            parts.append("traceback=" + logfmt_value(failure.getTraceback()))
    parts.extend(_fields(event, skip))
    return " ".join(parts)


@implementer(ILogObserver)
class LogfmtObserver:
    """Write each event as one logfmt line to a text stream; ``worker``: the worker
    process writing (``WORKERS`` > 1), named on every line."""

    def __init__(self, out: IO[str], worker: int | None = None) -> None:
        self._out = out
        self._tag = "" if worker is None else f" worker={worker}"

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            line = format_logfmt(event, self._tag)
        except Exception as e:  # a bad event must never break logging
            line = f"level=error msg={logfmt_value('unformattable log event: ' + repr(e))}"
        self._out.write(line + "\n")
        self._out.flush()


def make_observer(level: str = "info", out: IO[str] | None = None, worker: int | None = None) -> ILogObserver:
    """A logfmt observer that drops events below ``level`` (``worker``: see
    ``LogfmtObserver``)."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return FilteringLogObserver(LogfmtObserver(out or sys.stdout, worker), [predicate])


def observer() -> ILogObserver:
    """Factory for ``twistd --logger=ironfunctions.logging.observer`` (level from LOG_LEVEL)."""
    level = os.environ.get("LOG_LEVEL", "info").strip().lower()
    level = "warn" if level == "warning" else level
    return make_observer(level if level in LEVELS else "info")


ObserverFactory = Callable[[], ILogObserver]
