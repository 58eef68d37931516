"""Where the daemon's CPU goes on hot calls (issue 15): one daemon as ``hot.py`` starts
it (the embedded SQLite store, ``LOG_LEVEL=info``, ``DOCKER_NETWORK=none``), a hot route
on ``iftest/hotfn:1`` with ``max_concurrency`` 2, ``wrk -t2 -c8`` POSTs while
``py-spy record`` samples the daemon; prints the functions with the most samples, by
self time and by inclusive time (% of the daemon's samples).

py-spy is not a dependency of the project: point ``--py-spy`` at one (for example
``python3 -m venv /tmp/spy && /tmp/spy/bin/pip install py-spy``).

    PYTHONPATH=. python bench/profile_hot.py --py-spy /tmp/spy/bin/py-spy [--transport attach|socket]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.hot import IMAGE, TICK, sequential, wrk  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd  # noqa: E402


def user_system(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def summarise(collapsed: str, top: int) -> None:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(collapsed) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            # py-spy's frames: "function (file:line)"; drop the line to add up per function.
            frames = [frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"-- top {top} by {title} samples")
        for frame, n in counter.most_common(top):
            print(f"{n / total * 100:6.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", required=True)
    parser.add_argument("--transport", choices=["attach", "socket"], default="attach")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--keep", help="also write the collapsed stacks here")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(workdir, env={"DOCKER_NETWORK": "none", "MQ_URL": "memory://", "LOG_LEVEL": "info",
                                      "MAX_CONCURRENCY": "8", "HOT_TRANSPORT": args.transport}).start()
        try:
            reply = daemon.post("/v1/apps/bench/routes", {"route": {
                "path": "/hot", "image": IMAGE, "format": "http", "max_concurrency": 2}})
            assert reply.status == 200, reply.body
            sequential(daemon.port, "POST", "/r/bench/hot", b"hello", 500)
            pid = daemon.proc.pid  # type: ignore[union-attr]
            collapsed = args.keep or os.path.join(workdir, "stacks.txt")
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil",
                                    "--duration", str(args.seconds + 2), "--output", collapsed, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
                script.write('wrk.method = "POST"\nwrk.body = "hello"\n')
            user, system = user_system(pid)
            began = time.monotonic()
            rps, p50, p99 = wrk(daemon.url + "/r/bench/hot", script.name, seconds=args.seconds)
            wall = time.monotonic() - began
            user_after, system_after = user_system(pid)
            user, system = user_after - user, system_after - system
            used = user + system
            os.unlink(script.name)
            spy.wait()
            print(f"wrk -t2 -c8 -d{args.seconds}s ({args.transport}): {rps:.0f} req/s p50 {p50} p99 {p99}; "
                  f"daemon {used / wall * 100:.0f}% of a core, {used / (rps * wall) * 1000:.3f} ms CPU/call "
                  f"(user {user / used * 100:.0f}%, kernel {system / used * 100:.0f}%; py-spy sampling running)")
            summarise(collapsed, args.top)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
