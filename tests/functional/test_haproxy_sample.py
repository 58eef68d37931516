"""The shipped ``etc/haproxy.cfg`` (SPEC §9): valid for the HAProxy CI installs, and,
with three real daemons behind a real HAProxy running it (only addresses and ports
rewritten, ``tests/haproxy.py``), it gives route affinity and takes a draining node out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from ironfunctions.models import LABEL_KIND, LABEL_NODE
from tests.daemon import Daemon, DaemonFactory, http
from tests.haproxy import SAMPLE, Balancer, rewrite_sample
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import free_port

def haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(path), "haproxy is not installed (scripts/setup.sh installs it from apt)"
    return path


def test_the_shipped_config_is_valid() -> None:
    result = subprocess.run([haproxy(), "-c", "-f", SAMPLE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rewrite_changes_only_addresses_and_ports() -> None:
    with open(SAMPLE) as f:
        sample = f.read()
    config = rewrite_sample(sample, 1000, 1001, [(2000, 2001), (2010, 2011)])
    servers = [line.strip() for line in config.splitlines() if line.strip().startswith("server ")]
    assert servers == ["server node1 127.0.0.1:2000 agent-port 2001", "server node2 127.0.0.1:2010 agent-port 2011"] * 2
    strip = re.compile(r"^\s*(server |bind ).*\n", re.MULTILINE)
    assert strip.sub("", config) == strip.sub("", sample)


class Cluster:
    def __init__(self, nodes: list[Daemon], node_ids: list[str], balancer: Balancer) -> None:
        self.nodes = nodes
        self.node_ids = node_ids
        self.balancer = balancer

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """HAProxy's view of each server of ``backend`` (its stats CSV row)."""
        return self.balancer.stat(backend)

    def call(self, path: str, body: str = "") -> int:
        return http("POST", self.balancer.url + path, body, timeout=30).status


@pytest.fixture
def cluster(test_images: dict[str, str], daemon_factory: DaemonFactory, tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    node_ids = [f"hap-{os.getpid()}-{i}" for i in range(3)]
    nodes = [
        daemon_factory(env={"NODE_ID": node_id, "MAX_CONCURRENCY": "8", "LB_AGENT_PORT": str(free_port()),
                            "DRAIN_GRACE": "6s"}, start=False)
        for node_id in node_ids
    ]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    names = [f"node{i + 1}" for i in range(3)]
    balancer = Balancer(str(tmp_path / "haproxy"), free_port(), {n: d.port for n, d in zip(names, nodes)},
                        {n: int(d.env["LB_AGENT_PORT"]) for n, d in zip(names, nodes)})
    balancer.start(timeout=20)
    try:
        yield Cluster(nodes, node_ids, balancer)
    finally:
        balancer.stop()


def hot_containers(node_ids: list[str]) -> dict[str, int]:
    counts = {}
    for node_id in node_ids:
        args = ["docker", "ps", "-q", f"--filter=label={LABEL_NODE}={node_id}", f"--filter=label={LABEL_KIND}=hot"]
        counts[node_id] = len(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split())
    return counts


def test_hot_routes_stay_on_their_node_and_a_draining_node_gets_no_new_calls(cluster: Cluster) -> None:
    # 5 routes: not a multiple of the 3 nodes, else round robin would keep each route on
    # one node too (call n goes to node n % 3) and the test could not tell them apart.
    routes = [f"/hot{i}" for i in range(5)]
    for node in cluster.nodes:  # each node has its own embedded store: the same routes on each
        for route in routes:
            node.add_route("lbapp", route, image_tag("hotfn"), format="http")
    for _ in range(3):
        for route in routes:
            assert cluster.call(f"/r/lbapp{route}", "x") == 200
    counts = hot_containers(cluster.node_ids)
    # Round robin starts one per route per node (15); the hash keeps a route on one node.
    assert sum(counts.values()) <= 1.5 * len(routes), counts

    busiest = max(range(3), key=lambda i: counts[cluster.node_ids[i]])
    leaving = cluster.nodes[busiest]
    assert leaving.proc is not None
    name = f"node{busiest + 1}"
    assert {row["weight"] for row in cluster.servers("functions").values()} == {"100"}  # idle: 100 %
    leaving.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    seen = []
    while True:
        row = cluster.servers("functions")[name]
        seen.append((round(time.monotonic() - sent, 2), row["status"], row["weight"], row["last_agt"]))
        if row["status"].startswith("DRAIN"):  # "DRAIN (agent)"
            drained_at = row["stot"]  # calls (sessions) HAProxy had sent it
            break
        assert time.monotonic() - sent < 1.5, seen  # agent-inter 1s
        time.sleep(0.05)
    for _ in range(2):
        for route in routes:
            assert cluster.call(f"/r/lbapp{route}", "y") == 200
    # It would still serve (its grace is 6 s), but HAProxy sent it nothing new.
    assert cluster.servers("functions")[name]["stot"] == drained_at, seen
    assert leaving.proc.wait(30) == -signal.SIGTERM
    leaving.proc = None
