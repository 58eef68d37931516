"""``datastore.up`` / ``queue.up``: what to alert on while ``/health`` says ``degraded``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ironfunctions.api.admin import HealthChecks, report_backends
from ironfunctions.errors import QueueUnavailable
from ironfunctions.metrics import MemoryMetrics, PrometheusMetrics


def test_each_shared_backend_gets_an_up_gauge_0_or_1_and_hung_counts_as_down() -> None:
    clock, metrics = Clock(), MemoryMetrics()
    state = {"queue": True}

    async def datastore() -> None:
        await Deferred()  # hangs: down after the check's timeout

    async def queue() -> None:
        if not state["queue"]:
            raise QueueUnavailable()

    docker_checks: list[str] = []

    async def docker() -> None:
        docker_checks.append("checked")  # node checks are /health's, not backend gauges

    checks = HealthChecks(node={"docker": docker}, shared={"datastore": datastore, "queue": queue})
    done = Deferred.fromCoroutine(report_backends(checks, clock, metrics))
    clock.advance(2)
    assert done.called
    assert [(s.name, s.value) for s in metrics.samples] == [("datastore.up", 0), ("queue.up", 1)]
    state["queue"] = False
    metrics.samples.clear()
    done = Deferred.fromCoroutine(report_backends(checks, clock, metrics))
    clock.advance(2)
    assert [(s.name, s.value) for s in metrics.samples] == [("datastore.up", 0), ("queue.up", 0)]
    assert docker_checks == []


def test_up_gauges_are_node_gauges_in_prometheus() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    assert "_up" not in metrics.render()  # not 0 before the first check: that would read as down
    metrics.gauge("queue.up", 0)
    metrics.gauge("datastore.up", 1)
    text = metrics.render()
    assert "ironfunctions_queue_up 0.0" in text and "ironfunctions_datastore_up 1.0" in text
    assert "# HELP ironfunctions_queue_up 1 when the async queue answered" in text
