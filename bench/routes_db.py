"""Route reads on SQLite vs Postgres, in one run (issue 4).

Starts a throwaway Postgres cluster (the test suite's ``tests/servers.py``, with
``pg_stat_statements`` loaded) and two daemons (``twistd -n ironfunctions``, the test
suite's ``tests/daemon.py``): one on SQLite, one on Postgres. Each gets the app
``bench`` with the route ``/hello``. Then, for each daemon:

- ``GET /v1/apps/bench/routes/hello``: the management API, one datastore read per call;
- ``POST /r/bench/nope``: an invocation of a missing route on an existing app. It goes
  through the invocation path's route lookup (``ironfunctions/routecache.py``) and
  answers 404 ``Route not found on that application`` without running a container, so
  its rate measures the lookup path.

Load comes from ``wrk`` (``apt-get install -y wrk``) when it is installed, else from a
small Python loop (keep-alive connections on threads; compare figures made with the
same tool). On Postgres the script counts the statements the daemon ran during each
measurement (``pg_stat_statements``) and fails (exit status 1) if ``/r/`` lookups hit the
database on every call: the cache allows one miss (two statements: route, then app) per
route per node per TTL (1 s).

Usage: ``python bench/routes_db.py [--duration 5] [--connections 4] [--tool auto|wrk|python]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import attrs  # noqa: E402
import psycopg2  # noqa: E402

from tests.daemon import Daemon  # noqa: E402
from tests.servers import PostgresCluster, start_postgres_cluster, stop_postgres_cluster  # noqa: E402

APP = "bench"
ROUTE = {"path": "/hello", "image": "iron/hello"}
CACHE_TTL_S = 1.0  # ironfunctions.routecache.DEFAULT_TTL_S
WARMUP_S = 1.0


@attrs.frozen
class Result:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    unexpected: int  # replies with another status than the one expected, plus socket errors


# -- Load generators


_WRK_POST = 'wrk.method = "POST"\nwrk.body = "x"\nwrk.headers["Content-Type"] = "text/plain"\n'
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def run_wrk(method: str, url: str, expect: int, duration: float, connections: int) -> Result:
    """``wrk`` for ``duration`` seconds; ``expect`` is the status every reply should have."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_POST if method == "POST" else "")
    try:
        argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--latency",
                "-s", script.name, url]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if found is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    requests = int(found.group(1))
    seconds = _ms(found.group(2) + found.group(3)) / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(non_2xx.group(1)) if non_2xx else 0
    if expect >= 300:
        bad = requests - bad  # every reply should have been non-2xx
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sockets:
        bad += sum(int(n) for n in sockets.groups())
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (p50 and p99 and rps):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return Result(requests, seconds, float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), bad)


def run_python(method: str, url: str, expect: int, duration: float, connections: int) -> Result:
    """A load loop without wrk: ``connections`` threads, each on a keep-alive connection."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    body = b"x" if method == "POST" else None
    latencies: list[list[float]] = [[] for _ in range(connections)]
    bad = [0] * connections
    started = time.monotonic()
    deadline = started + duration

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == expect
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                ok = False
            latencies[i].append((time.perf_counter() - t0) * 1000)
            if not ok:
                bad[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    merged = sorted(x for per in latencies for x in per)

    def pct(p: float) -> float:
        return merged[min(len(merged) - 1, int(math.ceil(p * len(merged))) - 1)] if merged else 0.0

    return Result(len(merged), seconds, len(merged) / seconds, pct(0.50), pct(0.99), sum(bad))


# -- Servers


def enable_pg_stat_statements(cluster: PostgresCluster, db_url: str) -> None:
    """Load pg_stat_statements (needs a restart) and create its view in ``db_url``'s database."""
    cluster.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    cluster.restart()
    conn = psycopg2.connect(db_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        conn.close()


def statements(db_url: str) -> tuple[int, int]:
    """(all statements, statements reading ``routes``) run so far in ``db_url``'s database,
    not counting this script's own."""
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(sum(calls), 0),"
                " coalesce(sum(calls) FILTER (WHERE query ILIKE '%%from routes%%'), 0)"
                " FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query NOT ILIKE '%%pg_stat_statements%%'"
            )
            total, routes = cur.fetchone()
        return int(total), int(routes)
    finally:
        conn.close()


