"""How much of the machine is left while one daemon serves hot calls (issue 15).

One daemon as ``hot.py`` starts it (embedded SQLite store, ``LOG_LEVEL=info``,
``MAX_CONCURRENCY=8``, a hot route of ``iftest/hotfn:1`` with max_concurrency 2),
``wrk -t2 -c8 -d10s`` on the route after a 3 s warm-up; over 8 s of the run it reads
the machine's idle time from ``/proc/stat`` and the CPU of the daemon and of wrk
from ``/proc/<pid>/stat``. The idle share is the room a second process of the node
could use: it bounds what worker processes can add on this machine.

    PYTHONPATH=. python bench/idle_cpu.py [--transport attach|socket] [--runs N]
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

from bench.hot import cpu_seconds  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd, image_tag  # noqa: E402


def machine_idle() -> tuple[int, int]:
    """(idle + iowait ticks, all ticks) of every CPU so far."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def run(transport: str) -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(workdir, env={"LOG_LEVEL": "info", "MAX_CONCURRENCY": "8",
                                      "HOT_TRANSPORT": transport}).start()
        try:
            reply = daemon.post("/v1/apps/bench/routes", {"route": {
                "path": "/hot", "image": image_tag("hotfn"), "format": "http", "max_concurrency": 2}})
            assert reply.status == 200, reply.body
            script = os.path.join(workdir, "post.lua")
            with open(script, "w") as f:
                f.write('wrk.method = "POST"\nwrk.body = "hello"\n')
            url = daemon.url + "/r/bench/hot"
            subprocess.run(["wrk", "-t2", "-c8", "-d3s", "-s", script, url], capture_output=True, check=True)
            wrk = subprocess.Popen(["wrk", "-t2", "-c8", "-d10s", "-s", script, url],
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            pid = daemon.proc.pid  # type: ignore[union-attr]
            idle0, all0 = machine_idle()
            daemon0, wrk0 = cpu_seconds(pid), cpu_seconds(wrk.pid)
            began = time.monotonic()
            time.sleep(8)
            wall = time.monotonic() - began
            idle1, all1 = machine_idle()
            daemon1, wrk1 = cpu_seconds(pid), cpu_seconds(wrk.pid)
            out = wrk.communicate()[0]
        finally:
            daemon.stop()
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(found.group(1)) if found else 0.0
    idle = (idle1 - idle0) / max(1, all1 - all0) * cores * 100
    print(f"{transport:6s} {rps:8.0f} calls/s   machine idle {idle:4.0f}% of {cores * 100}%   "
          f"daemon {(daemon1 - daemon0) / wall * 100:4.0f}%   wrk {(wrk1 - wrk0) / wall * 100:3.0f}% of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("attach", "socket", "both"), default="both")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    transports = ("attach", "socket") if args.transport == "both" else (args.transport,)
    for _ in range(args.runs):
        for transport in transports:
            run(transport)


if __name__ == "__main__":
    main()
