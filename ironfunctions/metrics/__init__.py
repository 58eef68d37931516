"""Metrics: counts, gauges and times (integer ms), to the log, statsd and /metrics.

``IMetrics`` is what the code calls. Per-call figures are reported once with ``app=``
and ``path=`` fields; the statsd-shaped sinks (log lines: ``log.LogMetrics``, UDP:
``statsd.StatsdMetrics``) then emit them under the overall name *and* the per-app name,
as IronFunctions did (``run.requests`` and ``run.<app>.requests``), because statsd has
no tags. Prometheus (``prometheus.PrometheusMetrics``) gets one series with ``app`` and
``path`` labels instead, times as histograms. ``FanoutMetrics`` sends to all of them;
``MemoryMetrics`` records for tests. Names and labels: docs/operating/metrics.md.
"""

from ironfunctions.metrics.fanout import FanoutMetrics
from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics, statsd_names
from ironfunctions.metrics.log import LogMetrics
from ironfunctions.metrics.memory import MemoryMetrics, Sample
from ironfunctions.metrics.prometheus import PrometheusMetrics
from ironfunctions.metrics.statsd import StatsdMetrics

__all__ = [
    "COUNT", "GAUGE", "TIME", "FanoutMetrics", "IMetrics", "LogMetrics", "MemoryMetrics",
    "PrometheusMetrics", "Sample", "StatsdMetrics", "statsd_names",
]
