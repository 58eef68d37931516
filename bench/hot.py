"""Hot-function benchmark (issue 6). Same run, same machine, one daemon
(LOG_LEVEL=info, access log off, DOCKER_NETWORK=none, the embedded SQLite store, so
every call's record is written as in production; ``--db memory`` for memory://, whose
call records stay in the daemon's memory and so count in its RSS):

1. ``GET /version`` p50 over one keep-alive connection: the framework's floor (Klein
   on twisted.web); ``POST /r/bench/none`` (404), the floor of the ``/r/`` channel.
2. Sequential ``POST /r/bench/hot`` (static C function ``iftest/hotfn:1``), keep-alive:
   p50, p99, and the daemon's CPU per call: with http.client, with a minimal raw-socket
   client (http.client's own parsing costs ~0.1-0.2 ms of each round trip on this
   machine), and with ``wrk -t1 -c1`` (the load generator as a sequential C client).
3. ``wrk -t2 -c8 -d10s`` POST to the hot route with max_concurrency 2 (``--max-concurrency``;
   1, the default of a route, runs one container, and with workers the calls reaching
   the worker without it are forwarded through the parent): req/s, p50, p99;
   the daemon's peak RSS; CPU split (daemon, dockerd, containerd shims, containerd,
   the function containers) from /proc/<pid>/stat deltas over the wrk run.
4. The engine's attach relay alone (docker-py attach socket, no daemon) versus a unix
   socket bind-mounted into the container with the static bridge
   (``ironfunctions/bridge/ifbridge.c``) as entrypoint wrapper: round-trip p50/p99.

Steps 2-3 run once per ``HOT_TRANSPORT`` (``--transport attach|socket|both``, default
socket, the default) and per ``WORKERS`` setting (``--workers``, default both: one
process, ``WORKERS=1``, and the default, a worker per core, side by side, a fresh daemon
each, ``--rounds`` times alternated), then print the default's ratio to one process
(issue 15: >= 1.6x the calls/s at 8 connections, sequential p50 within 10 %). The CPU
split lists the parent and each worker apart.

Targets: sequential hot p50 <= 0.5 ms; >= 3,500 hot calls/s at 8 connections.

    PYTHONPATH=. python bench/hot.py [--workers both|N|default] [--rounds N]
        [--transport attach|socket|both] [--no-floor] [--db sqlite|memory]
        [--max-concurrency N]
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import PeakRss, percentile  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd, image_tag  # noqa: E402

IMAGE = image_tag("hotfn")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def processes() -> dict[int, str]:
    """pid -> group name for the processes whose CPU we split."""
    groups: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        name = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
        if name == "dockerd":
            groups[int(entry)] = "dockerd"
        elif name.startswith("containerd-shim"):
            groups[int(entry)] = "containerd shims"
        elif name == "containerd":
            groups[int(entry)] = "containerd"
        elif name == "hotfn":
            groups[int(entry)] = "function containers"
    return groups



def sequential(port: int, method: str, path: str, body: bytes | None, n: int, status: int = 200) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(n):
        began = time.perf_counter()
        conn.request(method, path, body=body)
        reply = conn.getresponse()
        reply.read()
        times.append((time.perf_counter() - began) * 1000)
        assert reply.status == status, reply.status
    conn.close()
    return times


def raw_sequential(port: int, path: str, body: bytes, n: int) -> list[float]:
    """Like ``sequential`` with a minimal client: one prepared request written to a
    TCP_NODELAY socket, the answer framed by its Content-Length. http.client's own
    header parsing (email.parser) costs ~0.1 ms per call on the client's side."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(), len(body), body)
    times = []
    for _ in range(n):
        began = time.perf_counter()
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", data[:end]).group(1))  # type: ignore[union-attr]
                if len(data) >= end + 4 + length:
                    break
        times.append((time.perf_counter() - began) * 1000)
        assert data.startswith(b"HTTP/1.1 200 "), data[:40]
    sock.close()
    return times


def wrk(url: str, script: str, threads: int = 2, connections: int = 8, seconds: int = 10) -> tuple[float, str, str]:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print(out)
    return rps, p50, p99


REQUEST = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nFn-Call-Id: x\r\n\r\nhello"


def round_trips(send, receive, n: int = 3000) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(200):
        send(REQUEST)
        receive()
    times = []
    for _ in range(n):
        began = time.perf_counter()
        send(REQUEST)
        receive()
        times.append((time.perf_counter() - began) * 1000)
    return times


def receive_response(sock: socket.socket, multiplexed: bool) -> None:
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"hello")):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("stream closed")
        if multiplexed:  # strip the engine's 8-byte frame headers
            payload = b""
            while chunk:
                size = struct.unpack(">BxxxL", chunk[:8])[1]
                payload += chunk[8:8 + size]
                chunk = chunk[8 + size:]
            chunk = payload
        data += chunk


