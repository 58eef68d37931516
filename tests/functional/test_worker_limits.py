"""A node of worker processes keeps its limits node-wide (issue 15, SPEC §4 and §8): a
real daemon with ``WORKERS=2`` on the real Docker engine, clients on connections held
by each worker (``tests/workers.py``).

- a hot route at ``max_concurrency`` 1 runs on one container whichever worker its calls
  reach (the other worker's calls are forwarded), and every call succeeds; when its
  calls reach only the other worker, its container moves there, never two at once;
- a hot route at 2 under load on both workers ends with one container in each;
- ``MAX_CONCURRENCY`` counts both workers' containers: slow cold calls sent to both at
  once never have more than the limit running, and all succeed in turn.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
import time
import uuid
from typing import Iterator

import docker
import pytest

from ironfunctions.models import LABEL_NODE, LABEL_WORKER
from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.workers import WorkerConnection, connections_on_each_worker, wait_workers


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=60)
    yield client
    client.close()


def running(engine: docker.DockerClient, node_id: str) -> list[dict[str, str]]:
    """The node's running containers' labels."""
    filters = {"label": [f"{LABEL_NODE}={node_id}"], "status": "running"}
    return [c["Labels"] for c in engine.api.containers(filters=filters)]


@contextmanager
def counting(engine: docker.DockerClient, node_id: str) -> Iterator[list[int]]:
    """The node's running containers, counted every 50 ms while the block runs."""
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len(running(engine, node_id)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


def node_of(daemon: Daemon) -> tuple[str, dict[int, WorkerConnection]]:
    """The daemon's NODE_ID and a connection held by each of its two workers."""
    assert daemon.proc is not None
    workers = wait_workers(daemon.proc.pid, 2)
    return daemon.env["NODE_ID"], connections_on_each_worker(daemon, workers)


def start(daemon_factory: DaemonFactory, **env: str) -> Daemon:
    return daemon_factory(env={"WORKERS": "2", "DOCKER_NETWORK": "none",
                               "NODE_ID": f"limits-{uuid.uuid4().hex[:8]}", **env})


def hammer(conns: dict[int, WorkerConnection], path: str, seconds: float) -> dict[int, list[int]]:
    """Calls, one after the other on each worker's connection, for ``seconds``: the
    statuses per worker."""
    statuses: dict[int, list[int]] = {w: [] for w in conns}

    def loop(worker: int, conn: WorkerConnection) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            statuses[worker].append(conn.request("POST", path, "hi").status)

    threads = [threading.Thread(target=loop, args=item) for item in conns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def at_once(conns: list[WorkerConnection], path: str, headers: dict[str, str] | None = None) -> list[int]:
    """One call over each of ``conns``, all at once: their statuses."""
    with ThreadPoolExecutor(len(conns)) as pool:
        return list(pool.map(lambda c: c.request("POST", path, "hi", headers).status, conns))


def hot_node(daemon_factory: DaemonFactory, max_concurrency: int) -> tuple[Daemon, str, dict[int, WorkerConnection]]:
    """A node of two workers with the hot route ``/r/app/hot``: the daemon, its NODE_ID
    and a connection held by each worker."""
    daemon = start(daemon_factory)
    daemon.add_route("app", "/hot", image_tag("hotfn"), format="http", max_concurrency=max_concurrency,
                     idle_timeout=300)
    return (daemon, *node_of(daemon))


def test_a_hot_route_at_one_runs_one_container_whichever_worker_its_calls_reach(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    _, node, conns = hot_node(daemon_factory, 1)
    with counting(engine, node) as seen:
        statuses = hammer(conns, "/r/app/hot", 3)
    assert all(len(s) > 50 for s in statuses.values()), {w: len(s) for w, s in statuses.items()}
    assert all(code == 200 for s in statuses.values() for code in s)
    assert max(seen) == 1 and len(running(engine, node)) == 1


def test_a_hot_route_at_one_moves_to_the_worker_its_calls_reach(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    _, node, conns = hot_node(daemon_factory, 1)
    assert conns[0].request("POST", "/r/app/hot", "hi").status == 200
    assert [label[LABEL_WORKER] for label in running(engine, node)] == ["0"]
    with counting(engine, node) as seen:
        statuses = hammer({1: conns[1]}, "/r/app/hot", 3)  # then its calls reach worker 1 only
    assert len(statuses[1]) > 200 and all(code == 200 for code in statuses[1])
    assert max(seen) == 1
    assert [label[LABEL_WORKER] for label in running(engine, node)] == ["1"]


def test_a_hot_route_at_two_ends_with_a_container_in_each_worker(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    daemon, node, conns = hot_node(daemon_factory, 2)
    assert daemon.proc is not None
    second = connections_on_each_worker(daemon, wait_workers(daemon.proc.pid, 2))
    # Two calls at once on worker 0 (its function sleeps 1 s): the route's two
    # containers both start there.
    assert at_once([conns[0], second[0]], "/r/app/hot", {"X-Mode": "sleep", "X-Sleep": "1"}) == [200, 200]
    assert sorted(label[LABEL_WORKER] for label in running(engine, node)) == ["0", "0"]
    statuses = hammer(conns, "/r/app/hot", 4)
    assert all(code == 200 for s in statuses.values() for code in s)
    labels = running(engine, node)
    assert sorted(label[LABEL_WORKER] for label in labels) == ["0", "1"], labels


def test_max_concurrency_counts_both_workers_containers(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    daemon = start(daemon_factory, MAX_CONCURRENCY="2", APP_MAX_CONCURRENCY="2")
    daemon.add_route("app", "/sleep", image_tag("sleep"), config={"SLEEP": "1"}, timeout=30)
    node, _ = node_of(daemon)
    assert daemon.proc is not None
    workers = wait_workers(daemon.proc.pid, 2)
    # Three connections on each worker, each sending one 1 s cold call at once.
    pools = [connections_on_each_worker(daemon, workers) for _ in range(3)]
    conns = [c for pool in pools for c in pool.values()]
    assert {c.worker for c in conns} == {0, 1}
    with counting(engine, node) as seen:
        results = at_once(conns, "/r/app/sleep")
    assert results == [200] * 6
    assert max(seen) == 2  # never 3 or 4, though each worker had 3 calls at once
