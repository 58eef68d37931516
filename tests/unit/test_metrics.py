"""Metric sinks: the coalesced log lines, /metrics and the fan-out give the same figures
as one call per figure, whatever the cached per-app names and field fragments hold;
/metrics' names, labels and histograms; statsd's resolution and datagrams."""

import io
import socket
from typing import Any, Callable, cast

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.python.threadpool import ThreadPool

from ironfunctions.metrics import (
    FanoutMetrics,
    IMetrics,
    LogMetrics,
    MemoryMetrics,
    PrometheusMetrics,
    StatsdMetrics,
    statsd_names,
)
from ironfunctions.config import Config
from ironfunctions.errors import ConfigError
from ironfunctions.logging import logfmt_value, make_observer
from ironfunctions.metrics.prometheus import TIME_BUCKETS


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


def ours(text: str) -> list[str]:
    """The exposition's sample lines of our own metrics (not process/platform/GC)."""
    return [line for line in text.splitlines() if line.startswith("ironfunctions_") and "_created" not in line]


@pytest.mark.parametrize("level, lines", [("debug", 4), ("info", 4), ("warn", 0), ("error", 0)])
def test_metric_lines_are_not_made_below_the_log_level(level: str, lines: int) -> None:
    """At LOG_LEVEL warn the observer drops info events: the per-call lines, their
    events and their flush timer are not made at all (issue 15: CPU per call)."""
    out = io.StringIO()
    clock = Clock()
    metrics = LogMetrics(clock, level=level)
    # An observer that keeps everything: whatever the sink makes shows here.
    metrics.log = Logger(namespace="ironfunctions.metrics", observer=make_observer("debug", out))
    metrics.many([("count", "run.requests", 1), ("time", "run.exec_time", 3)], app="a", path="/p", call_id="C")
    scheduled = len(clock.getDelayedCalls())
    metrics.count("async.submitted", 1)
    metrics.gauge("queue.depth", 2)
    clock.advance(0.05)
    assert scheduled == (1 if lines else 0)
    assert len(out.getvalue().splitlines()) == lines + (2 if lines else 0)


def test_prometheus_many_gives_what_one_call_per_figure_gives() -> None:
    batches: list[tuple[list[tuple[str, str, Any]], dict[str, Any]]] = [
        ([("count", "run.requests", 1), ("time", "run.exec_time", 12), ("gauge", "hot.containers", 2)], {"app": "a"}),
        ([("count", "run.requests", 1), ("time", "run.exec_time", 3), ("gauge", "hot.containers", 1)], {"app": "a"}),
        ([("count", "run.requests", 2), ("time", "run.requests", 5)], {"app": "b", "path": "/p"}),
        ([("count", "run.requests", 1)], {}),
        ([("count", "run.requests", 1)], {"app": None}),
        ([("count", "run.requests", 2.9), ("time", "run.exec_time", True)], {"app": 1, "call_id": "C"}),
    ]
    one_by_one, batched = PrometheusMetrics(process_metrics=False), PrometheusMetrics(process_metrics=False)
    for samples, fields in batches:
        batched.many(samples, **fields)
        for kind, name, value in samples:
            cast("Callable[..., None]", {"count": one_by_one.count, "time": one_by_one.timing, "gauge": one_by_one.gauge}[kind])(
                name, value, **fields
            )
    assert ours(batched.render()) == ours(one_by_one.render())
    lines = ours(batched.render())
    assert 'ironfunctions_hot_containers_app{app="a"} 1.0' in lines
    assert 'ironfunctions_run_requests_total{app="a",path=""} 2.0' in lines
    assert 'ironfunctions_run_requests_total{app="",path=""} 2.0' in lines
    assert 'ironfunctions_run_requests_total{app="1",path=""} 2.0' in lines
    assert 'ironfunctions_run_requests_seconds_sum{app="b",path="/p"} 0.005' in lines


def test_a_fresh_node_exposes_its_node_gauges_at_zero_and_the_process_metrics() -> None:
    text = PrometheusMetrics().render()
    for name in ("containers_running", "hot_containers", "queue_depth", "connections"):
        assert f"ironfunctions_{name} 0.0" in text.splitlines()
    assert "process_cpu_seconds_total" in text or "process_" not in text  # /proc-less systems
    assert "python_info{" in text and "python_gc_objects_collected_total" in text


