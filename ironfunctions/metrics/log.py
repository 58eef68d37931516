"""``LogMetrics``: metrics as logfmt log lines ``metric=<name> value=<int> type=<kind>``."""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.logging import logfmt_value
from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics, statsd_names


@implementer(IMetrics)
class LogMetrics:
    """Metrics as log events; ``logging.LogfmtObserver`` prints them as
    ``metric=<name> value=<int> type=<count|gauge|time>`` plus the fields.

    With a ``clock``, the per-call batches (``many``) of the next ``coalesce``
    seconds go out as one log event: at thousands of hot calls a second, a log event
    per call costs more than the call itself. Each line is then stamped with the time
    the event goes out, at most ``coalesce`` seconds late.

    Metric lines are info events: with ``level`` ``warn`` or ``error`` the daemon's
    observer would drop each one after it was made, so none is made (SPEC §6's lines
    exist at ``LOG_LEVEL`` info and debug, as before).
    """

    log = Logger(namespace="ironfunctions.metrics")

    def __init__(self, clock: IReactorTime | None = None, coalesce: float = 0.05, level: str = "info") -> None:
        self._clock = clock
        self._silent = level in ("warn", "error")
        self._coalesce = coalesce
        self._pending: list[str] = []
        # app -> name -> (kind, ("metric=<name> value=", ...), " type=<kind>")
        self._heads: dict[str | None, dict[str, tuple[str, tuple[str, ...], str]]] = {}
        self._fragments: dict[tuple[str, str], str] = {}  # (key, value) -> " key=<logfmt value>"

    def flush(self) -> None:
        """Emit the lines waiting to be coalesced now (also done at daemon stop)."""
        self._flush()

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self.log.info("{count} metric lines", metric_lines=lines, count=len(lines))

    def _emit(self, kind: str, name: str, value: int, fields: dict[str, Any]) -> None:
        if self._silent:
            return
        for metric in statsd_names(name, fields):
            self.log.info(
                "{metric}={value} ({type})",
                metric_event=True, metric=metric, value=int(value), type=kind, **fields,
            )

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self._emit(COUNT, name, value, fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._emit(GAUGE, name, value, fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self._emit(TIME, name, ms, fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """One log event carrying every figure (the observer prints one line each):
        on the hot path one event per call costs far less than ten."""
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        if self._silent:  # ~4 us a call saved, the lines and their flush timer
            return
        if self._clock is None:
            batch = [
                (metric, int(value), kind)
                for kind, name, value in samples
                for metric in statsd_names(name, fields)
            ]
            self.log.info("{count} metrics", metric_batch=batch, count=len(batch), **fields)
            return
        pending = self._pending
        if not pending:
            self._clock.callLater(self._coalesce, self._flush)
        # " key=value" of each field, cached but for call ids (unique by design).
        tail = ""
        fragments = self._fragments
        for key, field in fields.items():
            if type(field) is str and key != "call_id":
                fragment = fragments.get((key, field))
                if fragment is None:
                    if len(fragments) >= 10_000:
                        fragments.clear()
                    fragment = fragments[(key, field)] = f" {key}={logfmt_value(field)}"
                tail += fragment
            else:
                tail += f" {key}={logfmt_value(field)}"
        app = fields.get("app")
        # "metric=<name> value=" per statsd name, cached per app and name: the same few
        # figures of the same few apps, call after call. Apps other than strings (never
        # sent in practice) are not cached: True and 1 would share a dict key.
        if type(app) is str or app is None:
            heads = self._heads.get(app)
            if heads is None:
                if len(self._heads) >= 10_000:
                    self._heads.clear()
                heads = self._heads[app] = {}
        else:
            heads = {}
        append = pending.append
        for kind, name, value in samples:
            head = heads.get(name)
            if head is None or head[0] != kind:
                if len(heads) >= 1_000:
                    heads.clear()
                head = heads[name] = (
                    kind, tuple([f"metric={metric} value=" for metric in statsd_names(name, fields)]), f" type={kind}",
                )
            if type(value) is not int:
                value = int(value)
            rest = f"{value}{head[2]}{tail}"  # the same for the overall and the per-app name
            for before in head[1]:
                append(before + rest)
