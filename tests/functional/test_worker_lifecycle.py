"""A node of worker processes keeps a single process's lifecycle guarantees (issue 15):
a real daemon with ``WORKERS=2`` on the real Docker engine.

- leftover cleanup by ``NODE_ID`` is the parent's, before the workers start and after
  the last one has exited (SPEC §7); a killed worker's containers go at once, its
  sibling's stay and serve, and it comes back;
- a cancel, or a deleted app, reaching one worker stops the call running in the other
  (SPEC §9, on the embedded SQLite queue: relayed by the parent);
- SIGTERM drains every worker (SPEC §9): ``/health`` 503 on each through
  ``DRAIN_GRACE`` while they serve on, then the port closes, in-flight calls finish,
  and the parent exits after them with the node's containers removed.

Which worker serves a connection: ``tests/workers.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Iterator

import docker
import pytest

from ironfunctions.drivers.netguard import NetworkGuard
from ironfunctions.http.conncap import connection_cap
from ironfunctions.models import LABEL_NODE, LABEL_WORKER
from tests.daemon import Daemon, DaemonFactory, Reply
from tests.functional.test_cancel_any_node import (
    assert_cancelled_reply, assert_final_record_cancelled, assert_gone_within, in_background,
)
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.workers import WorkerConnection, connections_on_each_worker, wait_workers, worker_pids


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=60)
    yield client
    client.close()


def containers(engine: docker.DockerClient, **labels: str) -> list[str]:
    """Ids of the containers (any state) carrying every label."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return sorted(c["Id"] for c in engine.api.containers(all=True, filters=filters))


def node_labels(node_id: str, worker: int | None = None) -> dict[str, str]:
    return {LABEL_NODE: node_id, **({} if worker is None else {LABEL_WORKER: str(worker)})}


def worker_containers(engine: docker.DockerClient, node_id: str, worker: int) -> list[str]:
    return containers(engine, **{LABEL_NODE: node_id, LABEL_WORKER: str(worker)})