def test_wait_time_is_a_histogram_with_buckets_a_quantile_can_be_read_from() -> None:
    """histogram_quantile(0.99, rate(ironfunctions_run_wait_time_seconds_bucket[5m]))
    needs cumulative _bucket{le=...} series: 98 calls waited 2 ms, 2 waited 3 s."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = PrometheusMetrics(process_metrics=False)
    for wait_ms in [2] * 98 + [3000] * 2:
        metrics.many([("count", "run.requests", 1), ("time", "run.wait_time", wait_ms)],
                     app="a", path="/p", call_id="x")
    text = metrics.render()
    assert 'ironfunctions_run_wait_time_seconds_bucket{app="a",le="0.0025",path="/p"} 98.0' in text
    assert 'ironfunctions_run_wait_time_seconds_bucket{app="a",le="+Inf",path="/p"} 100.0' in text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "ironfunctions_run_wait_time_seconds"]
    assert family.type == "histogram"
    buckets = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert sorted(buckets) == [*TIME_BUCKETS, float("inf")]
    assert buckets[2.5] == 98 and buckets[5.0] == 100  # the p99 lies in (2.5 s, 5 s]
    assert "call_id" not in text


def test_hot_containers_node_wide_and_per_route_are_two_families() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    metrics.gauge("hot.containers", 2, app="a", path="/p")
    metrics.gauge("hot.containers", 1, app="a", path="/q")
    metrics.gauge("hot.containers", 3)
    metrics.many([("gauge", "hot.containers", 5)], app="a", path="/p")
    lines = ours(metrics.render())
    assert "ironfunctions_hot_containers 3.0" in lines
    assert 'ironfunctions_hot_containers_route{app="a",path="/p"} 5.0' in lines
    assert 'ironfunctions_hot_containers_route{app="a",path="/q"} 1.0' in lines


def test_each_prometheus_sink_has_its_own_registry() -> None:
    from prometheus_client import REGISTRY

    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.count("run.requests", 1, app="a")
    assert "ironfunctions_run_requests_total" not in second.render()
    assert REGISTRY.get_sample_value("ironfunctions_run_requests_total", {"app": "a", "path": ""}) is None


def test_prometheus_sink_never_raises_on_odd_figures() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    metrics.count("odd.name", 1)
    metrics.gauge("odd.name", 1)  # the counter holds the name: dropped, logged once
    metrics.gauge("odd.name", 2)
    metrics.count("run.requests", -1, app="a")  # counters only go up
    assert "ironfunctions_odd_name_total{" in metrics.render()


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
    assert 'ironfunctions_run_requests_total{app="a",path=""} 1.0' in prometheus.render()


class FakeUDPSocket:
    """A connected UDP socket that records what it is sent."""

    def __init__(self, family: int, fail: bool = False) -> None:
        self.family = family
        self.peer: Any = None
        self.sent: list[bytes] = []
        self.closed = False
        self.fail = fail

    def connect(self, address: Any) -> None:
        self.peer = address

    def send(self, data: bytes) -> int:
        if self.fail:
            raise ConnectionRefusedError()
        self.sent.append(data)
        return len(data)

    def close(self) -> None:
        self.closed = True


class FakeResolver:
    """Answers each resolution with what ``answers`` holds when it is asked (an
    exception fails it); counts the resolutions."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Deferred[Any]:
        self.asked.append((host, port))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)


def statsd(resolver: FakeResolver, clock: Clock) -> tuple[StatsdMetrics, list[FakeUDPSocket]]:
    sockets: list[FakeUDPSocket] = []

    def new_socket(family: int) -> Any:
        sockets.append(FakeUDPSocket(family))
        return sockets[-1]

    return StatsdMetrics(clock, "statsd.example", 8125, resolve=resolver, socket_factory=new_socket), sockets


def test_statsd_resolves_once_at_start_and_sends_each_batch_as_one_datagram() -> None:
    clock = Clock()
    resolver = FakeResolver([(socket.AF_INET, ("10.0.0.5", 8125))])
    sink, sockets = statsd(resolver, clock)
    sink.many([("count", "run.requests", 1)], app="a")  # before start: dropped, not resolved
    assert (sink.dropped, resolver.asked) == (1, [])
    sink.startService()
    for _ in range(3):
        sink.many([("count", "run.requests", 1), ("time", "run.exec_time", 12)], app="a", path="/p")
    sink.gauge("queue.depth", 4)
    assert resolver.asked == [("statsd.example", 8125)]
    (sock,) = sockets
    assert sock.peer == ("10.0.0.5", 8125)
    assert sock.sent[0] == b"run.requests:1|c\nrun.a.requests:1|c\nrun.exec_time:12|ms\nrun.a.exec_time:12|ms"
    assert sock.sent[-1] == b"queue.depth:4|g" and sink.sent == 4
    sink.stopService()
    assert sock.closed


