"""Metric sinks: the coalesced log lines, /metrics and the fan-out give the same figures
as one call per figure, whatever the cached per-app names and field fragments hold."""

import io
from typing import Any, Callable, cast

from twisted.internet.task import Clock
from twisted.logger import Logger

from ironfunctions.metrics import (
    FanoutMetrics,
    IMetrics,
    LogMetrics,
    MemoryMetrics,
    PrometheusMetrics,
    statsd_names,
)
from ironfunctions.logging import logfmt_value, make_observer


def coalesced_lines(batches: list[tuple[list[tuple[str, str, Any]], dict[str, Any]]]) -> list[str]:
    """The lines a LogMetrics with a clock prints for ``batches``, without time and level."""
    out = io.StringIO()
    clock = Clock()
    metrics = LogMetrics(clock)
    metrics.log = Logger(namespace="ironfunctions.metrics", observer=make_observer("info", out))
    for samples, fields in batches:
        metrics.many(samples, **fields)
    clock.advance(0.05)
    return [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]


def expected_lines(batches: list[tuple[list[tuple[str, str, Any]], dict[str, Any]]]) -> list[str]:
    """The same lines built the plain way: one per statsd name, every field after them."""
    lines = []
    for samples, fields in batches:
        tail = "".join(f" {key}={logfmt_value(value)}" for key, value in fields.items())
        for kind, name, value in samples:
            for metric in statsd_names(name, fields):
                lines.append(f"metric={metric} value={int(value)} type={kind}{tail}")
    return lines


def test_coalesced_lines_match_one_line_per_figure_across_apps_kinds_and_odd_fields() -> None:
    call = [("count", "run.requests", 1), ("count", "run.succeeded", 1), ("time", "run.wait_time", 3),
            ("time", "run.start_time", 0), ("time", "run.exec_time", 12)]
    batches: list[tuple[list[tuple[str, str, Any]], dict[str, Any]]] = [
        (call, {"app": "a", "path": "/p", "call_id": "01A"}),
        (call, {"app": "b", "path": "/p", "call_id": "01B"}),
        (call, {"app": "a", "path": "/q", "call_id": "01C"}),
        # the same name as another kind, then back: the cached head follows the kind
        ([("gauge", "run.requests", 4)], {"app": "a"}),
        ([("count", "run.requests", 2.9), ("time", "run.exec_time", True)], {"app": "a"}),
        # values that need quoting, in the cached fields and in call_id
        (call, {"app": "a", "path": "/two words", "call_id": 'q"uote\nx'}),
        (call, {"app": "a", "path": "/two words", "call_id": ""}),
        (call, {"call_id": 7, "path": ["unhashable"], "app": "a"}),
        # no app, an empty one, one that is not a string (True and 1 must not share names)
        (call, {"path": "/p"}),
        (call, {"app": ""}),
        (call, {"app": 1}),
        (call, {"app": True}),
        ([], {"app": "a"}),
    ]
    assert coalesced_lines(batches) == expected_lines(batches)


def test_prometheus_many_gives_what_one_call_per_figure_gives() -> None:
    batches: list[tuple[list[tuple[str, str, Any]], dict[str, Any]]] = [
        ([("count", "run.requests", 1), ("time", "run.exec_time", 12), ("gauge", "hot.containers", 2)], {"app": "a"}),
        ([("count", "run.requests", 1), ("time", "run.exec_time", 3), ("gauge", "hot.containers", 1)], {"app": "a"}),
        ([("count", "run.requests", 2), ("time", "run.requests", 5)], {"app": "b"}),
        ([("count", "run.requests", 1)], {}),
        ([("count", "run.requests", 1)], {"app": None}),
    ]
    one_by_one, batched = PrometheusMetrics(), PrometheusMetrics()
    for samples, fields in batches:
        batched.many(samples, **fields)
        for kind, name, value in samples:
            cast("Callable[..., None]", {"count": one_by_one.count, "time": one_by_one.timing, "gauge": one_by_one.gauge}[kind])(
                name, value, **fields
            )
    assert batched.render() == one_by_one.render()
    assert 'ironfunctions_hot_containers{app="a"} 1' in batched.render()


def test_prometheus_gauge_set_between_batches_is_kept() -> None:
    metrics = PrometheusMetrics()
    metrics.many([("gauge", "hot.containers", 2)], app="a")
    metrics.gauge("hot.containers", 5, app="a")
    assert 'ironfunctions_hot_containers{app="a"} 5' in metrics.render()
    metrics.many([("gauge", "hot.containers", 3)], app="a")
    assert 'ironfunctions_hot_containers{app="a"} 3' in metrics.render()


def test_fanout_gives_every_sink_the_fields_including_sinks_of_other_modules() -> None:
    class Foreign:
        def __init__(self) -> None:
            self.got: list[tuple[Any, dict[str, Any]]] = []

        def many(self, samples: Any, **fields: Any) -> None:
            self.got.append((samples, fields))

    memory, foreign, prometheus = MemoryMetrics(), Foreign(), PrometheusMetrics()
    fanout = FanoutMetrics([memory, cast(IMetrics, foreign), prometheus])  # a sink with many() only
    samples = [("count", "run.requests", 1)]
    fanout.many(samples, app="a", call_id="C")
    assert memory.total("run.requests", app="a", call_id="C") == 1
    assert foreign.got == [(samples, {"app": "a", "call_id": "C"})]
    assert 'ironfunctions_run_requests_total{app="a"} 1' in prometheus.render()
