"""Hostile load, async part (issue 13 item 6): per-app bounds of the async queue.

Every daemon runs with ``NUM_ASYNC=0`` (nothing drains the queue) and
``DOCKER_NETWORK=none``; Redis is a throwaway redis-server.

(a) refused: ``--flood`` submits of one app on a Redis queue with ``ASYNC_MAX_QUEUED=100``;
    how many were 202 and how many 429 (target: exactly 100 accepted, the rest 429 with
    ``Retry-After``, nothing else), and a second app's submit after the flood (202).
(b) memory: 60 × 1 MiB posts with ``ASYNC_MAX_QUEUED_BYTES=4MiB`` and with the default
    (256 MiB), on the embedded default (SQLite datastore and queue) and on ``memory://``
    queue: the daemon's RSS growth (peak while posting, minus before) and the SQLite
    queue file's growth. The finding of issue 13 was +86 MiB for these posts. On Redis
    the items sit in redis-server instead: its ``used_memory`` growth is printed.
(c) submit cost: p50 and p99 of sequential async POSTs (one keep-alive connection,
    ``DB_URL=memory://`` so the queue push dominates) on Redis, this checkout vs
    ``--before`` (a git revision before the bound, exported with ``git archive``),
    interleaved rounds. Target: p50 within 10 % (or 0.1 ms) of before. The default
    ``--before`` is the commit before issues 12 and 13, so (c) is the cost of the whole
    async submit path since then: the bound, and the request now stored with the record
    (SPEC §10); ``--before 4ca6486`` (the bound's merge) leaves the bound out of it.

    PYTHONPATH=. .venv/bin/python bench/hostile_quotas.py [--before 1505077]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import PeakRss, percentile, rss_kb  # noqa: E402
from tests.daemon import REPO, Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402
from tests.servers import RedisServer, start_redis_server, stop_redis_server  # noqa: E402

MIB = 1024 * 1024


def daemon(workdir: str, name: str, repo: str | None = None, **env: str) -> Daemon:
    settings = {"DOCKER_NETWORK": "none", "LOG_LEVEL": "warn", "NUM_ASYNC": "0", **env}
    if repo is not None:
        settings["PYTHONPATH"] = repo
    d = Daemon(os.path.join(workdir, name), env=settings).start()
    for app in ("flood", "other"):
        route = {"path": "/job", "image": image_tag("cat"), "type": "async"}
        assert d.post(f"/v1/apps/{app}/routes", {"route": route}).status == 200
    return d


def post_many(port: int, path: str, body: bytes, n: int) -> tuple[dict[int, int], list[float], bool]:
    """POST ``n`` times on one keep-alive connection: (count per status, latencies in
    ms, whether every 429 had a Retry-After)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: dict[int, int] = {}
    latencies = []
    retry_after = True
    for _ in range(n):
        began = time.perf_counter()
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        latencies.append((time.perf_counter() - began) * 1000)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 429 and not resp.getheader("retry-after"):
            retry_after = False
    conn.close()
    return statuses, latencies, retry_after


def redis_used_memory(redis: RedisServer) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
        data = b""
        while b"used_memory:" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("no used_memory in INFO")


def refused(workdir: str, redis: RedisServer, flood: int) -> list[str]:
    redis.flush()
    d = daemon(workdir, "refused", MQ_URL=redis.url(prefix="refused"), ASYNC_MAX_QUEUED="100")
    try:
        statuses, latencies, retry_after = post_many(d.port, "/r/flood/job", b"{}", flood)
        other = d.post("/r/other/job", b"{}").status
    finally:
        d.stop()
    ok = statuses.get(202) == 100 and statuses.get(429) == flood - 100 and retry_after and other == 202
    return [
        f"(a) {flood} submits, ASYNC_MAX_QUEUED=100, Redis: 202 x{statuses.get(202, 0)}, "
        f"429 x{statuses.get(429, 0)}, other {sum(v for k, v in statuses.items() if k not in (202, 429))}; "
        f"Retry-After on every 429: {retry_after}; a second app after the flood: {other}; "
        f"p50 {percentile(latencies, 50):.2f} ms  {'OK' if ok else 'FAIL'}",
    ]


