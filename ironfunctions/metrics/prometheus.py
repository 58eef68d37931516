"""``PrometheusMetrics``: the figures for ``GET /metrics``, through ``prometheus_client``.

The library owns the data structures and the text exposition; this module owns what is
ours: the names, the labels and the buckets (docs/operating/metrics.md lists them).

- A count ``a.b`` is the counter ``ironfunctions_a_b_total{app,path}``.
- A time ``a.b`` (integer ms) is the histogram ``ironfunctions_a_b_seconds{app,path}``
  (``_bucket{le=...}``, ``_sum``, ``_count``), in seconds as Prometheus expects, so
  ``histogram_quantile(0.99, sum by (le) (rate(ironfunctions_run_wait_time_seconds_bucket[5m])))``
  reads the p99 wait, the seed's scaling signal.
- A gauge keeps its last value. A figure a node reports node-wide and per route gets
  one family each, as a family has one label set: node-wide ``ironfunctions_a_b``,
  per route ``ironfunctions_a_b_route{app,path}``, per app ``ironfunctions_a_b_app{app}``.

Counters and histograms carry ``app`` and ``path`` (empty when the figure has none,
which Prometheus reads as no label); call ids are never labels. The node gauges are
declared up front, so a fresh node's first scrape has them at 0, and the registry (one
per object: no global default registry) also holds the process, platform and GC
collectors.

A node of worker processes (``WORKERS`` > 1, issue 15) shares its figures through
prometheus_client's multiprocess mode (``multiprocess_dir``, ``metrics/shared.py``):
each process writes its values to files of its own in the node's directory, and any
worker's ``/metrics`` reads them all, so the node answers as one. Counters and
histograms add up; each gauge combines as ``GAUGE_MODES`` says.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics
from ironfunctions.metrics.shared import share_values

NAMESPACE = "ironfunctions"

# Upper bounds (seconds) of the wait, start and exec time histograms. FaaS latencies
# span four orders of magnitude: a hot call's exec time and an idle node's wait are a
# millisecond or two, a cold start is 0.1-1 s, a busy node's wait grows into seconds
# (ADMISSION_WAIT is 10 s), and a function runs up to its timeout (30 s by default, 60 s
# at most in practice). Roughly 1-2.5-5 per decade from 1 ms to 10 s, then 30 s and
# 60 s; beyond 60 s only +Inf. 15 buckets (+Inf) per series keeps a route's histograms
# cheap while p99 stays within one bucket's width.
TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

# Node gauges a scrape must show from a fresh node's first one (0 until reported).
NODE_GAUGES = {
    "containers.running": "Containers this node runs now, cold and hot",
    "hot.containers": "Hot containers on this node",
    "queue.depth": "Async calls waiting in the queue, as this node last read it",
    "connections": "Client connections open on this node",
}

HELP = {
    "run.requests": "Calls run on this node",
    "run.succeeded": "Calls that succeeded",
    "run.error": "Calls that failed (function error or failure to run)",
    "run.timeout": "Calls that timed out",
    "run.cancelled": "Calls cancelled while running",
    "run.wait_time": "Time a call waited for a container slot before starting (the scaling signal)",
    "run.start_time": "Time to start a call's container, or to hand the call to a hot one",
    "run.exec_time": "Time the function ran",
    "queue.wait_time": "Time an async call waited in the queue before running",
    "async.submitted": "Async calls accepted",
    "async.dead": "Async calls that ran out of attempts",
    "reconciler.requeued": "Async calls queued again from the datastore after the queue lost them",
    "calls.dropped": "Call records dropped because the record buffer was full",
    "calls.logs_dropped": "Call logs dropped (their records kept) because the record buffer was full",
    "routes.stale_served": "Calls served a cached route older than its TTL because the datastore failed",
    "app.throttled": "Calls that waited for a container because their app held APP_MAX_CONCURRENCY",
    "calls.expired": "Finished call records deleted after CALL_RETENTION",
    "hot.containers.route": "Hot containers of one route on this node",
    # Not declared up front: a node that has not checked yet must not read as "down".
    "datastore.up": "1 when the datastore answered this node's last check (every 5 s), 0 when not",
    "queue.up": "1 when the async queue answered this node's last check (every 5 s), 0 when not",
}

# How the processes' values of a gauge make the node's (prometheus_client's
# ``multiprocess_mode``; no effect in a single process). "live": a dead worker's
# values go with it (``shared.mark_process_dead``).
GAUGE_MODES = {
    # Every worker reads the one shared queue: the highest of their last readings (a
    # few seconds apart). Not "mostrecent": a gauge no process has set since it was
    # declared would be missing from a fresh node's first scrape.
    "queue.depth": "livemax",
    # A backend is up for the node only while every process reaches it.
    "datastore.up": "livemin",
    "queue.up": "livemin",
}
# The rest (containers, hot containers, connections) each worker counts of its own:
# the node's figure is the sum.
DEFAULT_GAUGE_MODE = "livesum"

_PROM_NAME = re.compile(r"[^a-zA-Z0-9_]")
_CALL_LABELS = ("app", "path")
_GAUGE_SUFFIX = {(): "", ("app",): "_app", ("app", "path"): "_route", ("path",): "_path"}
_CACHE_LIMIT = 10_000

_Update = Callable[[float], None]
_Family = Counter | Gauge | Histogram


@implementer(IMetrics)
class PrometheusMetrics:
    """Aggregates metrics in its own ``CollectorRegistry`` for ``GET /metrics``.

    The hot path is ``many`` (the figures of each call): per (app, path) it keeps the
    label children's bound ``inc``/``observe``/``set``, so a call costs a dict lookup
    and the library's own update per figure, no object built per call.
    A figure whose name cannot be registered (the same name as a gauge and a counter)
    is dropped and logged once: metric calls never raise.

    :param namespace: the prefix of our metric names.
    :param process_metrics: also register the process, platform and GC collectors
        (``process_*``, ``python_*``) on the registry.
    :param reactor: with ``pool``, where ``scrape`` makes the text: on ``pool`` (the
        daemon gives it one thread of its own, not the reactor's pool that DNS lookups
        share); inline without them (tests).
    :param pool: the thread pool of ``scrape``.
    :param multiprocess_dir: the node's directory of shared figures (``WORKERS`` > 1):
        this process's values go to files there, and ``exposition`` reads every
        process's. The process, platform and GC collectors are left out there: they
        would describe only the process that happens to answer.
    """

    log = Logger(namespace="ironfunctions.metrics")

    def __init__(
        self, namespace: str = NAMESPACE, process_metrics: bool = True, reactor: Any = None,
        pool: ThreadPool | None = None, multiprocess_dir: str | None = None,
    ) -> None:
        self._shared: CollectorRegistry | None = None
        if multiprocess_dir is not None:
            share_values(multiprocess_dir)  # before the first metric of this object
            self._shared = CollectorRegistry()
            MultiProcessCollector(self._shared, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            process_metrics = False
        self.registry = CollectorRegistry()
        self._reactor = reactor
        self._pool = pool
        self._scrapers: list[Deferred[bytes]] | None = None  # waiting for the text in the making
        self._namespace = namespace
        self._families: dict[tuple[str, str, tuple[str, ...]], _Family | None] = {}
        # (app, path) -> name -> (kind, update); None for app/path means "absent".
        self._updates: dict[tuple[str | None, str | None], dict[str, tuple[str, _Update]]] = {}
        for name in NODE_GAUGES:
            self._family(GAUGE, name, ())
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4): with ``multiprocess_dir``,
        of every process of the node."""
        return generate_latest(self._shared if self._shared is not None else self.registry)

    def render(self) -> str:
        """``exposition`` as text."""
        return self.exposition().decode("utf-8")

    def scrape(self) -> Deferred[bytes]:
        """``exposition`` for ``GET /metrics``, made off the reactor thread: with
        histograms per route it takes ~0.5 ms per route (measured: 45 ms for 100
        routes, 0.5 s for 1,000, twice that on a busy host), which would stall every
        call in flight. prometheus_client's metrics are thread-safe.
        One text is made at a time; scrapes meanwhile share it."""
        waiter: Deferred[bytes] = Deferred()
        if self._reactor is None or self._pool is None:
            waiter.callback(self.exposition())
            return waiter
        if self._scrapers is None:
            self._scrapers = []
            making = deferToThreadPool(self._reactor, self._pool, self.exposition)
            making.addBoth(self._made)
        self._scrapers.append(waiter)
        return waiter

    def _made(self, result: bytes | Failure) -> None:
        scrapers, self._scrapers = self._scrapers or [], None
        for waiter in scrapers:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- IMetrics

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self._many(((COUNT, name, value),), fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._many(((GAUGE, name, value),), fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self._many(((TIME, name, ms),), fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        app = fields.get("app")
        path = fields.get("path")
        if app is not None and type(app) is not str:
            app = str(app)
        if path is not None and type(path) is not str:
            path = str(path)
        key = (app or None, path or None)
        updates = self._updates.get(key)
        if updates is None:
            if len(self._updates) >= _CACHE_LIMIT:
                self._updates.clear()  # only the cache: the series stay in the registry
            updates = self._updates[key] = {}
        for kind, name, value in samples:
            entry = updates.get(name)
            if entry is None or entry[0] != kind:
                entry = updates[name] = (kind, self._update_of(kind, name, key))
            if type(value) is not int:
                value = int(value)
            try:
                entry[1](value / 1000 if kind == TIME else value)
            except ValueError:
                pass  # a negative count: prometheus_client refuses it, and metrics never raise

    # -- families and children

    def _update_of(self, kind: str, name: str, key: tuple[str | None, str | None]) -> _Update:
        """The bound update of the series ``name`` with the labels of ``key``."""
        app, path = key
        if kind == GAUGE:
            labelnames = tuple(label for label, v in zip(_CALL_LABELS, key) if v is not None)
            values = [v for v in key if v is not None]
        else:
            labelnames, values = _CALL_LABELS, [app or "", path or ""]
        family = self._family(kind, name, labelnames)
        if family is None:
            return _ignore
        child = family.labels(*values) if labelnames else family
        if isinstance(child, Counter):
            return child.inc
        if isinstance(child, Gauge):
            return child.set
        return child.observe

    def _family(self, kind: str, name: str, labelnames: tuple[str, ...]) -> _Family | None:
        key = (kind, name, labelnames)
        if key in self._families:
            return self._families[key]
        base = f"{self._namespace}_{_PROM_NAME.sub('_', name)}"
        family: _Family | None
        try:
            if kind == COUNT:
                family = Counter(base, HELP.get(name, name), labelnames, registry=self.registry)
            elif kind == GAUGE:
                suffix = _GAUGE_SUFFIX.get(labelnames, "_" + "_".join(labelnames))
                documentation = (NODE_GAUGES.get(name) or HELP.get(name) if not labelnames
                                 else HELP.get(name + suffix.replace("_", ".")))
                family = Gauge(base + suffix, documentation or name, labelnames, registry=self.registry,
                               multiprocess_mode=GAUGE_MODES.get(name, DEFAULT_GAUGE_MODE))  # type: ignore[arg-type]
            else:
                family = Histogram(
                    base + "_seconds", HELP.get(name, name) + " (seconds)", labelnames,
                    registry=self.registry, buckets=TIME_BUCKETS,
                )
        except ValueError as e:
            self.log.warn("Metric {metric} ({type}) not exported to Prometheus: {error}",
                          metric=name, type=kind, error=str(e))
            family = None
        self._families[key] = family
        return family


def _ignore(value: float) -> None:
    pass
