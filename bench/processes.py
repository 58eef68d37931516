"""What a second process could add on this machine: one daemon against two (issue 15).

The ceiling of any worker-process design that keeps each call in one process: two
independent daemons (each its own DATA_DIR, embedded SQLite store, ``LOG_LEVEL=info``,
``MAX_CONCURRENCY=8``, the default hot transport), a hot route of ``iftest/hotfn:1`` on
each, and the same 8 connections split 4 + 4 between them (two ``wrk -t1 -c4`` at once),
against one daemon under ``wrk -t2 -c8``, alternated round by round. Nothing is shared
between the two daemons, so this is what a node of two workers could reach if
coordinating them cost nothing per call; with ``--split`` each of the two gets
``max_concurrency`` 1 (the two together hold the one daemon's 2 containers, as a
node-wide limit would have them).

Per row: calls/s, the machine's idle share over the run (of 200 % on 2 cores) and the
CPU of the daemons and of wrk (% of one core).

    PYTHONPATH=. python bench/processes.py [--rounds 3] [--seconds 10] [--split]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.hot import cpu_seconds, sequential  # noqa: E402
from bench.idle_cpu import machine_idle  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd, image_tag  # noqa: E402


def start(workdir: str, max_concurrency: int) -> Daemon:
    daemon = Daemon(workdir, env={"LOG_LEVEL": "info", "MAX_CONCURRENCY": "8"}).start()
    reply = daemon.post("/v1/apps/bench/routes", {"route": {
        "path": "/hot", "image": image_tag("hotfn"), "format": "http", "max_concurrency": max_concurrency}})
    assert reply.status == 200, reply.body
    sequential(daemon.port, "POST", "/r/bench/hot", b"hello", 300)  # the containers start, caches warm
    return daemon


def load(daemons: list[Daemon], script: str, seconds: int) -> tuple[float, float, dict[str, float]]:
    """8 connections over ``daemons`` for ``seconds``: (calls/s, idle % of the
    machine, CPU % of one core per process)."""
    per = 8 // len(daemons)
    runs = [subprocess.Popen(["wrk", f"-t{2 // len(daemons)}", f"-c{per}", f"-d{seconds}s", "-s", script,
                              d.url + "/r/bench/hot"], stdout=subprocess.PIPE, text=True) for d in daemons]
    pids = {f"daemon {i + 1}": d.proc.pid for i, d in enumerate(daemons)}  # type: ignore[union-attr]
    pids.update({f"wrk {i + 1}": w.pid for i, w in enumerate(runs)})
    time.sleep(1)
    idle0, all0 = machine_idle()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    began = time.monotonic()
    time.sleep(seconds - 2)
    wall = time.monotonic() - began
    idle1, all1 = machine_idle()
    cpu = {name: (cpu_seconds(pid) - cpu0[name]) / wall * 100 for name, pid in pids.items()}
    total = 0.0
    for w in runs:
        out, _ = w.communicate()
        if "Non-2xx" in out or "Socket errors" in out:
            print(out)
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    cores = os.cpu_count() or 1
    return total, (idle1 - idle0) / (all1 - all0) * 100 * cores, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--split", action="store_true",
                        help="the two daemons' routes get max_concurrency 1 each (2 in all)")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    ratios = []
    for round_ in range(1, args.rounds + 1):
        with ExitStack() as stack:
            work = [stack.enter_context(tempfile.TemporaryDirectory()) for _ in range(3)]
            script = os.path.join(work[0], "post.lua")
            with open(script, "w") as f:
                f.write('wrk.method = "POST"\nwrk.body = "hello"\n')
            one = start(work[1], 2)
            stack.callback(one.stop)
            rps1, idle1, cpu1 = load([one], script, args.seconds)
            if args.split:
                reply = one.request("PATCH", "/v1/apps/bench/routes/hot", {"route": {"max_concurrency": 1}})
                assert reply.status == 200, reply.body
                sequential(one.port, "POST", "/r/bench/hot", b"hello", 300)
            two = start(work[2], 1 if args.split else 2)
            stack.callback(two.stop)
            rps2, idle2, cpu2 = load([one, two], script, args.seconds)
        ratios.append(rps2 / rps1)
        print(f"round {round_}: one daemon {rps1:,.0f} calls/s (idle {idle1:.0f}%; "
              + ", ".join(f"{k} {v:.0f}%" for k, v in cpu1.items()) + ")")
        print(f"         two daemons {rps2:,.0f} calls/s (idle {idle2:.0f}%; "
              + ", ".join(f"{k} {v:.0f}%" for k, v in cpu2.items()) + f"): {rps2 / rps1:.2f}x", flush=True)
    print(f"two daemons / one: {min(ratios):.2f}x to {max(ratios):.2f}x over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
