"""A node of worker processes answers as one node (issue 15; SPEC §6, §9), through a real
daemon at ``WORKERS=2`` and the real Docker engine: ``/metrics`` and ``/stats`` give the
whole node's figures whichever worker serves the request, a dead worker's live gauges
leave ``/metrics`` while its counts stay, and the balancer agent, in the parent, sees
the node's load and says ``drain`` from SIGTERM until the last worker has exited.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from ironfunctions.drivers.docker_probe import DockerProbe
from tests.daemon import Daemon, DaemonFactory
from tests.functional.test_lb_drain import ask_agent, hung_engine  # noqa: F401 (fixture)
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import free_port

CONNECTIONS = 8
CALLS_EACH = 25


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def server_pids(port: int) -> dict[int, int]:
    """Client port -> pid of the process holding the server side of that connection."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    owners = {}
    for line in out.splitlines():
        peer = re.search(r"127\.0\.0\.1:(\d+)\s+users:", line)
        pid = re.search(r"pid=(\d+)", line)
        if peer and pid:
            owners[int(peer.group(1))] = int(pid.group(1))
    return owners


def connections_to_both_workers(daemon: Daemon) -> tuple[list[http.client.HTTPConnection], list[int], dict[int, int]]:
    """``CONNECTIONS`` open connections, some held by each worker (the second worker may
    start a moment after the first answers ``/health``: until then the first takes all)."""
    deadline = time.monotonic() + 15
    while True:
        conns = [http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30) for _ in range(CONNECTIONS)]
        for conn in conns:
            conn.connect()
        ports = [conn.sock.getsockname()[1] for conn in conns]
        wait_for(lambda: set(ports) <= server_pids(daemon.port).keys())
        owners = server_pids(daemon.port)
        assert daemon.proc is not None and daemon.proc.pid not in owners.values(), "the parent never accepts"
        if len({owners[p] for p in ports}) == 2:
            return conns, ports, owners
        assert time.monotonic() < deadline, f"every connection went to one worker: {owners}"
        for conn in conns:
            conn.close()
        time.sleep(0.2)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    reply = conn.getresponse()
    return reply.status, reply.read()


def metric(text: str, series: str) -> float:
    match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert match, f"{series} not in /metrics:\n{text}"
    return float(match.group(1))


def test_metrics_and_stats_are_the_whole_nodes_whichever_worker_answers(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"WORKERS": "2", "NODE_ID": f"views-{os.getpid()}"})
    # Room for a container per connection: every call stays in the worker it reached.
    daemon.add_route("a", "/hot", image_tag("hotfn"), format="http", max_concurrency=CONNECTIONS)
    conns, ports, owners = connections_to_both_workers(daemon)
    workers = {owners[p] for p in ports}

    statuses: list[int] = []

    def calls(conn: http.client.HTTPConnection) -> None:
        for i in range(CALLS_EACH):
            conn.request("POST", "/r/a/hot", body=f"call {i}".encode())
            reply = conn.getresponse()
            reply.read()
            statuses.append(reply.status)

    threads = [threading.Thread(target=calls, args=(conn,)) for conn in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = CONNECTIONS * CALLS_EACH
    assert statuses == [200] * total
    served = {pid: sum(CALLS_EACH for p in ports if owners[p] == pid) for pid in workers}
    assert all(served.values()), served  # both workers ran calls of their own

    route = '{app="a",path="/hot"}'
    for pid in workers:  # ask each worker, on a connection it serves
        conn = conns[[owners[p] for p in ports].index(pid)]
        status, body = get(conn, "/stats")
        assert (status, json.loads(body)) == (200, {"Queue": 0, "Running": 0, "Complete": total})
        status, body = get(conn, "/metrics")
        text = body.decode()
        assert status == 200
        assert metric(text, "ironfunctions_run_requests_total" + route) == total
        assert metric(text, "ironfunctions_run_succeeded_total" + route) == total
        assert metric(text, "ironfunctions_run_exec_time_seconds_count" + route) == total
        assert "process_cpu_seconds_total" not in text  # no figure of one process alone
    # Each worker's containers, summed (gauges are reported every 5 s).
    wait_for(lambda: metric(get(conns[0], "/metrics")[1].decode(), "ironfunctions_hot_containers") >= 2)
    for conn in conns:
        conn.close()

    # A worker that dies: its live gauges go, its counts stay.
    assert daemon.proc is not None
    parent_pid = daemon.proc.pid
    shared = os.path.join(daemon.workdir, "data", f"metrics-{parent_pid}")
    dead = min(workers)
    assert os.path.exists(os.path.join(shared, f"gauge_livesum_{dead}.db"))
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(os.path.join(shared, f"gauge_livesum_{dead}.db")))
    assert os.path.exists(os.path.join(shared, f"counter_{dead}.db"))
    daemon.wait_ready()  # its successor
    text = daemon.get("/metrics").body.decode()
    assert metric(text, "ironfunctions_run_requests_total" + route) == total

    assert daemon.stop() == -signal.SIGTERM
    assert not os.path.exists(shared)  # removed with the node
    assert "Traceback" not in daemon.log()


