"""Hostile clients benchmark (issue 13, items 3-4): one daemon with the default
settings (``HEADER_TIMEOUT`` 20 s, ``MAX_BUFFERED`` 64 MiB...) under a file limit of
``--nofile`` (so its connection cap is small enough to reach from here):

1. ``/health`` latency (p50, p99, max over 50 requests, a fresh connection each, as a
   balancer's checks) while the node is at its connection cap, held by idle sockets.
   Target: answered (200), < 100 ms.
2. The daemon's RSS growth under 30 stalled 6 MB uploads (each sends its head and all
   but 1,000 bytes of its body, then nothing). Target <= 100 MiB. Then a normal call
   still answers.
3. Seconds until a client that sends a request head one header line a second is
   answered 408 and closed. Target <= 25 s (HEADER_TIMEOUT 20 s).

    PYTHONPATH=. python bench/hostile_conns.py [--nofile 512]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile, rss_kb  # noqa: E402
from tests.daemon import Daemon  # noqa: E402


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def health_times(daemon: Daemon, n: int = 50) -> tuple[list[float], list[int]]:
    times, statuses = [], []
    for _ in range(n):
        began = time.perf_counter()
        statuses.append(daemon.get("/health", timeout=10).status)
        times.append((time.perf_counter() - began) * 1000)
    return times, statuses


def health_at_cap(daemon: Daemon, cap: int) -> tuple[list[float], list[int], int]:
    """Hold ``cap`` + 50 idle connections; time 50 /health checks; give the statuses
    and how many of 20 ordinary requests beyond the cap were refused with a 503."""
    held = [connect(daemon.port) for _ in range(cap + 50)]
    try:
        time.sleep(3)  # the burst's refusals linger 2 s (http/refusal.py)
        times, statuses = health_times(daemon)
        refused = 0
        for _ in range(20):
            sock = connect(daemon.port)
            sock.sendall(b"GET /r/app/path HTTP/1.1\r\nHost: h\r\n\r\n")
            try:
                refused += sock.recv(12) == b"HTTP/1.1 503"
            except ConnectionResetError:
                pass
            sock.close()
        return times, statuses, refused
    finally:
        for sock in held:
            sock.close()


def stalled_uploads(daemon: Daemon, n: int = 30, length: int = 6_000_000) -> tuple[float, int]:
    assert daemon.proc is not None
    before = rss_kb(daemon.proc.pid)
    socks = []
    body = b"s" * (length - 1000)
    try:
        for _ in range(n):
            sock = connect(daemon.port)
            sock.sendall(b"POST /r/app/path HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length + body)
            socks.append(sock)
        time.sleep(2)
        growth = (rss_kb(daemon.proc.pid) - before) / 1024
        status = daemon.get("/version").status
        return growth, status
    finally:
        for sock in socks:
            sock.close()


def slow_head(port: int, out: list[float]) -> None:
    sock = connect(port)
    began = time.monotonic()
    sock.sendall(b"POST /r/app/path HTTP/1.1\r\nHost: h\r\n")
    sock.settimeout(1.0)
    n = 0
    answer = b""
    while time.monotonic() - began < 120:
        try:
            sock.sendall(b"X-Slow-%d: y\r\n" % n)
            n += 1
            chunk = sock.recv(4096)
            answer += chunk
            if not chunk or answer:
                break
        except socket.timeout:
            continue
        except OSError:
            break
    out.append(time.monotonic() - began)
    out.append(float(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0.0)
    sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nofile", type=int, default=512, help="the daemon's file limit (soft = hard)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the idle sockets
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(workdir, {"MAX_CONCURRENCY": "4"})
        daemon.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
        daemon.start()
        try:
            cap = int(re.search(r"connection_cap=(\d+)", daemon.log()).group(1))  # type: ignore[union-attr]
            slow: list[float] = []
            thread = threading.Thread(target=slow_head, args=(daemon.port, slow))
            base, _ = health_times(daemon)
            thread.start()
            times, statuses, refused = health_at_cap(daemon, cap)
            growth, status = stalled_uploads(daemon)
            thread.join()
        finally:
            daemon.stop()
    ok = sum(1 for s in statuses if s == 200)
    print(f"hostile clients: file limit {args.nofile}, connection cap {cap}, default settings")
    print(f"  /health at the cap ({cap}+50 idle sockets): {ok}/{len(statuses)} answered 200, "
          f"p50 {percentile(times, 50):.1f} ms, p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms "
          f"(target < 100 ms); {refused}/20 requests beyond the cap answered 503")
    print(f"  /health with no load, for comparison: p50 {percentile(base, 50):.1f} ms, "
          f"p99 {percentile(base, 99):.1f} ms")
    print(f"  RSS growth under 30 stalled 6 MB uploads: {growth:.1f} MiB (target <= 100 MiB); "
          f"a call meanwhile: {status}")
    print(f"  slow-head client (a header line a second) closed after {slow[0]:.1f} s with {int(slow[1])} "
          f"(target <= 25 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
