"""A node of worker processes shows one set of figures at ``/metrics`` (issue 15,
``metrics/shared.py``): prometheus_client's multiprocess mode, counters and histograms
summed over the processes, each gauge combined as ``GAUGE_MODES`` says, a dead worker's
live gauges gone and its counts kept.

Two processes are played in this one by giving prometheus_client's value class a fixed
process id each (its ``process_identifier``); every test puts the library back as it
found it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import Counter, CollectorRegistry, values
from prometheus_client.parser import text_string_to_metric_families

from ironfunctions.metrics import PrometheusMetrics
from ironfunctions.metrics.shared import ENV, SharedMetricsService, mark_process_dead, prepare, share_values

CALL = [("count", "run.requests", 1), ("count", "run.succeeded", 1), ("time", "run.wait_time", 3),
        ("time", "run.start_time", 0), ("time", "run.exec_time", 12)]


@pytest.fixture
def library() -> Iterator[None]:
    """prometheus_client's process-wide value class and the variable, restored after."""
    before_class, before_env = values.ValueClass, os.environ.get(ENV)
    yield
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
    values.ValueClass = before_class
    if before_env is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = before_env


def as_process(directory: str, pid: int) -> PrometheusMetrics:
    """The sink a worker with ``pid`` makes: the variable set before the library was
    imported (so ``share_values`` has nothing to do), its values in files of its pid."""
    os.environ[ENV] = directory
    values.ValueClass = values.MultiProcessValue(lambda: pid)  # type: ignore[no-untyped-call]
    return PrometheusMetrics(multiprocess_dir=directory)


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


ROUTE = (("app", "a"), ("path", "/p"))


def test_counts_and_histograms_of_every_worker_add_up_whichever_answers(tmp_path: Path, library: None) -> None:
    directory = str(tmp_path)
    first = as_process(directory, 101)
    for _ in range(3):
        first.many(CALL, app="a", path="/p", call_id="x")
    second = as_process(directory, 102)
    for _ in range(4):
        second.many(CALL, app="a", path="/p", call_id="y")
    for answering in (first, second):
        figures = samples(answering)
        assert figures[("ironfunctions_run_requests_total", ROUTE)] == 7
        assert figures[("ironfunctions_run_exec_time_seconds_count", ROUTE)] == 7
        assert figures[("ironfunctions_run_exec_time_seconds_sum", ROUTE)] == pytest.approx(7 * 0.012)
        assert figures[("ironfunctions_run_wait_time_seconds_bucket", tuple(sorted(ROUTE + (("le", "0.005"),))))] == 7
    # Nothing of one process alone: no process_* or python_* series of whoever answered.
    assert not any(name.startswith(("process_", "python_")) for name, _ in samples(first))


def test_gauges_sum_the_workers_own_counts_and_take_the_highest_queue_reading(tmp_path: Path, library: None) -> None:
    directory = str(tmp_path)
    first = as_process(directory, 201)
    first.gauge("containers.running", 3)
    first.gauge("connections", 5)
    first.gauge("hot.containers", 2, app="a", path="/p")
    first.gauge("queue.depth", 40)
    first.gauge("datastore.up", 1)
    second = as_process(directory, 202)
    second.gauge("containers.running", 1)
    second.gauge("connections", 2)
    second.gauge("hot.containers", 1, app="a", path="/p")
    second.gauge("queue.depth", 42)  # the same queue read a moment later
    second.gauge("datastore.up", 0)
    figures = samples(first)
    assert figures[("ironfunctions_containers_running", ())] == 4
    assert figures[("ironfunctions_connections", ())] == 7
    assert figures[("ironfunctions_hot_containers_route", ROUTE)] == 3
    assert figures[("ironfunctions_queue_depth", ())] == 42
    assert figures[("ironfunctions_datastore_up", ())] == 0  # one process cannot reach it


def test_every_node_gauge_is_in_a_fresh_nodes_first_scrape(tmp_path: Path, library: None) -> None:
    directory = str(tmp_path)
    as_process(directory, 251)
    figures = samples(as_process(directory, 252))
    for name in ("containers_running", "hot_containers", "queue_depth", "connections"):
        assert figures[(f"ironfunctions_{name}", ())] == 0


def test_a_dead_workers_live_gauges_go_and_its_counts_stay(tmp_path: Path, library: None) -> None:
    directory = str(tmp_path)
    first = as_process(directory, 301)
    first.gauge("containers.running", 3)
    first.many(CALL, app="a", path="/p")
    second = as_process(directory, 302)
    second.gauge("containers.running", 2)
    second.many(CALL, app="a", path="/p")
    mark_process_dead(directory, 301)
    figures = samples(second)
    assert figures[("ironfunctions_containers_running", ())] == 2
    assert figures[("ironfunctions_run_requests_total", ROUTE)] == 2
    mark_process_dead(directory, 0)  # a worker that never started: nothing to do, no error


def test_share_values_moves_a_process_that_imported_the_library_first_into_the_directory(
    tmp_path: Path, library: None,
) -> None:
    """The parent's case (and the canary for a prometheus_client release that moves
    ``values.ValueClass``): its figures reach the node's files."""
    os.environ.pop(ENV, None)
    values.ValueClass = values.MutexValue
    share_values(str(tmp_path))
    assert os.environ[ENV] == str(tmp_path)
    Counter("canary", "a figure of the parent", registry=CollectorRegistry()).inc(5)
    assert (tmp_path / f"counter_{os.getpid()}.db").exists()
    reader = PrometheusMetrics(multiprocess_dir=str(tmp_path))  # as a worker reads it
    assert samples(reader)[("canary_total", ())] == 5
    switched = values.ValueClass
    share_values(str(tmp_path))  # already there: the values made so far stay where they are
    assert values.ValueClass is switched


def test_one_process_keeps_its_own_registry_and_process_collectors(library: None) -> None:
    metrics = PrometheusMetrics()
    metrics.many(CALL, app="a", path="/p")
    figures = samples(metrics)
    assert figures[("ironfunctions_run_requests_total", ROUTE)] == 1
    assert any(name.startswith("process_") for name, _ in figures)


def test_prepare_makes_a_fresh_directory_and_removes_those_of_parents_gone(tmp_path: Path) -> None:
    (tmp_path / "metrics-10" / "counter_11.db").parent.mkdir()
    (tmp_path / "metrics-10" / "counter_11.db").write_bytes(b"old")
    (tmp_path / "metrics-20").mkdir()  # another parent, still running
    (tmp_path / "metrics-30").mkdir()
    (tmp_path / "metrics-30" / "gauge_livesum_31.db").write_bytes(b"ours, from before")
    (tmp_path / "metrics-x").mkdir()  # not ours to judge
    path = prepare(str(tmp_path), 30, alive=lambda pid: pid == 20)
    assert path == str(tmp_path / "metrics-30")
    assert os.listdir(path) == []
    assert sorted(os.listdir(tmp_path)) == ["metrics-20", "metrics-30", "metrics-x"]


def test_the_directory_goes_when_the_node_stops(tmp_path: Path) -> None:
    path = prepare(str(tmp_path), 40)
    (Path(path) / "counter_41.db").write_bytes(b"x")
    service = SharedMetricsService(path)
    service.startService()  # type: ignore[no-untyped-call]
    service.stopService()
    assert not os.path.exists(path)
