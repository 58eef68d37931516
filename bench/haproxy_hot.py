"""Nodes per core behind the shipped HAProxy config (issue 15): what HAProxy costs a hot
call on this machine, and what a second node on the same machine gives.

Two daemons as ``hot.py`` starts them (each on its own embedded SQLite store, with the
same app ``bench`` and hot routes ``/hot1`` ... ``/hot4`` on ``iftest/hotfn:1``,
``max_concurrency`` 2, ``APP_MAX_CONCURRENCY=8``; ``LB_AGENT_PORT`` and ``TRUSTED_PROXIES=127.0.0.1`` as
``etc/haproxy.cfg`` expects), and HAProxy with ``etc/haproxy.cfg`` where only the
addresses are changed (``bind`` and ``server`` lines, as its header says). Each
measurement is ``wrk -t2 -c8 -d10s`` POST after a 3 s warm-up of the same load (which starts
the hot containers it needs), with the CPU split over the run:

1. ``direct``: wrk to node 1, one route;
2. ``haproxy, 1 node``: the same through HAProxy with node 1 as its only server (HAProxy's
   own cost per call);
3. ``haproxy, 2 nodes, 1 route``: the shipped hashing sends a route to one node; a busy
   one spills to the next (``hash-balance-factor``);
4. ``haproxy, 2 nodes, 4 routes``: wrk spreads calls over four routes (a Lua script).

Each node runs as an operator starts it: a worker process per core (``--workers``,
``WORKERS``; ``1`` for one process), its CPU counted over the parent and its workers.

    PYTHONPATH=. python bench/haproxy_hot.py [--transport attach|socket] [--seconds 10]
        [--workers default|N]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.hot import IMAGE, cpu_seconds, node_processes, processes, sequential, wrk  # noqa: E402
from tests.daemon import REPO, Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd  # noqa: E402
from tests.servers import free_port  # noqa: E402

ROUTES = ("/hot1", "/hot2", "/hot3", "/hot4")
ONE_ROUTE = 'wrk.method = "POST"\nwrk.body = "hello"\n'
FOUR_ROUTES = ONE_ROUTE + (
    'local i = 0\n'
    'request = function()\n'
    '  i = i + 1\n'
    '  return wrk.format(nil, "/r/bench/hot" .. ((i % 4) + 1))\n'
    'end\n'
)


def haproxy_config(port: int, stats_port: int, nodes: list[tuple[int, int]]) -> str:
    """etc/haproxy.cfg with only the addresses changed."""
    with open(os.path.join(REPO, "etc", "haproxy.cfg")) as f:
        text = f.read()
    text = text.replace("bind :8000", f"bind 127.0.0.1:{port}")
    text = text.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats_port}")
    text = text.replace("log stdout format raw local0", "")  # no log line per call on the bench's pipe
    servers = "".join(f"    server node{i + 1} 127.0.0.1:{api} agent-port {agent}\n"
                      for i, (api, agent) in enumerate(nodes))
    return re.sub(r"(    server node\d 127\.0\.0\.1:\d+ agent-port \d+\n)+", lambda _: servers, text)


class Haproxy:
    def __init__(self, workdir: str, nodes: list[tuple[int, int]]) -> None:
        self.port = free_port()
        self.path = os.path.join(workdir, f"haproxy-{self.port}.cfg")
        with open(self.path, "w") as f:
            f.write(haproxy_config(self.port, free_port(), nodes))
        subprocess.run(["haproxy", "-c", "-q", "-f", self.path], check=True)
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_up(self, timeout: float = 15) -> None:
        """Until its health checks have marked the servers up (a call gets 200)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sequential(self.port, "POST", "/r/bench/hot1", b"hello", 50)
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("haproxy's servers did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def measure(label: str, url: str, script: str, nodes: list[Daemon], proxy: Haproxy | None, seconds: int) -> None:
    wrk(url, script, seconds=3)  # warm-up: the hot containers this load needs are started here
    groups = processes()
    for i, node in enumerate(nodes):
        for pid in node_processes(node.proc.pid):  # type: ignore[union-attr]
            groups[pid] = f"node{i + 1}"  # the parent and its workers together
    if proxy is not None:
        groups[proxy.proc.pid] = "haproxy"
    before = {p: cpu_seconds(p) for p in groups}
    began = time.monotonic()
    rps, p50, p99 = wrk(url, script, seconds=seconds)
    wall = time.monotonic() - began
    split: dict[str, float] = {}
    for p, name in groups.items():
        split[name] = split.get(name, 0.0) + max(0.0, cpu_seconds(p) - before[p])
    shares = "  ".join(f"{name} {used / wall * 100:.0f}%" for name, used in sorted(split.items()))
    print(f"{label:28s} {rps:6.0f} req/s  p50 {p50:>8s}  p99 {p99:>8s}  | CPU: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["attach", "socket"], default="socket")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", default="default", help="each node's WORKERS ('default': one per core)")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    with tempfile.TemporaryDirectory() as workdir:
        nodes: list[Daemon] = []
        proxies: list[Haproxy] = []
        scripts = []
        try:
            for i in range(2):
                agent = free_port()
                nodes.append(Daemon(os.path.join(workdir, f"node{i}"), env={
                    # The embedded SQLite queue, as hot.py: a memory:// one keeps a node in one process.
                    "DOCKER_NETWORK": "none", "MQ_URL": f"sqlite:///{workdir}/node{i}-mq.db", "LOG_LEVEL": "info",
                    "MAX_CONCURRENCY": "8",
                    # One app (as README says of a node serving one app): with the default
                    # (half), 4 routes x max_concurrency 2 of one app would take each
                    # other's idle containers call after call (SPEC's reclaim under pressure).
                    "APP_MAX_CONCURRENCY": "8",
                    "HOT_TRANSPORT": args.transport, "LB_AGENT_PORT": str(agent),
                    "TRUSTED_PROXIES": "127.0.0.1", "NODE_ID": f"bench-node{i}",
                    **({} if args.workers == "default" else {"WORKERS": args.workers})}).start())
                nodes[-1].agent_port = agent  # type: ignore[attr-defined]
                for route in ROUTES:
                    nodes[-1].add_route("bench", route, IMAGE, format="http", max_concurrency=2)
                    sequential(nodes[-1].port, "POST", "/r/bench" + route, b"hello", 200)
            for text in (ONE_ROUTE, FOUR_ROUTES):
                with tempfile.NamedTemporaryFile("w", suffix=".lua", dir=workdir, delete=False) as f:
                    f.write(text)
                scripts.append(f.name)
            one, four = scripts
            addresses = [(n.port, n.agent_port) for n in nodes]  # type: ignore[attr-defined]
            proxies = [Haproxy(workdir, addresses[:1]), Haproxy(workdir, addresses)]
            for proxy in proxies:
                proxy.wait_up()
            print(f"wrk -t2 -c8 -d{args.seconds}s POST, HOT_TRANSPORT={args.transport}, WORKERS={args.workers}, "
                  f"{os.cpu_count()} CPUs shared by everything")
            measure("direct, node 1", nodes[0].url + "/r/bench/hot1", one, nodes[:1], None, args.seconds)
            measure("haproxy, 1 node", proxies[0].url + "/r/bench/hot1", one, nodes[:1], proxies[0], args.seconds)
            measure("haproxy, 2 nodes, 1 route", proxies[1].url + "/r/bench/hot1", one, nodes, proxies[1],
                    args.seconds)
            measure("haproxy, 2 nodes, 4 routes", proxies[1].url + "/r/bench/hot1", four, nodes, proxies[1],
                    args.seconds)
            measure("direct, node 1, 4 routes", nodes[0].url + "/r/bench/hot1", four, nodes[:1], None, args.seconds)
        finally:
            for proxy in proxies:
                proxy.stop()
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()