def relay_floor() -> None:
    import docker

    api = docker.APIClient(version="1.41")
    host_config = api.create_host_config(network_mode="none")
    container = api.create_container(IMAGE, stdin_open=True, host_config=host_config)
    attach = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    raw = getattr(attach, "_sock", attach)
    api.start(container)
    try:
        times = round_trips(raw.sendall, lambda: receive_response(raw, True))
    finally:
        api.remove_container(container, force=True)
    print(f"engine attach relay alone (docker-py socket): p50 {statistics.median(times):.3f} ms  "
          f"p99 {percentile(times, 99):.3f} ms")

    with tempfile.TemporaryDirectory(prefix="ifbridge-") as work:
        bridge = ensure_bridge()
        sockdir = os.path.join(work, "sock")
        os.mkdir(sockdir)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(os.path.join(sockdir, "s.sock"))
        listener.listen(1)
        host_config = api.create_host_config(network_mode="none", binds={
            bridge: {"bind": "/ifbridge", "mode": "ro"}, sockdir: {"bind": "/ifsock", "mode": "rw"}})
        container = api.create_container(IMAGE, entrypoint=["/ifbridge", "/ifsock/s.sock", "/hotfn"],
                                         host_config=host_config)
        api.start(container)
        try:
            conn, _ = listener.accept()
            times = round_trips(conn.sendall, lambda: receive_response(conn, False))
            conn.close()
        finally:
            api.remove_container(container, force=True)
            listener.close()
    print(f"unix socket + static bridge (no relay):       p50 {statistics.median(times):.3f} ms  "
          f"p99 {percentile(times, 99):.3f} ms")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Hot-function benchmark (issues 6 and 15)")
    parser.add_argument("--transport", choices=["attach", "socket", "both"], default="socket")
    parser.add_argument("--workers", default="both",
                        help="WORKERS of the daemon: 'both' runs WORKERS=1 (one process) and the default "
                             "(one worker per core) side by side and prints the ratio; or a number, or 'default'")
    parser.add_argument("--rounds", type=int, default=1, help="alternated rounds of the comparison")
    parser.add_argument("--no-floor", action="store_true", help="skip the relay-alone comparison")
    parser.add_argument("--db", choices=["sqlite", "memory"], default="sqlite",
                        help="datastore: the embedded default, or memory:// (one process: WORKERS does not apply)")
    parser.add_argument("--max-concurrency", type=int, default=2,
                        help="the hot route's max_concurrency (1: one container for the node, calls forwarded)")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    settings = ["1", "default"] if args.workers == "both" else [args.workers]
    figures: dict[tuple[str, str], list[Figures]] = {}
    for round_ in range(1, args.rounds + 1):
        for transport in (["attach", "socket"] if args.transport == "both" else [args.transport]):
            for workers in settings:
                print(f"== round {round_}: HOT_TRANSPORT={transport} WORKERS={workers}")
                figures.setdefault((transport, workers), []).append(
                    bench_daemon(transport, args.db, workers, args.max_concurrency))
    if args.workers == "both":
        print("== one process (WORKERS=1) against the default (a worker per core), same run")
        for transport in (["attach", "socket"] if args.transport == "both" else [args.transport]):
            one, default = figures[(transport, "1")], figures[(transport, "default")]
            ratios = [d.rps / o.rps for o, d in zip(one, default)]
            p50s = [d.seq_p50 / o.seq_p50 for o, d in zip(one, default)]
            print(f"HOT_TRANSPORT={transport}: wrk -t2 -c8 calls/s "
                  + " / ".join(f"{o.rps:,.0f} -> {d.rps:,.0f}" for o, d in zip(one, default))
                  + f": {min(ratios):.2f}x to {max(ratios):.2f}x (target >= 1.6x at max_concurrency 2); "
                  + "sequential p50 (minimal client) "
                  + " / ".join(f"{o.seq_p50:.3f} -> {d.seq_p50:.3f} ms" for o, d in zip(one, default))
                  + f": {min(p50s):.2f}x to {max(p50s):.2f}x (target <= 1.10x)")
    if not args.no_floor:
        print("== the engine's relay alone vs the bridge (no daemon)")
        relay_floor()


class Figures:
    def __init__(self, rps: float, seq_p50: float) -> None:
        self.rps = rps
        self.seq_p50 = seq_p50


def node_processes(parent: int) -> dict[int, str]:
    """The daemon's processes: the parent and, with WORKERS > 1, its workers."""
    found = {parent: "daemon"}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError, IndexError):
            continue
        index = env.get(b"IRONFUNCTIONS_WORKER")
        if ppid == parent and index is not None:
            found[int(entry)] = f"worker {index.decode()}"
    if len(found) > 1:
        found[parent] = "parent"
    return found