def until(predicate: object, timeout: float = 10.0, why: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{why} not reached in {timeout}s"
        time.sleep(0.02)


def start_node(daemon_factory: DaemonFactory, **env: str) -> tuple[Daemon, str, dict[int, int]]:
    """A node of two workers, both serving; (daemon, node id, worker index -> pid)."""
    node_id = f"workers-{uuid.uuid4().hex[:8]}"
    daemon = daemon_factory(env={"WORKERS": "2", "NODE_ID": node_id, "MAX_CONCURRENCY": "8", **env})
    assert daemon.proc is not None
    return daemon, node_id, wait_workers(daemon.proc.pid, 2)


def serving(conn: WorkerConnection, timeout: float = 30.0) -> None:
    """Wait until the worker behind ``conn`` answers ``/health`` 200."""
    deadline = time.monotonic() + timeout
    while (reply := conn.request("GET", "/health")).status != 200:
        assert time.monotonic() < deadline, reply
        time.sleep(0.05)


def test_the_parent_removes_the_nodes_leftovers_before_its_workers_start_and_its_containers_after_the_last(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    """Leftovers a worker would never remove (its cleanup is its own label's): one of a
    single-process run (the node's label only) and one of a worker index this node no
    longer has. Another node's container is never touched."""
    node_id = f"workers-{uuid.uuid4().hex[:8]}"
    other = f"other-{uuid.uuid4().hex[:8]}"
    image = image_tag("sleep")
    single = engine.api.create_container(image, labels=node_labels(node_id))["Id"]
    gone_worker = engine.api.create_container(image, labels=node_labels(node_id, 7))["Id"]
    foreign = engine.api.create_container(image, labels=node_labels(other, 0))["Id"]
    try:
        daemon = daemon_factory(env={"WORKERS": "2", "NODE_ID": node_id})
        assert containers(engine, **{LABEL_NODE: node_id}) == []  # gone before any worker served
        assert "Removed 2 containers left by a previous run" in daemon.log()
        # One of the node's that no worker made (so no worker's stop removes it): only
        # the parent's removal after the last worker takes it.
        stray = engine.api.create_container(image, labels=node_labels(node_id))["Id"]
        daemon.add_route("app", "/cat", image_tag("cat"))
        assert daemon.post("/r/app/cat", "x").status == 200
        assert daemon.stop() == -signal.SIGTERM
        assert containers(engine, **{LABEL_NODE: node_id}) == [], stray
        assert containers(engine, **{LABEL_NODE: other}) == [foreign]
        assert not os.path.exists(os.path.join(daemon.workdir, "data", "hot-sockets"))
    finally:
        for container in (single, gone_worker, foreign):
            try:
                engine.api.remove_container(container, force=True)
            except docker.errors.NotFound:
                pass


def test_a_killed_workers_containers_go_at_once_its_sibling_keeps_serving_and_it_comes_back(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    daemon, node_id, pids = start_node(daemon_factory)
    assert daemon.proc is not None
    daemon.add_route("app", "/hot", image_tag("hotfn"), format="http", max_concurrency=2, idle_timeout=300)
    conns = connections_on_each_worker(daemon, pids)
    for conn in conns.values():
        serving(conn)
        assert conn.request("POST", "/r/app/hot", "hi").status == 200
    # The route's two containers, one per worker (its limit counts both).
    until(lambda: all(len(worker_containers(engine, node_id, w)) == 1 for w in pids), why="a container per worker")
    victim, survivor = 0, 1
    kept = worker_containers(engine, node_id, survivor)
    sockets = os.path.join(daemon.workdir, "data", "hot-sockets", f"w{victim}")
    assert os.listdir(sockets), "the victim's hot container has a socket directory"

    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()
    # Removed by the parent before the replacement starts (which removes its own
    # label's containers only once it is up: too late for the node's slots).
    while worker_containers(engine, node_id, victim):
        replacement = worker_pids(daemon.proc.pid).get(victim)
        assert replacement in (None, pids[victim]), "a replacement started before the dead worker's containers went"
        assert time.monotonic() - killed < 5, "the dead worker's containers are still there"
        time.sleep(0.02)
    assert not os.path.exists(sockets) or not os.listdir(sockets)
    assert worker_containers(engine, node_id, survivor) == kept
    assert engine.api.inspect_container(kept[0])["State"]["Running"]
    assert conns[survivor].request("POST", "/r/app/hot", "still").status == 200
    assert worker_containers(engine, node_id, survivor) == kept  # the same container served it

    back = wait_workers(daemon.proc.pid, 2)
    assert back[victim] != pids[victim] and back[survivor] == pids[survivor]
    assert "Removed 1 containers of dead worker 0" in daemon.log()
    fresh = connections_on_each_worker(daemon, back)
    serving(fresh[victim])
    assert fresh[victim].request("POST", "/r/app/hot", "again").status == 200
    assert worker_containers(engine, node_id, survivor) == kept  # the replacement's cleanup is its own


def sleeping_call_on(conn: WorkerConnection, engine: docker.DockerClient, node_id: str,
                     ) -> tuple[threading.Thread, list[Reply], str]:
    """Start a 60 s sync call over ``conn``; return (thread, its reply list, call id)
    once its container runs."""
    thread, out = in_background(lambda: conn.request("POST", "/r/myapp/sleep", ""))
    deadline = time.monotonic() + 30
    while True:
        found = engine.api.containers(filters={"label": f"{LABEL_NODE}={node_id}", "status": "running"})
        if found:
            labels = found[0]["Labels"]
            assert labels[LABEL_WORKER] == str(conn.worker)
            return thread, out, labels["io.ironfunctions.call_id"]
        assert time.monotonic() < deadline, "the call's container did not start"
        time.sleep(0.02)


@pytest.fixture
def sleeping_node(test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
                  ) -> tuple[Daemon, str, dict[int, WorkerConnection]]:
    daemon, node_id, pids = start_node(daemon_factory)
    daemon.add_route("myapp", "/sleep", image_tag("sleep"), config={"SLEEP": "60"}, timeout=120)
    conns = connections_on_each_worker(daemon, pids)
    for conn in conns.values():
        serving(conn)
    return daemon, node_id, conns


@pytest.mark.parametrize("runs_on, record", [(0, "none yet"), (1, "running")])
def test_a_cancel_landing_on_the_other_worker_stops_the_call(
    sleeping_node: tuple[Daemon, str, dict[int, WorkerConnection]], engine: docker.DockerClient,
    runs_on: int, record: str,
) -> None:
    daemon, node_id, conns = sleeping_node
    other = conns[1 - runs_on]
    thread, out, call_id = sleeping_call_on(conns[runs_on], engine, node_id)
    if record == "running":
        until(lambda: other.request("GET", f"/v1/apps/myapp/calls/{call_id}").status == 200, why="its running record")
    started = time.monotonic()
    reply = other.request("DELETE", f"/v1/apps/myapp/calls/{call_id}")
    assert reply.status == 200, (reply.status, reply.body)
    assert (reply.json()["call"]["status"], reply.json()["call"]["reason"]) == ("cancelled", "client_request")
    assert_cancelled_reply(thread, out, call_id, within=2)
    assert_gone_within(engine, call_id, started, 5)
    assert_final_record_cancelled(daemon, call_id)


def test_deleting_an_app_through_one_worker_stops_its_call_in_the_other(
    sleeping_node: tuple[Daemon, str, dict[int, WorkerConnection]], engine: docker.DockerClient,
) -> None:
    daemon, node_id, conns = sleeping_node
    thread, out, call_id = sleeping_call_on(conns[0], engine, node_id)
    started = time.monotonic()
    assert conns[1].request("DELETE", "/v1/apps/myapp/routes/sleep").status == 200
    assert conns[1].request("DELETE", "/v1/apps/myapp").status == 200
    assert_cancelled_reply(thread, out, call_id, within=5)
    assert_gone_within(engine, call_id, started, 5)


def test_sigterm_drains_every_worker_finishes_their_calls_and_the_parent_exits_after_them(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    daemon, node_id, pids = start_node(daemon_factory, DRAIN_GRACE="2s", SHUTDOWN_TIMEOUT="30s")
    assert daemon.proc is not None
    daemon.add_route("myapp", "/slow", image_tag("sleep"), config={"SLEEP": "6"}, timeout=30)
    daemon.add_route("myapp", "/cat", image_tag("cat"))
    busy = connections_on_each_worker(daemon, pids)
    asking = connections_on_each_worker(daemon, pids)
    for conn in asking.values():
        serving(conn)
    slow = {w: in_background(lambda c=c: c.request("POST", "/r/myapp/slow", "")) for w, c in busy.items()}  # type: ignore[misc]
    until(lambda: all(worker_containers(engine, node_id, w) for w in pids), timeout=30, why="a slow call per worker")

    proc = daemon.proc
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for worker, conn in asking.items():
        until(lambda c=conn: c.request("GET", "/health").status == 503, timeout=1, why=f"worker {worker} draining")
        health = conn.request("GET", "/health")
        assert (health.json()["status"], health.json()["reason"]) == ("draining", "shutdown")
        during = conn.request("POST", "/r/myapp/cat", "still here")  # served through the grace
        assert (during.status, during.body) == (200, b"still here")
    assert time.monotonic() - sent < 2
    for pid in pids.values():  # the same again from outside, as systemd's KillMode=control-group does
        os.kill(pid, signal.SIGTERM)

    until(lambda: time.monotonic() - sent > 2.5, timeout=5)
    with pytest.raises(ConnectionRefusedError):  # the grace is over: the port is closed
        socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
    for worker, (thread, out) in slow.items():
        thread.join(30)
        assert out and (out[0].status, out[0].body) == (200, b"slept 6\n"), (worker, out)
    assert proc.wait(30) == -signal.SIGTERM
    daemon.proc = None
    assert worker_pids(proc.pid) == {}
    assert containers(engine, **{LABEL_NODE: node_id}) == []
    log = daemon.log()
    assert "Unhandled Error" not in log and "parent process is gone" not in log, log[-3000:]
    assert "Can't stop reactor" not in log, log[-3000:]


def test_workers_share_the_nodes_connection_cap_and_only_one_runs_the_backend_gauges(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    """The once-per-node loops (reconciler, retention sweep, backend gauges) run in
    worker 0 alone; the gauges show it: one ``datastore.up`` line per 5 s, not two."""
    daemon, _, pids = start_node(daemon_factory)
    up = time.monotonic()
    for conn in connections_on_each_worker(daemon, pids).values():
        serving(conn)
    log = daemon.log()
    limits = {int(line.split("file_limit=")[1].split()[0]) for line in log.splitlines() if "file_limit=" in line}
    caps = [int(line.split("connection_cap=")[1].split()[0]) for line in log.splitlines() if "connection_cap=" in line]
    assert len(limits) == 1 and len(caps) == 2, (limits, caps)
    assert sum(caps) == connection_cap(limits.pop(), 8) and max(caps) - min(caps) <= 1, caps
    # Both loops would log at their start and 5 s later: 4 lines by now, not 2.
    until(lambda: time.monotonic() - up > 7.5, timeout=10)
    assert daemon.log().count("metric=datastore.up ") == 2, daemon.log()


def test_the_parent_alone_guards_the_function_network_and_both_workers_run_calls_on_it(
    test_images: dict[str, str], daemon_factory: DaemonFactory, engine: docker.DockerClient,  # noqa: F811
) -> None:
    """The rules are put in place once, by the parent; each worker's /health and calls
    go by what the parent tells it, and a worker killed and restarted touches nothing."""
    network = f"ironfunctions-w{uuid.uuid4().hex[:5]}"  # this test's own guarded network
    guard = NetworkGuard(engine.api, network)
    daemon: Daemon | None = None
    try:
        daemon, node_id, pids = start_node(daemon_factory, DOCKER_NETWORK=network)
        assert daemon.proc is not None
        parent = daemon.proc.pid
        daemon.add_route("app", "/cat", image_tag("cat"))
        conns = connections_on_each_worker(daemon, pids)
        for conn in conns.values():
            serving(conn)  # its "network" check passes
            assert conn.request("POST", "/r/app/cat", "on the guarded network").status == 200
        assert daemon.log().count(f"Network {network} guarded") == 1
        os.kill(pids[0], signal.SIGKILL)
        until(lambda: worker_pids(parent).get(0) not in (None, pids[0]), timeout=30, why="worker 0 back")
        fresh = connections_on_each_worker(daemon, wait_workers(parent, 2))
        serving(fresh[0])
        assert fresh[0].request("POST", "/r/app/cat", "again").status == 200
        assert guard.ensure() == []  # every rule still in place
        assert daemon.log().count(f"Network {network} guarded") == 1
    finally:
        if daemon is not None:
            daemon.stop()
        guard.remove()
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