def test_statsd_re_resolves_on_its_timer_and_follows_a_moved_host() -> None:
    clock = Clock()
    first, moved = [(socket.AF_INET, ("10.0.0.5", 8125))], [(socket.AF_INET6, ("fd00::7", 8125, 0, 0))]
    resolver = FakeResolver(first, first, moved)
    sink, sockets = statsd(resolver, clock)
    sink.startService()
    clock.advance(60)  # same address: the socket stays
    assert len(resolver.asked) == 2 and len(sockets) == 1
    clock.advance(60)
    assert len(resolver.asked) == 3 and len(sockets) == 2
    assert sockets[0].closed and sockets[1].family == socket.AF_INET6
    sink.count("run.requests", 1)
    assert sockets[1].sent == [b"run.requests:1|c"]
    sink.stopService()


def test_statsd_keeps_the_last_address_when_resolution_fails_and_logs_once() -> None:
    clock = Clock()
    address = [(socket.AF_INET, ("10.0.0.5", 8125))]
    resolver = FakeResolver(address, OSError("dns down"), OSError("dns down"), address)
    sink, sockets = statsd(resolver, clock)
    with capturedLogs() as events:
        sink.startService()
        clock.advance(60)
        clock.advance(60)
        sink.count("run.requests", 1)
        clock.advance(60)
    assert sockets[0].sent == [b"run.requests:1|c"] and len(sockets) == 1
    assert [e["log_level"].name for e in events] == ["warn", "info"]
    sink.stopService()


def test_statsd_uses_the_first_address_it_can_route_to() -> None:
    """A host with an IPv6 address first, on a node without IPv6 routes."""
    clock = Clock()
    resolver = FakeResolver([(socket.AF_INET6, ("fd00::7", 8125, 0, 0)), (socket.AF_INET, ("10.0.0.5", 8125))])
    sockets: list[FakeUDPSocket] = []

    def new_socket(family: int) -> Any:
        sockets.append(FakeUDPSocket(family))
        if family == socket.AF_INET6:
            def unreachable(address: Any) -> None:
                raise OSError(101, "Network is unreachable")
            sockets[-1].connect = unreachable  # type: ignore[method-assign]
        return sockets[-1]

    sink = StatsdMetrics(clock, "statsd.example", 8125, resolve=resolver, socket_factory=new_socket)
    sink.startService()
    sink.count("run.requests", 1)
    assert sockets[0].closed and sockets[1].sent == [b"run.requests:1|c"]
    sink.stopService()


def test_statsd_send_errors_are_counted_never_raised() -> None:
    clock = Clock()
    resolver = FakeResolver([(socket.AF_INET, ("10.0.0.5", 8125))])
    sink, sockets = statsd(resolver, clock)
    sink.startService()
    sockets[0].fail = True
    sink.count("run.requests", 1)
    sink.many([("time", "run.exec_time", 1)], app="a")
    assert sink.send_errors == 2
    sink.stopService()


def test_statsd_url_is_parsed_into_host_and_port_in_config() -> None:
    def make(url: str) -> Config:
        return Config.from_sources({}, {"STATSD_URL": url}, "/srv", cpu_count=2, host_memory_mb=4096)

    assert (make("udp://stats.local:8125").statsd_host, make("udp://stats.local:8125").statsd_port) == ("stats.local", 8125)
    assert make("udp://[::1]:9125").statsd_host == "::1"
    assert Config.from_sources({}, {}, "/srv", cpu_count=2, host_memory_mb=4096).statsd_host == ""
    for bad in ("udp://stats.local", "tcp://h:1", "udp://h:99999", "stats.local:8125"):
        with pytest.raises(ConfigError) as e:
            make(bad)
        assert str(e.value).startswith("STATSD_URL:")


class ManualThreads:
    """A reactor and thread pool that run the pool's work when the test says so."""

    def __init__(self) -> None:
        self.work: list[Any] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:  # noqa: N802
        self.work.append(lambda: on_result(True, f(*args)))

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802
        f(*args)


def test_scrapes_are_made_off_the_reactor_thread_one_at_a_time_and_shared() -> None:
    """A big exposition takes ~1 ms per route: it must not stall the reactor."""
    threads = ManualThreads()
    metrics = PrometheusMetrics(process_metrics=False, reactor=threads, pool=cast(ThreadPool, threads))
    metrics.count("run.requests", 1, app="a", path="/p")
    first, second = metrics.scrape(), metrics.scrape()
    assert len(threads.work) == 1 and not first.called
    threads.work.pop()()
    texts = [success_result(first), success_result(second)]
    assert texts[0] == texts[1] and b'ironfunctions_run_requests_total{app="a",path="/p"} 1.0' in texts[0]
    metrics.count("run.requests", 1, app="a", path="/p")
    third = metrics.scrape()  # a new text after the last one was made
    threads.work.pop()()
    assert b'{app="a",path="/p"} 2.0' in success_result(third)


def success_result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addCallback(out.append)
    assert out, "no result"
    return out[0]