def test_the_parents_agent_sees_the_whole_nodes_load_and_says_drain_until_the_workers_are_gone(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    agent_port = free_port()
    daemon: Daemon = daemon_factory(env={
        "WORKERS": "2", "NODE_ID": f"views-agent-{os.getpid()}", "MAX_CONCURRENCY": "2",
        "LB_AGENT_PORT": str(agent_port), "DRAIN_GRACE": "1s",
    })
    daemon.add_route("a", "/slow", image_tag("sleep"), timeout=30, config={"SLEEP": "4"})
    wait_for(lambda: ask_agent(agent_port) == "up ready 100%\n")  # Docker up and both workers ready

    # 16 calls over fresh connections, so over both workers: 2 run, 14 wait. The parent
    # knows the node's calls in flight only from its workers' reports.
    with ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(daemon.post, "/r/a/slow", "") for _ in range(16)]
        wait_for(lambda: daemon.get("/stats").json()["Queue"] >= 10)
        wait_for(lambda: ask_agent(agent_port) == "up ready 10%\n", timeout=6)
        assert all(c.result(timeout=60).status in (200, 503) for c in calls)

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(daemon.post, "/r/a/slow", "")
        wait_for(lambda: daemon.get("/stats").json()["Running"] == 1)
        assert daemon.proc is not None
        proc = daemon.proc
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while (answer := ask_agent(agent_port)) != "drain\n":
            assert answer.startswith("up ready")
        assert time.monotonic() - sent < 0.1, "the agent must say drain within 100 ms of SIGTERM"
        answers = set()
        while not slow.done():  # the workers drain: the agent still answers, and only drain
            answers.add(ask_agent(agent_port))
            time.sleep(0.05)
        assert answers == {"drain\n"}
        reply = slow.result()
        assert (reply.status, reply.body) == (200, b"slept 4\n")
    assert proc.wait(30) == -signal.SIGTERM
    daemon.proc = None
    with pytest.raises(OSError):
        ask_agent(agent_port)
    log = daemon.log()
    assert "Load-balancer agent answers drain" in log and "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_the_parents_docker_probe_is_up_on_the_engine_and_down_on_a_hung_one(
    test_images: dict[str, str], hung_engine: str,  # noqa: F811
) -> None:
    up = DockerProbe(reactor)
    hung = DockerProbe(reactor, hung_engine, timeout=1)
    up.startService()
    hung.startService()
    try:
        assert await up.probe() is True
        began = time.monotonic()
        answers = [hung.probe(), hung.probe()]  # one engine call in flight for both
        assert [await a for a in answers] == [False, False]
        assert time.monotonic() - began < 3
    finally:
        await up.stopService()
        await hung.stopService()
