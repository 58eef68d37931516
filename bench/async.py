"""Async-call benchmark (issue 5): the SQLite queue (embedded default) and the Redis
queue (a throwaway redis-server), same run, same machine.

For each queue one daemon (DOCKER_NETWORK=none, LOG_LEVEL=warn, call records in the
embedded SQLite datastore, ``NUM_ASYNC`` and ``MAX_CONCURRENCY`` at their defaults
unless given) with two async routes:

- ``/hot``: the static C hot function ``iftest/hotfn:1`` (format ``http``), so the
  queue, the records and the workers dominate, not container starts;
- ``/cold``: ``iftest/cat:1`` (format ``default``), one fresh container per call.

Per route:

(a) submits/s: ``--calls`` ``POST /r/bench/<route>`` (-> 202) from ``--clients``
    threads, each on its own keep-alive ``http.client`` connection (Python, not wrk:
    a fixed number of calls is what the completion figures need). The workers run
    while the submits arrive, as in production.
(b) calls/s completed: calls / (last record's ``completed_at`` - first ``created_at``),
    from the records (``GET /v1/apps/bench/calls?path=...``, paged), once none is
    ``queued`` or ``running``.
(c) end-to-end latency p50/p99: ``completed_at - created_at`` of those records.
(d) idle wake-up: on the idle daemon, ``--wakeups`` single calls, each submitted only
    after the previous finished and a pause, so every worker is blocked in ``reserve``.
    ``start50``: p50 of the final record's ``started_at - created_at``, which for a
    cold call includes the container start (the record's ``started_at`` is when the
    function started); ``wake50``/``wake99``: the queue's part, that less the record's
    ``start_ms`` and ``wait_ms``. Target: wake p50 <= 50 ms.

Record times have millisecond resolution. Any call not ending ``success`` is counted.

    PYTHONPATH=. python bench/async.py [--calls 1000] [--cold-calls 100] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any, Iterator, cast

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402
from tests.servers import start_redis_server, stop_redis_server  # noqa: E402

WAKE_TARGET_MS = 50


def ms(stamp: str) -> int:
    """``2024-01-02T03:04:05.678Z`` -> ms since the epoch."""
    return int(round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000))


def submit_all(port: int, path: str, calls: int, clients: int) -> tuple[float, list[str], list[str]]:
    """POST ``calls`` times from ``clients`` keep-alive connections; return
    (seconds, accepted call ids, unexpected replies)."""
    counter = iter(range(calls))
    lock = threading.Lock()
    accepted: list[str] = []
    bad: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            try:
                conn.request("POST", path, body=f"call {i}".encode())
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                bad.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            if resp.status == 202:
                accepted.append(json.loads(body)["call_id"])
            else:
                bad.append(f"{resp.status} {body[:100]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - began, accepted, bad


def records(daemon: Daemon, path: str, status: str | None = None, per_page: int = 100) -> Iterator[dict[str, Any]]:
    """Every call record of ``path`` (newest first), following the cursor."""
    cursor = None
    while True:
        query = f"path={path}&per_page={per_page}" + (f"&status={status}" if status else "")
        if cursor:
            query += f"&cursor={cursor}"
        page = daemon.get(f"/v1/apps/bench/calls?{query}").json()
        yield from page["calls"]
        cursor = page["next_cursor"]
        if not cursor:
            return


def pending(daemon: Daemon, path: str) -> int:
    return sum(len(daemon.get(f"/v1/apps/bench/calls?path={path}&status={s}&per_page=1").json()["calls"])
               for s in ("queued", "running"))


def wait_record(daemon: Daemon, call_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = daemon.get(f"/v1/apps/bench/calls/{call_id}")
        if reply.status == 200:
            call: dict[str, Any] = reply.json()["call"]
            if call["status"] not in ("queued", "running"):
                return call
        time.sleep(0.02)
    raise RuntimeError(f"call {call_id} not finished after {timeout}s")


def submit_one(daemon: Daemon, path: str) -> str:
    reply = daemon.post(f"/r/bench{path}", "one")
    assert reply.status == 202, reply
    return cast(str, reply.json()["call_id"])


def throughput(daemon: Daemon, path: str, calls: int, clients: int, warm_ids: set[str]) -> dict[str, Any]:
    seconds, accepted, bad = submit_all(daemon.port, f"/r/bench{path}", calls, clients)
    deadline = time.monotonic() + 600
    while pending(daemon, path) and time.monotonic() < deadline:
        time.sleep(0.25)
    mine = [r for r in records(daemon, path) if r["id"] not in warm_ids]
    done = [r for r in mine if r["status"] == "success"]
    created = [ms(r["created_at"]) for r in mine]
    completed = [ms(r["completed_at"]) for r in done]
    latency = [ms(r["completed_at"]) - ms(r["created_at"]) for r in done]
    span = (max(completed) - min(created)) / 1000 if done else float("nan")
    return {
        "accepted": len(accepted), "submit_s": seconds, "submits_per_s": len(accepted) / seconds,
        "bad_submits": bad, "done": len(done), "not_success": len(mine) - len(done),
        "missing": len(set(accepted) - {r["id"] for r in mine}),
        "calls_per_s": len(done) / span if done else 0.0, "span_s": span,
        "p50": percentile(latency, 50) if latency else float("nan"),
        "p99": percentile(latency, 99) if latency else float("nan"),
    }


def wakeups(daemon: Daemon, path: str, n: int) -> tuple[list[int], list[int]]:
    """(started_at - created_at, the same less start_ms and wait_ms) of ``n`` single
    calls on the idle node. A finished record's ``started_at`` is when the function
    itself started (after its container started, ``start_ms``, and after any wait for a
    container slot, ``wait_ms``); the second figure is the queue's part: submit ->
    reserved by a worker -> record marked running -> handed to the runner."""
    raw, queue = [], []
    for _ in range(n):
        time.sleep(0.3)  # idle: every worker back in reserve
        call = wait_record(daemon, submit_one(daemon, path))
        assert call["status"] == "success", call
        started = ms(call["started_at"]) - ms(call["created_at"])
        raw.append(started)
        queue.append(started - (call["start_ms"] or 0) - (call["wait_ms"] or 0))
    return raw, queue


def bench_queue(name: str, env: dict[str, str], workdir: str, args: argparse.Namespace) -> list[str]:
    daemon = Daemon(os.path.join(workdir, name), env={
        "DOCKER_NETWORK": "none", "LOG_LEVEL": "warn", **env}).start()
    rows = []
    try:
        for path, image, fmt in (("/hot", "hotfn", "http"), ("/cold", "cat", "default")):
            route = {"path": path, "image": image_tag(image), "type": "async", "format": fmt, "timeout": 30}
            assert daemon.post("/v1/apps/bench/routes", {"route": route}).status == 200
        warm_ids: set[str] = set()
        for path in ("/hot", "/cold"):  # hot containers up, images and code paths warm
            ids = [submit_one(daemon, path) for _ in range(4)]
            for call_id in ids:
                assert wait_record(daemon, call_id)["status"] == "success"
            warm_ids.update(ids)
        for path, calls in (("/hot", args.calls), ("/cold", args.cold_calls)):
            time.sleep(1)
            t = throughput(daemon, path, calls, args.clients, warm_ids)
            time.sleep(1)
            w, q = wakeups(daemon, path, args.wakeups)
            rows.append(
                f"{name:<7} {path:<6} {t['accepted']:>6} {t['submits_per_s']:>9.0f} {t['calls_per_s']:>9.1f} "
                f"{t['p50']:>8.0f} {t['p99']:>8.0f} {percentile(w, 50):>8.0f} {percentile(q, 50):>7.0f} "
                f"{percentile(q, 99):>7.0f} {len(t['bad_submits']) + t['not_success'] + t['missing']:>4}"
            )
            for problem in t["bad_submits"][:3]:
                rows.append(f"        unexpected submit reply: {problem}")
            if t["not_success"] or t["missing"]:
                rows.append(f"        {t['not_success']} calls not success, {t['missing']} accepted calls without a record")
            rows.append(f"        submit phase {t['submit_s']:.2f} s; first submit -> last completion {t['span_s']:.2f} s; "
                        f"queue wake-ups (ms): {sorted(q)}")
            if percentile(q, 50) > WAKE_TARGET_MS:
                rows.append(f"        FAIL: queue wake-up p50 {percentile(q, 50):.0f} ms > {WAKE_TARGET_MS} ms")
    finally:
        daemon.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="async calls to the hot route")
    parser.add_argument("--cold-calls", type=int, default=100, help="async calls to the cold route")
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitting connections")
    parser.add_argument("--wakeups", type=int, default=20, help="single calls on the idle node")
    parser.add_argument("--num-async", help="NUM_ASYNC (default: the daemon's, 2 x CPUs)")
    parser.add_argument("--max-concurrency", help="MAX_CONCURRENCY (default: the daemon's)")
    args = parser.parse_args(argv)
    ensure_dockerd()
    build_test_images()
    env = {}
    if args.num_async:
        env["NUM_ASYNC"] = args.num_async
    if args.max_concurrency:
        env["MAX_CONCURRENCY"] = args.max_concurrency
    redis = start_redis_server()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            rows = bench_queue("sqlite", env, workdir, args)
            rows += bench_queue("redis", {**env, "MQ_URL": redis.url()}, workdir, args)
    finally:
        stop_redis_server(redis)
    print(f"async calls: {args.clients} submitting keep-alive connections (Python threads), "
          f"NUM_ASYNC={args.num_async or 'default (2 x CPUs = %d)' % (2 * (os.cpu_count() or 1))}, "
          f"MAX_CONCURRENCY={args.max_concurrency or 'default'}, records in SQLite, {os.cpu_count()} CPUs shared")
    print(f"{'queue':<7} {'route':<6} {'calls':>6} {'submit/s':>9} {'done/s':>9} {'e2e p50':>8} {'e2e p99':>8} "
          f"{'start50':>8} {'wake50':>7} {'wake99':>7} {'bad':>4}")
    print(f"{'':<7} {'':<6} {'':>6} {'':>9} {'':>9} {'ms':>8} {'ms':>8} {'ms':>8} {'ms':>7} {'ms':>7}")
    for row in rows:
        print(row)
    return 1 if any("FAIL" in r or "unexpected" in r or "not success" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