def bench_daemon(transport: str, db: str, workers: str = "1", max_concurrency: int = 2) -> Figures:
    with tempfile.TemporaryDirectory() as workdir:
        datastore = {"DB_URL": "memory://"} if db == "memory" else {}
        node = {} if workers == "default" else {"WORKERS": workers}
        daemon = Daemon(workdir, env={**datastore, **node, "DOCKER_NETWORK": "none", "MQ_URL": "memory://"
                                      if db == "memory" else f"sqlite:///{workdir}/mq.db",
                                      "LOG_LEVEL": "info", "MAX_CONCURRENCY": "8",
                                      "HOT_TRANSPORT": transport}).start()
        # The daemon logs a line per event (metrics included) to daemon.log, as in production.
        try:
            reply = daemon.post("/v1/apps/bench/routes", {"route": {
                "path": "/hot", "image": IMAGE, "format": "http", "max_concurrency": max_concurrency}})
            assert reply.status == 200, reply.body
            pid = daemon.proc.pid  # type: ignore[union-attr]
            time.sleep(1)  # the workers are up
            mine = node_processes(pid)
            sequential(daemon.port, "GET", "/version", None, 500)
            sequential(daemon.port, "POST", "/r/bench/hot", b"hello", 500)
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
                script.write('wrk.method = "POST"\nwrk.body = "hello"\n')
            # Warm-up under load: every worker has its containers before the sequential
            # figures (a client's connection may land on any worker; a container
            # started during a figure's run is a cold start, not a hot call).
            wrk(daemon.url + "/r/bench/hot", script.name, seconds=2)

            n = 5000
            version = sequential(daemon.port, "GET", "/version", None, n)
            print(f"GET /version (floor), n={n}: p50 {statistics.median(version):.3f} ms  "
                  f"p99 {percentile(version, 99):.3f} ms")
            missing = sequential(daemon.port, "POST", "/r/bench/none", b"hello", n, status=404)
            print(f"POST /r/ to a missing route (the /r/ channel and route cache, no container), n={n}: "
                  f"p50 {statistics.median(missing):.3f} ms  p99 {percentile(missing, 99):.3f} ms")
            before = sum(cpu_seconds(p) for p in mine)
            hot = sequential(daemon.port, "POST", "/r/bench/hot", b"hello", n)
            used = sum(cpu_seconds(p) for p in mine) - before
            print(f"sequential hot calls, http.client, n={n}: p50 {statistics.median(hot):.3f} ms  "
                  f"p99 {percentile(hot, 99):.3f} ms; "
                  f"daemon CPU {used / n * 1000:.3f} ms/call")
            raw = raw_sequential(daemon.port, "/r/bench/hot", b"hello", n)
            print(f"sequential hot calls, minimal client, n={n}: p50 {statistics.median(raw):.3f} ms  "
                  f"p99 {percentile(raw, 99):.3f} ms")
            rps1, p50_1, p99_1 = wrk(daemon.url + "/r/bench/hot", script.name, threads=1, connections=1, seconds=5)
            print(f"sequential hot calls, wrk -t1 -c1 -d5s (a C client): p50 {p50_1}  p99 {p99_1}  "
                  f"({rps1:.0f} calls/s; target p50 <= 0.5 ms)")
            wrk(daemon.url + "/r/bench/hot", script.name, seconds=2)  # warm-up: every worker's containers

            moves_before = daemon.log().count("moves to the worker its calls come from")
            with PeakRss(pid) as peak:
                groups = processes()
                groups.update(mine)
                cpu_before = {p: cpu_seconds(p) for p in groups}
                began = time.monotonic()
                result: list[tuple[float, str, str]] = []
                runner = threading.Thread(target=lambda: result.append(wrk(daemon.url + "/r/bench/hot", script.name)))
                runner.start()
                time.sleep(1)
                for p, name in {**processes(), **wrk_processes()}.items():  # anything started since
                    if p not in groups:
                        groups[p] = name
                        cpu_before[p] = cpu_seconds(p)
                last: dict[int, float] = {}  # wrk is gone when it ends: its CPU as last seen
                while runner.is_alive():
                    for p in groups:
                        seen = cpu_seconds(p)
                        if seen:
                            last[p] = seen
                    runner.join(0.2)
                wall = time.monotonic() - began
                split: dict[str, float] = {}
                for p, name in groups.items():
                    split[name] = split.get(name, 0.0) + max(0.0, (cpu_seconds(p) or last.get(p, 0.0)) - cpu_before[p])
            os.unlink(script.name)
            moves = daemon.log().count("moves to the worker its calls come from")
            print(f"hot containers moved to the worker their calls reach: {moves_before} before the wrk -c8 run, "
                  f"{moves - moves_before} during it")
            rps, p50, p99 = result[0]
            print(f"wrk -t2 -c8 -d10s POST, max_concurrency {max_concurrency}: {rps:.0f} req/s  p50 {p50}  p99 {p99}  "
                  f"(target >= 3500 req/s); peak RSS of the parent {peak.kb / 1024:.1f} MiB")
            cores = os.cpu_count() or 1
            print(f"CPU during the wrk run ({wall:.1f} s, {cores} cores = {cores * 100}%):")
            for name, seconds in sorted(split.items(), key=lambda kv: -kv[1]):
                print(f"  {name:22s} {seconds / wall * 100:5.1f}% of one core")
            return Figures(rps, statistics.median(raw))
        finally:
            daemon.stop()


def wrk_processes() -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "wrk":
                        found[int(entry)] = "wrk"
            except OSError:
                pass
    return found


if __name__ == "__main__":
    main()
