"""Hostile stderr benchmark (issue 13, SPEC §8 "A function's output is bounded").

One daemon (embedded default, ``DOCKER_NETWORK=none``) runs functions that flood their
stderr, while a client probes ``/health`` every 10 ms (at least 50 probes, for as long
as the flood lasts):

- cold: ``iftest/stderr-flood:1`` writing 100,000 short lines;
- cold: the same writing 200 KB of bare newlines;
- hot: ``iftest/hot-chatter:1`` writing 100,000 lines during a call (read by the
  reactor, chunk by chunk).

For each: the daemon's log lines about the call (its ``call_id``), all log lines and
bytes the daemon wrote meanwhile, and ``/health`` p50/p99/max. Targets: at most 200
log lines per 100,000 stderr lines, ``/health`` p99 < 100 ms. Prints ``FAIL:`` lines
and exits 1 when one is missed.

    PYTHONPATH=. python bench/hostile_stderr.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile  # noqa: E402
from tests.daemon import Daemon, Reply  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402
from tests.probe import while_probing  # noqa: E402

MAX_LOG_LINES = 200  # per 100,000 stderr lines
MAX_HEALTH_P99_MS = 100.0


def flood(daemon: Daemon, name: str, call: Callable[[], Reply], stderr_lines: int) -> list[str]:
    """Run one flooding call while probing ``/health``; print its figures; return the
    targets it missed."""
    before = os.path.getsize(daemon.log_path)
    lines_before = daemon.log().count("\n")
    began = time.perf_counter()
    reply, latencies = while_probing(daemon.url, call)
    took = time.perf_counter() - began
    assert reply.status == 200, reply
    call_id = reply.header("fn-call-id")
    time.sleep(1.0)  # what the daemon logs after the answer (metrics, trailing stderr)
    log = daemon.log()
    about_call = sum(1 for line in log.splitlines() if f"call_id={call_id}" in line)
    written = log.count("\n") - lines_before
    size = os.path.getsize(daemon.log_path) - before
    ms = [t * 1000 for t in latencies]
    p99 = percentile(ms, 99)
    print(f"  {name:<34} {stderr_lines:>7} {about_call:>7} {written:>7} {size / 1024:>8.1f}"
          f" {percentile(ms, 50):>7.1f} {p99:>7.1f} {max(ms):>7.1f} {len(ms):>6} {took:>6.2f}")
    missed = []
    if about_call > MAX_LOG_LINES:
        missed.append(f"FAIL: {name}: {about_call} log lines about the call (target <= {MAX_LOG_LINES})")
    if p99 >= MAX_HEALTH_P99_MS:
        missed.append(f"FAIL: {name}: /health p99 {p99:.1f} ms (target < {MAX_HEALTH_P99_MS:.0f} ms)")
    return missed


def main() -> int:
    ensure_dockerd()
    build_test_images()
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(workdir, env={"DOCKER_NETWORK": "none", "MAX_CONCURRENCY": "8",
                                      "NODE_ID": "bench-stderr"}).start()
        try:
            for path, image, fields in (
                ("/lines", "stderr-flood", {"timeout": 120}),
                ("/newlines", "stderr-flood", {"timeout": 120, "config": {"NEWLINES": "200000"}}),
                ("/hot", "hot-chatter", {"timeout": 120, "format": "http"}),
            ):
                route = {"path": path, "image": image_tag(image), **fields}
                assert daemon.post("/v1/apps/noisy/routes", {"route": route}).status == 200
            daemon.post("/r/noisy/hot", "warm")  # a started hot container: only the flood is timed
            print("hostile stderr: a function floods its stderr while /health is probed every 10 ms")
            print(f"  {'flood':<34} {'stderr':>7} {'call':>7} {'log':>7} {'log KiB':>8}"
                  f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'probes':>6} {'secs':>6}")
            missed = flood(daemon, "cold, 100,000 lines", lambda: daemon.post("/r/noisy/lines", timeout=120), 100_000)
            missed += flood(daemon, "cold, 200 KB of newlines", lambda: daemon.post("/r/noisy/newlines", timeout=120),
                            200_000)
            missed += flood(daemon, "hot call, 100,000 lines",
                            lambda: daemon.post("/r/noisy/hot", "flood-call", timeout=120), 100_000)
            print("  (stderr: lines written; call: daemon log lines with its call_id; log: all lines the daemon")
            print(f"   wrote meanwhile. Targets: call <= {MAX_LOG_LINES} per 100,000 lines,"
                  f" /health p99 < {MAX_HEALTH_P99_MS:.0f} ms)")
        finally:
            daemon.stop()
    for line in missed:
        print(line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
