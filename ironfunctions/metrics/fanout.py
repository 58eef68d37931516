"""``FanoutMetrics``: every figure to several sinks."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from zope.interface import implementer

from ironfunctions.metrics.interface import IMetrics
from ironfunctions.metrics.log import LogMetrics
from ironfunctions.metrics.prometheus import PrometheusMetrics
from ironfunctions.metrics.statsd import StatsdMetrics


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
