"""Cluster benchmark (issue 14): three daemons on one Postgres and one Redis, behind
HAProxy running the shipped ``etc/haproxy.cfg`` (only addresses rewritten,
``tests/haproxy.py``) and two variants of it, all in one run on one machine:

1. Containers: K hot routes (static C ``iftest/hotfn:1``) called one call at a time,
   three rounds, through a ``roundrobin`` variant (``balance roundrobin`` in place of
   the consistent hash) and through the shipped config; hot containers started in the
   cluster for each (a separate app each, so neither inherits the other's containers).
2. Hot throughput and p99: the same K hot routes, 8 connections, one node directly vs
   the three nodes behind the shipped config.
3. One node made slow (``2 x MAX_CONCURRENCY`` long calls sent to it directly, so HAProxy
   sees no connections it could balance away from): p50/p99 and errors of hot calls on
   the K routes through the shipped config (agent on: a first window, with the cold
   starts of the routes the lower weight moved, then a second) and through a variant
   without ``agent-check`` (same nodes, same moment), and the weights HAProxy holds.

Load from ``wrk`` when installed (``--tool wrk|python``), else a loop of keep-alive
connections on threads.

    PYTHONPATH=. python bench/cluster.py [--routes 5] [--seconds 8] [--tool wrk|python]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile  # noqa: E402
from ironfunctions.models import LABEL_APP, LABEL_KIND  # noqa: E402
from tests.cluster import Cluster, start_cluster  # noqa: E402
from tests.haproxy import Balancer  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402
from tests.servers import free_port  # noqa: E402

MAX_CONCURRENCY = 12  # above what 8 connections on K routes need: fewer slots than routes thrash (every call a cold start)
SLOW_CALL_S = 50  # long enough for the agent to react and both measurements to run


def roundrobin(config: str) -> str:
    return re.sub(r"balance uri path-only\n\s*hash-type consistent\n\s*hash-balance-factor 150\n",
                  "balance roundrobin\n", config)


def no_agent(config: str) -> str:
    return config.replace(" agent-check agent-inter 1s", "")


def hot_containers(app: str) -> int:
    out = subprocess.run(["docker", "ps", "-q", f"--filter=label={LABEL_APP}={app}",
                          f"--filter=label={LABEL_KIND}=hot"], capture_output=True, text=True, check=True).stdout
    return len(out.split())


def add_routes(cluster: Cluster, app: str, k: int) -> list[str]:
    paths = []
    for i in range(k):
        reply = cluster.request("POST", f"/v1/apps/{app}/routes",
                                {"route": {"path": f"/h{i}", "image": image_tag("hotfn"), "format": "http"}})
        assert reply.status == 200, reply.body
        paths.append(f"/r/{app}/h{i}")
    return paths


def load_python(port: int, paths: list[str], seconds: float, connections: int) -> tuple[float, list[float], int]:
    """Closed loop: ``connections`` keep-alive clients, each cycling through ``paths``;
    (req/s, latencies in ms, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = offset
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            path = paths[n % len(paths)]
            n += 1
            began = time.perf_counter()
            try:
                conn.request("POST", path, body=b"x")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append((time.perf_counter() - began) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - began), latencies, errors[0]


WRK_SCRIPT = """
paths = {%s}
n = 0
wrk.method = "POST"
wrk.body = "x"
request = function()
  n = n + 1
  return wrk.format(nil, paths[(n %% #paths) + 1])
end
"""


def load_wrk(port: int, paths: list[str], seconds: float, connections: int) -> tuple[float, str, str, str, str]:
    """(req/s, p50, p99, max, errors) from ``wrk --latency`` with a script cycling through ``paths``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths))
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s", "--latency",
                              "-s", f.name, f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    top = re.search(r"^\s*Latency\s+\S+\s+\S+\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    errors = (bad.group(1) if bad else "0") + (f" ({sock.group(1)})" if sock else "")
    return rps, p50, p99, top, errors


def measure(tool: str, port: int, paths: list[str], seconds: float, connections: int = 8,
            cluster: Cluster | None = None) -> str:
    """One load run's figures; with ``cluster``, then each node's p99 wait_time over the run."""
    if cluster is not None:
        before = wait_buckets(cluster)
        figures = measure(tool, port, paths, seconds, connections)
        return figures + "\n" + " " * 30 + wait_p99(before, wait_buckets(cluster))
    if tool == "wrk":
        rps, p50, p99, top, errors = load_wrk(port, paths, seconds, connections)
        return f"{rps:9.1f} {p50:>9} {p99:>9} {top:>9}  {errors}"
    rps_f, latencies, bad = load_python(port, paths, seconds, connections)
    return (f"{rps_f:9.1f} {percentile(latencies, 50):7.2f}ms {percentile(latencies, 99):7.2f}ms "
            f"{max(latencies):7.0f}ms  {bad}")


_WAIT_BUCKET = re.compile(r'^ironfunctions_run_wait_time_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.M)


def wait_buckets(cluster: Cluster) -> list[dict[float, float]]:
    """Per node: ``run.wait_time`` histogram from its ``/metrics``, le (s) -> calls, all routes summed."""
    out = []
    for node in cluster.nodes:
        counts: dict[float, float] = {}
        for le, n in _WAIT_BUCKET.findall(node.get("/metrics").body.decode()):
            counts[float(le)] = counts.get(float(le), 0.0) + float(n)
        out.append(counts)
    return out


def wait_p99(before: list[dict[float, float]], after: list[dict[float, float]]) -> str:
    """Each node's p99 ``wait_time`` between two snapshots, as the bucket bound it is
    under (what Prometheus' histogram_quantile would say, give or take a bucket)."""
    parts = []
    for i, (b, a) in enumerate(zip(before, after)):
        cum = {le: a[le] - b.get(le, 0.0) for le in sorted(a)}
        total = cum.get(float("inf"), 0.0)
        if not total:
            parts.append(f"node{i + 1}: -")
            continue
        le = next(le for le, n in cum.items() if n >= 0.99 * total)
        parts.append(f"node{i + 1}: <={le * 1000:.0f}ms ({total:.0f} calls)")
    return "wait_time p99 " + ", ".join(parts)


def warm(port: int, paths: list[str], rounds: int = 3) -> None:
    for _ in range(rounds):
        for path in paths:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", path, body=b"warm")
            conn.getresponse().read()
            conn.close()


def weights(balancer: Balancer) -> str:
    return " ".join(f"{n}={row['weight']}" for n, row in sorted(balancer.stat("functions").items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", type=int, default=5)  # not a multiple of 3: else round robin keeps a route on one node too
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--tool", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    k = args.routes
    print(f"load: {args.tool}, {args.seconds:.0f} s per measurement, 8 connections, {os.cpu_count()} CPUs "
          f"(load generator, HAProxy and 3 daemons share them); {k} hot routes; MAX_CONCURRENCY={MAX_CONCURRENCY}")
    with tempfile.TemporaryDirectory(prefix="ifbench-cluster-") as workdir, contextlib.ExitStack() as stack:
        cluster = stack.enter_context(start_cluster(workdir, 3, shipped=True, name="bench",
                                                    env={"MAX_CONCURRENCY": str(MAX_CONCURRENCY)}))

        def variant(name: str, edit: Callable[[str], str]) -> Balancer:
            balancer = Balancer(os.path.join(workdir, name), free_port(), dict(cluster.balancer.servers),
                                dict(cluster.balancer.agents or {}), edit)
            stack.callback(balancer.stop)
            balancer.start()
            return balancer

        rr, blind = variant("roundrobin", roundrobin), variant("noagent", no_agent)

        print("\n1. hot containers for K routes, one call at a time, 3 rounds")
        for name, balancer in (("roundrobin", rr), ("shipped", cluster.balancer)):
            paths = add_routes(cluster, f"c{name[:4]}", k)
            warm(balancer.port, paths)
            print(f"   {name:<11} {hot_containers(f'c{name[:4]}'):3d} containers for {k} routes")

        print("\n2. hot throughput, K routes        req/s       p50       p99       max  errors")
        paths = add_routes(cluster, "tput", k)
        warm(cluster.nodes[0].port, paths)
        warm(cluster.balancer.port, paths)
        print(f"   one node, direct          {measure(args.tool, cluster.nodes[0].port, paths, args.seconds, cluster=cluster)}")
        print(f"   3 nodes, shipped config   {measure(args.tool, cluster.balancer.port, paths, args.seconds, cluster=cluster)}")

        print(f"\n3. one node slow ({2 * MAX_CONCURRENCY} calls of {SLOW_CALL_S} s sent to node1 directly)")
        paths = add_routes(cluster, "slow", k)
        warm(cluster.balancer.port, paths)
        warm(blind.port, paths)
        slow = add_routes(cluster, "busy", 1)[0]
        busy = [threading.Thread(target=cluster.nodes[0].post, args=(slow, "x"), daemon=True,
                                 kwargs={"headers": {"X-Mode": "sleep", "X-Sleep": str(SLOW_CALL_S)},
                                         "timeout": SLOW_CALL_S + 30}) for _ in range(2 * MAX_CONCURRENCY)]
        began = time.monotonic()
        for t in busy:
            t.start()
        while cluster.balancer.stat("functions")["node1"]["weight"] == "100" and time.monotonic() - began < 15:
            time.sleep(0.2)
        print(f"   agent weights after {time.monotonic() - began:.1f} s: {weights(cluster.balancer)}")
        print("                                    req/s       p50       p99       max  errors")
        # The first window after the weight dropped includes the cold starts of the
        # routes it moved to other nodes; the second is the steady state.
        print(f"   with the agent, first     {measure(args.tool, cluster.balancer.port, paths, args.seconds, cluster=cluster)}")
        print(f"   with the agent, then      {measure(args.tool, cluster.balancer.port, paths, args.seconds, cluster=cluster)}")
        print(f"   without agent-check       {measure(args.tool, blind.port, paths, args.seconds, cluster=cluster)}")
        print(f"   weights HAProxy holds: shipped {weights(cluster.balancer)}; without agent {weights(blind)}")
        print(f"   ({time.monotonic() - began:.1f} s after the slow calls began)")
        for t in busy:
            t.join(SLOW_CALL_S + 30)


if __name__ == "__main__":
    main()