def memory(workdir: str, redis: RedisServer) -> list[str]:
    rows = []
    body = b"x" * MIB
    for (queue, mq_env), (label, bound) in itertools.product(
            (("SQLite", {}), ("memory", {"MQ_URL": "memory://"})), (("4MiB", "4MiB"), ("default", None))):
        env = {**mq_env, **({} if bound is None else {"ASYNC_MAX_QUEUED_BYTES": bound})}
        d = daemon(workdir, f"memory-{queue}-{label}", **env)
        try:
            assert d.proc is not None
            mq = os.path.join(d.workdir, "data", "mq.db")
            mq_before = _size(mq)
            time.sleep(0.5)
            before = rss_kb(d.proc.pid)
            with PeakRss(d.proc.pid, every=0.01) as peak:
                statuses, _, _ = post_many(d.port, "/r/flood/job", body, 60)
            after = rss_kb(d.proc.pid)
            rows.append(
                f"(b) 60 x 1 MiB posts, {queue + ',':<7} ASYNC_MAX_QUEUED_BYTES={label:<8}: "
                f"202 x{statuses.get(202, 0):<3} 429 x{statuses.get(429, 0):<3} "
                f"daemon RSS +{(peak.kb - before) / 1024:.1f} MiB peak, +{(after - before) / 1024:.1f} MiB after"
                + (f"; queue file +{(_size(mq) - mq_before) / MIB:.1f} MiB" if queue == "SQLite" else "")
            )
        finally:
            d.stop()
    for label, bound in (("4MiB", "4MiB"), ("default", None)):
        redis.flush()
        env = {"MQ_URL": redis.url(prefix=f"mem{label}")}
        if bound is not None:
            env["ASYNC_MAX_QUEUED_BYTES"] = bound
        d = daemon(workdir, f"memory-redis-{label}", **env)
        try:
            before = redis_used_memory(redis)
            statuses, _, _ = post_many(d.port, "/r/flood/job", body, 60)
            rows.append(
                f"(b) 60 x 1 MiB posts, Redis,  ASYNC_MAX_QUEUED_BYTES={label:<8}: 202 x{statuses.get(202, 0):<3} "
                f"429 x{statuses.get(429, 0):<3} redis used_memory +{(redis_used_memory(redis) - before) / MIB:.1f} MiB"
            )
        finally:
            d.stop()
    return rows


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def submit_cost(workdir: str, redis: RedisServer, before_repo: str, rounds: int, per_round: int) -> list[str]:
    redis.flush()
    daemons = {
        "before": daemon(workdir, "cost-before", before_repo, MQ_URL=redis.url(prefix="before"), DB_URL="memory://"),
        "after": daemon(workdir, "cost-after", None, MQ_URL=redis.url(prefix="after"), DB_URL="memory://"),
    }
    latencies: dict[str, list[float]] = {name: [] for name in daemons}
    try:
        for name, d in daemons.items():  # warm-up
            post_many(d.port, "/r/other/job", b"{}", 200)
        for _ in range(rounds):
            for name, d in daemons.items():
                statuses, lat, _ = post_many(d.port, "/r/flood/job", b"{}", per_round)
                assert statuses == {202: per_round}, statuses
                latencies[name] += lat
    finally:
        for d in daemons.values():
            d.stop()
    p50 = {name: percentile(v, 50) for name, v in latencies.items()}
    ok = p50["after"] <= max(p50["before"] * 1.10, p50["before"] + 0.1)
    return [
        f"(c) async POST on Redis, {rounds} x {per_round} interleaved, DB_URL=memory://: "
        + "; ".join(f"{name} p50 {p50[name]:.3f} ms p99 {percentile(latencies[name], 99):.3f} ms" for name in daemons)
        + f"  {'OK' if ok else 'FAIL'} (after/before {p50['after'] / p50['before']:.3f})"
    ]


def export(revision: str, into: str) -> str:
    """The tree of ``revision`` of this repository, in ``into`` (no worktree touched)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="1505077", help="git revision without the bound, for (c)")
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=1000)
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    redis = start_redis_server()
    rows: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-quotas-") as workdir:
            before_repo = os.path.join(workdir, "before-src")
            os.makedirs(before_repo)
            export(args.before, before_repo)
            rows += refused(workdir, redis, args.flood)
            rows += memory(workdir, redis)
            rows += submit_cost(workdir, redis, before_repo, args.rounds, args.per_round)
    finally:
        stop_redis_server(redis)
    print("\n".join(rows))
    if any(row.endswith("FAIL") or "FAIL (" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
