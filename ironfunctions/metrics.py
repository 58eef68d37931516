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
from typing import Any, Iterable, Sequence

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
        self._heads: dict[tuple[str, str, Any], list[tuple[str, str]]] = {}

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
        if self._clock is None:
            batch = [
                (metric, int(value), kind)
                for kind, name, value in samples
                for metric in statsd_names(name, fields)
            ]
            self.log.info("{count} metrics", metric_batch=batch, count=len(batch), **fields)
            return
        tail = "".join(f" {key}={logfmt_value(value)}" for key, value in fields.items())
        if not self._pending:
            self._clock.callLater(self._coalesce, self._flush)
        app = fields.get("app")
        heads = self._heads
        append = self._pending.append
        for kind, name, value in samples:
            key = (kind, name, app)
            pair = heads.get(key)
            if pair is None:  # "metric=<name> ... type=<kind>" around the value, per name and app
                if len(heads) > 10_000:
                    heads.clear()
                pair = heads[key] = [
                    (f"metric={metric} value=", f" type={kind}") for metric in statsd_names(name, fields)
                ]
            for before, after in pair:
                append(f"{before}{int(value)}{after}{tail}")


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
        self.many([(kind, name, value)], **fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """One datagram, one metric per line (statsd's multi-metric packets)."""
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

    def _key(self, kind: str, name: str, fields: dict[str, Any]) -> tuple[str, str, str]:
        return (kind, name, str(fields.get("app", "")))

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        series = self._series.setdefault(self._key(COUNT, name, fields), [0])
        series[0] += int(value)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._series[self._key(GAUGE, name, fields)] = [int(value)]

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        series = self._series.setdefault(self._key(TIME, name, fields), [0, 0])
        series[0] += int(ms)
        series[1] += 1

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        app = str(fields.get("app", ""))
        series = self._series
        for kind, name, value in samples:
            key = (kind, name, app)
            if kind == GAUGE:
                series[key] = [int(value)]
            elif kind == COUNT:
                found = series.get(key)
                if found is None:
                    found = series[key] = [0]
                found[0] += int(value)
            else:
                found = series.get(key)
                if found is None:
                    found = series[key] = [0, 0]
                found[0] += int(value)
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
        for sink in self._sinks:
            sink.many(samples, **fields)
