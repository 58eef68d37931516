"""``IMetrics``, the metric kinds, and statsd's per-app names (shared by the sinks)."""

from __future__ import annotations

from typing import Any, Sequence

from zope.interface import Interface

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
