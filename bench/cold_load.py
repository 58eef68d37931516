"""Overload benchmark (issue 3): "memory stays bounded with 500 concurrent slow calls
queued (measure it)".

One daemon (``MAX_CONCURRENCY=8`` by default, DOCKER_NETWORK=none, memory://
datastore), one sync route on ``iftest/sleep:1`` with ``SLEEP=2``. Each round fires 500
concurrent ``POST /r/bench/slow`` (one thread and one connection per call, all released
at once by a barrier) while the daemon's VmRSS is sampled from ``/proc/<pid>/status``
every 100 ms. Per round it reports: RSS before / peak / after, how many replies were
200, 503 with Retry-After, and anything else (a bug), the reply-time p50/p99/max, and
whether every call was answered within the bound. Several rounds show whether memory
comes back between bursts rather than growing round after round.

Expected shape: 8 calls run at a time (~2.3 s each with the container start), the rest
wait in admission for at most its bound (10 s) and then get 503 + Retry-After; all 500
are answered in about bound + one call.

    PYTHONPATH=. python bench/cold_load.py [--calls 500] [--concurrency 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402

IMAGE = image_tag("sleep")
ANSWER_BOUND_S = 30.0  # admission bound (10 s) + one call + slack: later than this is a hang


def proc_status(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Samples the daemon's VmRSS (kB) and thread count every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.rss: list[int] = []
        self.threads: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rss.append(proc_status(self.pid, "VmRSS"))
            self.threads.append(proc_status(self.pid, "Threads"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_call(port: int, barrier: threading.Barrier, i: int) -> tuple[str, float, str]:
    """POST once; return (outcome, seconds from release to answer, detail)."""
    barrier.wait()
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_BOUND_S + 30)
    try:
        conn.request("POST", "/r/bench/slow", body=str(i).encode())
        resp = conn.getresponse()
        body = resp.read()
        took = time.monotonic() - began
        if resp.status == 200:
            return "200", took, ""
        if resp.status == 503 and resp.getheader("Retry-After"):
            return "503+Retry-After", took, ""
        return f"other {resp.status}", took, body[:200].decode("utf-8", "replace")
    except Exception as e:  # a hang or a reset is a finding, not a crash of the bench
        return f"other {type(e).__name__}", time.monotonic() - began, str(e)[:200]
    finally:
        conn.close()


def containers_of(node_id: str) -> int:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.ironfunctions.node={node_id}"],
                         capture_output=True, text=True).stdout
    return len(out.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8, help="the daemon's MAX_CONCURRENCY")
    parser.add_argument("--sleep", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    ensure_dockerd()
    build_test_images()
    node_id = f"bench-load-{os.getpid()}"
    bad = 0
    with tempfile.TemporaryDirectory() as workdir:
        # One app: it may use the whole node (APP_MAX_CONCURRENCY's default is half).
        daemon = Daemon(workdir, env={"DOCKER_NETWORK": "none", "MAX_CONCURRENCY": str(args.concurrency),
                                      "APP_MAX_CONCURRENCY": str(args.concurrency),
                                      "DB_URL": "memory://", "LOG_LEVEL": "warn", "NODE_ID": node_id}).start()
        try:
            reply = daemon.post("/v1/apps/bench/routes", {"route": {
                "path": "/slow", "image": IMAGE, "timeout": 30, "config": {"SLEEP": str(args.sleep)}}})
            assert reply.status == 200, reply
            assert daemon.post("/r/bench/slow", "warm", timeout=60).status == 200
            assert daemon.proc is not None
            pid = daemon.proc.pid
            print(f"{args.calls} concurrent sync calls to a {args.sleep:g} s function, MAX_CONCURRENCY="
                  f"{args.concurrency}, one connection per call, RSS sampled every 100 ms")
            print(f"{'round':>5} {'RSS before':>10} {'peak':>8} {'after':>8} {'threads':>7} {'200':>5} "
                  f"{'503+RA':>6} {'other':>5} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'wall s':>6}")
            for rnd in range(1, args.rounds + 1):
                time.sleep(1)
                before = proc_status(pid, "VmRSS")
                barrier = threading.Barrier(args.calls)
                with Sampler(pid) as sampler, ThreadPoolExecutor(args.calls) as pool:
                    began = time.monotonic()
                    results = list(pool.map(lambda i: one_call(daemon.port, barrier, i), range(args.calls)))
                    wall = time.monotonic() - began
                time.sleep(2)  # let the last containers go and the heap settle
                after = proc_status(pid, "VmRSS")
                outcomes = Counter(r[0] for r in results)
                times = [r[1] for r in results]
                others = {k: v for k, v in outcomes.items() if k.startswith("other")}
                bad += sum(others.values())
                late = sum(1 for t in times if t > ANSWER_BOUND_S)
                bad += late
                print(f"{rnd:>5} {before / 1024:>8.1f}Mi {max(sampler.rss) / 1024:>6.1f}Mi "
                      f"{after / 1024:>6.1f}Mi {max(sampler.threads):>7} {outcomes['200']:>5} "
                      f"{outcomes['503+Retry-After']:>6} {sum(others.values()):>5} "
                      f"{percentile(times, 50):>6.2f} {percentile(times, 99):>6.2f} {max(times):>6.2f} "
                      f"{wall:>6.2f}")
                for kind, count in sorted(others.items()):
                    detail = next(r[2] for r in results if r[0] == kind)
                    print(f"      BUG: {count} x {kind}: {detail}")
                if late:
                    print(f"      BUG: {late} calls answered after {ANSWER_BOUND_S:g} s")
            stats = daemon.get("/stats")
            if stats.status == 200:
                print(f"daemon /stats after the rounds: {stats.body.decode()[:300]}")
        finally:
            daemon.stop()
    left = containers_of(node_id)
    print(f"containers of this node left after stop: {left}")
    if bad or left:
        print("FAIL: unexpected replies, late answers or leftover containers")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