@contextlib.contextmanager
def daemons(workdir: str, pg_url: str) -> Iterator[dict[str, Daemon]]:
    """A SQLite and a Postgres daemon, started together; stopped at the end."""
    nodes = {
        "sqlite": Daemon(os.path.join(workdir, "sqlite"),
                         {"DB_URL": f"sqlite:///{workdir}/sqlite/ironfunctions.db", "NODE_ID": "bench-sqlite"}),
        "postgres": Daemon(os.path.join(workdir, "postgres"), {"DB_URL": pg_url, "NODE_ID": "bench-postgres"}),
    }
    try:
        for node in nodes.values():
            node.start(wait=False)
        for node in nodes.values():
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            try:
                node.stop()
            except RuntimeError as e:
                print(f"warning: {e}", file=sys.stderr)


# -- The benchmark


def check(node: Daemon, method: str, path: str, status: int, message: str | None = None) -> None:
    """One request first: the load runs only against an endpoint that answers as expected."""
    reply = node.request(method, path, "x" if method == "POST" else None)
    if reply.status != status or (message and reply.json()["error"]["message"] != message):
        raise RuntimeError(f"{method} {path}: {reply.status} {reply.body!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement [5]")
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections [4]")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    load = run_wrk if tool == "wrk" else run_python

    workdir = tempfile.mkdtemp(prefix="ironfunctions-bench-")
    cluster = start_postgres_cluster()
    failures: list[str] = []
    notes: list[str] = []
    try:
        pg_url = cluster.create_database()
        enable_pg_stat_statements(cluster, pg_url)
        print(f"load: {tool}, {args.duration:g} s per measurement, {args.connections} connections, "
              f"{os.cpu_count()} CPUs (load generator and daemon share them)")
        print(f"{'backend':9} {'endpoint':37} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'requests':>9} {'bad':>4} {'db stmts':>9}", flush=True)
        with daemons(workdir, pg_url) as nodes:
            for backend, node in nodes.items():
                reply = node.post(f"/v1/apps/{APP}/routes", {"route": ROUTE})
                if reply.status != 200:
                    raise RuntimeError(f"creating the route on {backend}: {reply.status} {reply.body!r}")
                cases = [
                    ("GET", f"/v1/apps/{APP}/routes/hello", 200, None),
                    ("POST", f"/r/{APP}/nope", 404, "Route not found on that application"),
                ]
                for method, path, status, message in cases:
                    check(node, method, path, status, message)
                    load(method, node.url + path, status, WARMUP_S, args.connections)
                    before = statements(pg_url) if backend == "postgres" else None
                    result = load(method, node.url + path, status, args.duration, args.connections)
                    stmts = ""
                    if before is not None:
                        after = statements(pg_url)
                        total, routes = after[0] - before[0], after[1] - before[1]
                        stmts = str(total)
                        if path.startswith("/r/"):
                            # One miss per TTL for the one key, each a route then an app query.
                            allowed = 2 * (math.ceil(result.seconds / CACHE_TTL_S) + 1)
                            if total > allowed:
                                failures.append(f"/r/ lookups ran {total} statements in {result.seconds:.1f}s "
                                                f"(at most {allowed} allowed): the route cache is bypassed")
                            notes.append(f"/r/ lookups on postgres: {result.requests} requests, {total} statements "
                                           f"({routes} on routes) in {result.seconds:.1f}s = "
                                           f"{total / max(result.requests, 1):.5f} per request")
                        else:
                            notes.append(f"GET route on postgres: {result.requests} requests, {total} statements "
                                        f"({routes} on routes) = {total / max(result.requests, 1):.2f} per request")
                    if result.unexpected:
                        failures.append(f"{backend} {method} {path}: {result.unexpected} unexpected replies")
                    print(f"{backend:9} {method + ' ' + path:37} {result.rps:9.1f} {result.p50_ms:8.2f} "
                          f"{result.p99_ms:8.2f} {result.requests:9d} {result.unexpected:4d} {stmts:>9}", flush=True)
        for note in notes:
            print(note)
    finally:
        stop_postgres_cluster(cluster)
        shutil.rmtree(workdir, ignore_errors=True)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
