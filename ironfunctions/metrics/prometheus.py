"""``PrometheusMetrics``: the figures for ``GET /metrics``."""

from __future__ import annotations

import re
from typing import Any, Sequence

from zope.interface import implementer

from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics

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
