"""Metrics: counts, gauges and times (integer ms), to the log, statsd and /metrics.

``IMetrics`` is what the code calls. Per-call figures are reported once with an
``app=`` field; the statsd-shaped sinks (log lines, UDP) then emit them under the
overall name *and* the per-app name, as IronFunctions did (``run.requests`` and
``run.<app>.requests``), because statsd has no tags. Prometheus gets one series with an
``app`` label instead.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ironfunctions.logging import logfmt_value

COUNT, GAUGE, TIME = "count", "gauge", "time"


class IMetrics(Interface):
    """A sink for metrics. Calls never raise and never block."""

    def count(name: str, value: int = 1, **fields: Any) -> None:
        """Add ``value`` to the counter ``name``."""

    def gauge(name: str, value: int, **fields: Any) -> None:
        """Set the gauge ``name`` to ``value``."""

    def timing(name: str, ms: int, **fields: Any) -> None:
        """Record a duration of ``ms`` milliseconds under ``name``."""

    def many(samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """Record several ``(kind, name, value)`` figures sharing ``fields`` at once
        (kind: ``count``, ``gauge`` or ``time``): the per-call figures of one call.
        Equivalent to one call per figure, but a sink may handle them together."""


def statsd_names(name: str, fields: dict[str, Any]) -> list[str]:
    """The overall name, plus the per-app one for ``run.*`` figures with an ``app``."""
    app = fields.get("app")
    if app and name.startswith("run."):
        return [name, f"run.{app}.{name[4:]}"]
    return [name]


@implementer(IMetrics)
class LogMetrics:
    """Metrics as log events; ``logging.LogfmtObserver`` prints them as
    ``metric=<name> value=<int> type=<count|gauge|time>`` plus the fields.

    With a ``clock``, the per-call batches (``many``) of the next ``coalesce``
    seconds go out as one log event: at thousands of hot calls a second, a log event
    per call costs more than the call itself. Each line is then stamped with the time
    the event goes out, at most ``coalesce`` seconds late.
    """

    log = Logger(namespace="ironfunctions.metrics")

    def __init__(self, clock: IReactorTime | None = None, coalesce: float = 0.05) -> None:
        self._clock = clock
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


@attrs.frozen
class Sample:
    kind: str
    name: str
    value: int
    fields: dict[str, Any]


@implementer(IMetrics)
class MemoryMetrics:
    """Records every call; for tests (``samples``, ``total(name)``)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self.samples.append(Sample(COUNT, name, int(value), fields))

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self.samples.append(Sample(GAUGE, name, int(value), fields))

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self.samples.append(Sample(TIME, name, int(ms), fields))

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        for kind, name, value in samples:
            self.samples.append(Sample(kind, name, int(value), fields))

    def total(self, name: str, **match: Any) -> int:
        """Sum of the values recorded under ``name`` whose fields include ``match``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.fields.get(k) == v for k, v in match.items())
        )


@implementer(IMetrics)
class StatsdMetrics:
    """Sends statsd datagrams (``name:value|c``, ``|g``, ``|ms``) over UDP.

    A connected non-blocking UDP socket: ``send`` never blocks, and a lost datagram is
    what statsd expects."""

    _TYPES = {COUNT: "c", GAUGE: "g", TIME: "ms"}

    def __init__(self, host: str, port: int, prefix: str = "") -> None:
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._address = (host, port)
        self._prefix = prefix

    def _send(self, kind: str, name: str, value: int, fields: dict[str, Any]) -> None:
        self._many([(kind, name, value)], fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """One datagram, one metric per line (statsd's multi-metric packets)."""
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        data = "\n".join(
            f"{self._prefix}{metric}:{int(value)}|{self._TYPES[kind]}"
            for kind, name, value in samples
            for metric in statsd_names(name, fields)
        ).encode()
        try:
            self._sock.sendto(data, self._address)
        except OSError:
            pass  # statsd is best effort by design

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self._send(COUNT, name, value, fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._send(GAUGE, name, value, fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self._send(TIME, name, ms, fields)


_PROM_NAME = re.compile(r"[^a-zA-Z0-9_]")


@implementer(IMetrics)
class PrometheusMetrics:
    """Aggregates metrics for ``GET /metrics`` (Prometheus text format 0.0.4).

    Counts become counters, gauges keep their last value, times become summaries
    (``_sum`` in ms and ``_count``). The ``app`` field becomes a label; other fields
    (call ids, paths) are dropped to keep cardinality bounded."""

    def __init__(self, namespace: str = "ironfunctions") -> None:
        self._namespace = namespace
        self._series: dict[tuple[str, str, str], list[int]] = {}
        # app -> name -> (kind, the list in _series): what ``many`` updates, call after
        # call, without building a key per figure.
        self._by_app: dict[str, dict[str, tuple[str, list[int]]]] = {}

    def _key(self, kind: str, name: str, fields: dict[str, Any]) -> tuple[str, str, str]:
        return (kind, name, str(fields.get("app", "")))

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        series = self._series.setdefault(self._key(COUNT, name, fields), [0])
        series[0] += int(value)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        # In place: _by_app holds on to the list.
        self._series.setdefault(self._key(GAUGE, name, fields), [0])[0] = int(value)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        series = self._series.setdefault(self._key(TIME, name, fields), [0, 0])
        series[0] += int(ms)
        series[1] += 1

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        app = fields.get("app", "")
        if type(app) is not str:
            app = str(app)
        by_name = self._by_app.get(app)
        if by_name is None:
            by_name = self._by_app[app] = {}
        for kind, name, value in samples:
            if type(value) is not int:
                value = int(value)
            entry = by_name.get(name)
            if entry is None or entry[0] != kind:
                # Counts and gauges hold [value], times [sum, count] (as any other kind).
                empty = [0] if kind == COUNT or kind == GAUGE else [0, 0]
                entry = by_name[name] = (kind, self._series.setdefault((kind, name, app), empty))
            found = entry[1]
            if kind == GAUGE:
                found[0] = value
            elif kind == COUNT:
                found[0] += value
            else:
                found[0] += value
                found[1] += 1

    def render(self) -> str:
        """The exposition text."""
        lines: list[str] = []
        typed: set[str] = set()
        for (kind, name, app), values in sorted(self._series.items()):
            base = f"{self._namespace}_{_PROM_NAME.sub('_', name)}"
            labels = '{app="%s"}' % app.replace("\\", "\\\\").replace('"', '\\"') if app else ""
            if kind == COUNT:
                metric = base + "_total"
                _type_line(lines, typed, metric, "counter")
                lines.append(f"{metric}{labels} {values[0]}")
            elif kind == GAUGE:
                _type_line(lines, typed, base, "gauge")
                lines.append(f"{base}{labels} {values[0]}")
            else:
                metric = base + "_ms"
                _type_line(lines, typed, metric, "summary")
                lines.append(f"{metric}_sum{labels} {values[0]}")
                lines.append(f"{metric}_count{labels} {values[1]}")
        return "\n".join(lines) + "\n"


def _type_line(lines: list[str], typed: set[str], metric: str, kind: str) -> None:
    if metric not in typed:
        typed.add(metric)
        lines.append(f"# TYPE {metric} {kind}")


@implementer(IMetrics)
class FanoutMetrics:
    """Sends every metric to several sinks."""

    def __init__(self, sinks: Iterable[IMetrics]) -> None:
        self._sinks = list(sinks)
        # The sinks of this module take the fields as the dict they are (and only read
        # it): passing ``**fields`` on would build a new dict per sink, per call.
        self._manys: list[_ManyFields] = [
            sink._many if type(sink) in _FIELDS_DICT_SINKS else _many_fields(sink)  # type: ignore[attr-defined]
            for sink in self._sinks
        ]

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        for sink in self._sinks:
            sink.count(name, value, **fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        for sink in self._sinks:
            sink.gauge(name, value, **fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        for sink in self._sinks:
            sink.timing(name, ms, **fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        for many in self._manys:
            many(samples, fields)


_ManyFields = Callable[[Sequence[tuple[str, str, int]], dict[str, Any]], None]
_FIELDS_DICT_SINKS = (LogMetrics, PrometheusMetrics, StatsdMetrics)


def _many_fields(sink: IMetrics) -> _ManyFields:
    """``sink.many`` taking the fields as a dict."""

    def many(samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        sink.many(samples, **fields)

    return many
