"""Node endpoints: ``/``, ``/version``, ``/stats``, ``/health``, ``/metrics``."""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ironfunctions import __version__
from ironfunctions.api.http import json_response
from ironfunctions.metrics import IMetrics

log = Logger()

# A check is down when it raises, answers False, or has not answered within this.
CHECK_TIMEOUT_S = 2.0
PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

HealthCheck = Callable[[], Awaitable[object]]


@attrs.frozen
class HealthChecks:
    """What ``/health`` checks (SPEC §3), in two kinds, because a load balancer acts on
    the answer:

    - ``node``: parts of *this* node (its Docker engine). One down makes ``/health``
      503, so the balancer takes this node out.
    - ``shared``: backends every node shares (datastore, queue). Down, they make
      ``/health`` 200 ``degraded``: every node sees the same outage, and taking them all
      out would turn a partial outage into a full one (fail open).

    A check is an async callable that is down when it raises or returns ``False``;
    each gets ``timeout`` seconds, after which it counts as down and is cancelled.
    ``started`` is false until the node has started (its datastore and queue have
    answered once): a node that answers 503 to ``/v1`` and ``/r`` meanwhile must not
    get traffic, so ``/health`` is 503 ``starting`` too. ``draining`` gives the reason
    this node is leaving (e.g. ``shutdown``: SIGTERM arrived), empty while it is not:
    then ``/health`` is 503 ``draining`` at once, with no check run (SPEC §9).
    """

    node: Mapping[str, HealthCheck] = attrs.field(factory=dict)
    shared: Mapping[str, HealthCheck] = attrs.field(factory=dict)
    started: Callable[[], bool] = lambda: True
    draining: Callable[[], str] = lambda: ""
    timeout: float = CHECK_TIMEOUT_S


async def _is_up(name: str, check: HealthCheck, clock: IReactorTime, timeout: float) -> bool:
    async def run() -> object:
        return await check()

    d = Deferred.fromCoroutine(run())
    d.addTimeout(timeout, clock)  # on expiry, cancels what the check awaits
    try:
        answer = await d
    except Exception as e:
        log.debug("Health check {check} down: {error!r}", check=name, error=e)
        return False
    return answer is not False


async def check_health(checks: HealthChecks, clock: IReactorTime) -> tuple[list[str], list[str]]:
    """Run every check at once; the names of the node's parts that are down, and of
    the shared backends that are down."""
    kinds = [("node", name, check) for name, check in checks.node.items()]
    kinds += [("shared", name, check) for name, check in checks.shared.items()]
    results = await gatherResults(
        [Deferred.fromCoroutine(_is_up(name, check, clock, checks.timeout)) for _, name, check in kinds],
        consumeErrors=True,
    )
    node_down = [name for (kind, name, _), up in zip(kinds, results) if kind == "node" and not up]
    shared_down = [name for (kind, name, _), up in zip(kinds, results) if kind == "shared" and not up]
    return node_down, shared_down


async def report_backends(checks: HealthChecks, clock: IReactorTime, metrics: IMetrics) -> None:
    """Set the gauge ``<name>.up`` (1 up, 0 down) of each shared backend, for alerts on
    ``degraded`` (``ironfunctions_queue_up == 0``): ``/health`` stays 200 then, so a
    balancer's check does not tell anyone (docs/operating/outages.md)."""
    _, shared_down = await check_health(attrs.evolve(checks, node={}), clock)
    for name in checks.shared:
        metrics.gauge(f"{name}.up", 0 if name in shared_down else 1)


def hello(request: IRequest) -> bytes:
    return json_response(request, {"goto": "https://github.com/iron-io/functions", "hello": "world!"})


def version(request: IRequest) -> bytes:
    return json_response(request, {"version": __version__})


async def health(request: IRequest, checks: HealthChecks, clock: IReactorTime) -> bytes:
    """503 naming what is down when a part of this node is (or ``starting``); 200
    ``degraded`` listing the shared backends that are down; 200 ``ok`` otherwise.
    503 ``draining`` before all that while the node is leaving."""
    reason = checks.draining()
    if reason:
        request.setHeader(b"retry-after", b"1")
        return json_response(
            request,
            {"status": "draining", "reason": reason, "error": {"message": f"draining: {reason}"}},
            status=503,
        )
    node_down, shared_down = await check_health(checks, clock)
    if not checks.started():
        node_down.insert(0, "starting")
    if node_down:
        request.setHeader(b"retry-after", b"1")
        return json_response(
            request,
            {
                "status": "unavailable",
                "down": node_down + shared_down,
                "error": {"message": "unavailable: " + ", ".join(node_down)},
            },
            status=503,
        )
    if shared_down:
        return json_response(request, {"status": "degraded", "down": shared_down})
    return json_response(request, {"status": "ok"})


# ``/stats``' figures: a mapping at once (one process), or later (a worker asks its parent
# for the whole node's, ``workers/views.py``).
StatsSource = Callable[[], Mapping[str, int] | Awaitable[Mapping[str, int]]]


async def stats(request: IRequest, stats: StatsSource) -> bytes:
    figures = stats()
    if not isinstance(figures, Mapping):
        figures = await figures
    return json_response(
        request,
        {k: int(figures.get(k, 0)) for k in ("Queue", "Running", "Complete")},
    )


async def metrics(request: IRequest, exposition: Callable[[], Awaitable[bytes]]) -> bytes:
    """The Prometheus text exposition (``PrometheusMetrics.scrape``)."""
    body = await exposition()
    request.setHeader(b"content-type", PROMETHEUS_CONTENT_TYPE)
    return body
