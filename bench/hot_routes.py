"""Hot routes of one app that together want more containers than its cap (issue 15,
"Found on the way"): do they share the slots, or take each other's containers call
after call?

One daemon with the default settings except ``MAX_CONCURRENCY=8`` (so
``APP_MAX_CONCURRENCY`` is its default, half: 4), the app ``bench`` with the hot routes
``/hot1`` ... ``/hot4`` on ``iftest/hotfn:1``, ``max_concurrency`` 2 each (8 wanted).
Each route gets a few sequential calls first (its first container starts), then
``wrk -t2 -c8 -d10s`` POSTs spread over the four routes by a Lua script (as
``haproxy_hot.py``'s "4 routes" row). Printed per run: calls/s, p50/p99, non-2xx
answers and wrk's socket errors (timeouts: wrk gives up on a call after 2 s), and the
hot containers started during the wrk run (``docker events``, by the daemon's
``NODE_ID`` label).

``--before REV`` runs the same against a revision of this repository exported with
``git archive`` (default ``40d9ef8``, before the fix), alternating with this checkout
for ``--rounds`` rounds; ``--before ''`` runs this checkout only.

    PYTHONPATH=. python bench/hot_routes.py [--before 40d9ef8] [--rounds 2] [--seconds 10]
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

from bench.haproxy_hot import FOUR_ROUTES, ROUTES  # noqa: E402
from bench.hostile_quotas import export  # noqa: E402
from bench.hot import IMAGE, sequential  # noqa: E402
from ironfunctions.models import LABEL_NODE  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd  # noqa: E402


def wrk_run(url: str, script: str, seconds: int) -> dict[str, str]:
    """``wrk -t2 -c8`` for ``seconds``; its figures as text (as wrk prints them)."""
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout

    def find(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, out, re.M)
        return match.group(1) if match else default

    return {
        "calls": find(r"^\s*(\d+) requests in"),
        "rps": find(r"Requests/sec:\s+([\d.]+)"),
        "p50": find(r"^\s*50%\s+(\S+)", "-"),
        "p99": find(r"^\s*99%\s+(\S+)", "-"),
        "non2xx": find(r"Non-2xx or 3xx responses:\s+(\d+)"),
        "errors": find(r"Socket errors:\s+(.+)$", "none"),
    }


def starts_between(node_id: str, since: float, until: float) -> int:
    """Containers of node ``node_id`` the engine started between two times."""
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
         "--filter", "type=container", "--filter", "event=start",
         "--filter", f"label={LABEL_NODE}={node_id}", "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return len(out.split())


def run(workdir: str, name: str, repo: str | None, script: str, seconds: int) -> str:
    """One daemon (of ``repo``, else of this checkout), its routes, the wrk run: a line."""
    slug = "before" if repo is not None else "after"
    node_id = f"bench-hot-routes-{slug}-{os.getpid()}"
    env = {"MAX_CONCURRENCY": "8", "NODE_ID": node_id}
    if repo is not None:
        env["PYTHONPATH"] = repo
    daemon = Daemon(os.path.join(workdir, f"{slug}-{time.monotonic_ns()}"), env=env).start()
    try:
        for route in ROUTES:
            daemon.add_route("bench", route, IMAGE, format="http", max_concurrency=2)
            sequential(daemon.port, "POST", "/r/bench" + route, b"hello", 20)
        since = time.time()
        figures = wrk_run(daemon.url + "/r/bench/hot1", script, seconds)
        until = time.time() + 0.5
        time.sleep(1)  # let the engine's event stream catch up
        starts = starts_between(node_id, since, until)
    finally:
        daemon.stop()
    return (f"{name:16s} {float(figures['rps']):7.0f} calls/s ({figures['calls']} in {seconds} s)  "
            f"p50 {figures['p50']:>8s}  p99 {figures['p99']:>8s}  non-2xx {figures['non2xx']:>5s}  "
            f"hot container starts {starts:4d}  socket errors: {figures['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="40d9ef8", help="git revision to compare with ('' for none)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    with tempfile.TemporaryDirectory(prefix="bench-hot-routes-") as workdir:
        script = os.path.join(workdir, "four_routes.lua")
        with open(script, "w") as f:
            f.write(FOUR_ROUTES)
        sides: list[tuple[str, str | None]] = [("this checkout", None)]
        if args.before:
            before_repo = os.path.join(workdir, "before-src")
            os.makedirs(before_repo)
            export(args.before, before_repo)
            sides.insert(0, (f"before {args.before}", before_repo))
        print(f"MAX_CONCURRENCY=8 (APP_MAX_CONCURRENCY 4), 4 hot routes x max_concurrency 2, "
              f"wrk -t2 -c8 -d{args.seconds}s, {os.cpu_count()} CPUs", flush=True)
        for _ in range(args.rounds):
            for name, repo in sides:
                print(run(workdir, name, repo, script, args.seconds), flush=True)


if __name__ == "__main__":
    main()
