"""Sequential hot-call p50: one process (``WORKERS=1``) against the default (a worker
per core), interleaved (issue 15's "sequential p50 within 10 %").

``bench/hot.py`` runs the two settings one after the other, so a round's p50 ratio also
carries how the machine's load moved between them (0.85-1.51x over the same code).
Here both daemons run at once, idle but for the client, and the minimal raw-socket
client (``hot.raw_sequential``) alternates batches of calls between them, a new
keep-alive connection per batch (a connection may land on either worker), so drift
hits both alike. Prints each batch's p50 and the ratio of the medians.

    PYTHONPATH=. python bench/sequential.py [--batches 10] [--calls 2000] [--max-concurrency 2]

With ``--max-concurrency 1`` (a route's default) the route has one container for the
node, so a batch landing on the other worker is forwarded until the container follows
its calls there (``runner/hot_context.py``: after a second of such calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.hot import IMAGE, raw_sequential, wrk  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_bridge, ensure_dockerd  # noqa: E402


def start(workdir: str, workers: str | None, max_concurrency: int) -> Daemon:
    env = {"DOCKER_NETWORK": "none", "MQ_URL": f"sqlite:///{workdir}/mq.db", "LOG_LEVEL": "info",
           "MAX_CONCURRENCY": "8", "NODE_ID": f"seq-{os.path.basename(workdir)}"}
    if workers is not None:
        env["WORKERS"] = workers
    daemon = Daemon(workdir, env=env).start()
    reply = daemon.post("/v1/apps/bench/routes", {"route": {
        "path": "/hot", "image": IMAGE, "format": "http", "max_concurrency": max_concurrency}})
    assert reply.status == 200, reply.body
    return daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--max-concurrency", type=int, default=2, help="the hot route's max_concurrency")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    ensure_bridge()
    with tempfile.TemporaryDirectory() as one_dir, tempfile.TemporaryDirectory() as many_dir:
        daemons = {"WORKERS=1": start(one_dir, "1", args.max_concurrency),
                   "default": start(many_dir, None, args.max_concurrency)}
        try:
            time.sleep(1)  # every worker up
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
                script.write('wrk.method = "POST"\nwrk.body = "hello"\n')
            for daemon in daemons.values():  # every worker's container, as in hot.py
                wrk(daemon.url + "/r/bench/hot", script.name, seconds=2)
            os.unlink(script.name)
            p50s: dict[str, list[float]] = {name: [] for name in daemons}
            for batch in range(args.batches):
                order = list(daemons.items()) if batch % 2 == 0 else list(reversed(daemons.items()))
                for name, daemon in order:
                    p50s[name].append(statistics.median(
                        raw_sequential(daemon.port, "/r/bench/hot", b"hello", args.calls)))
                print(f"batch {batch + 1}: " + "  ".join(f"{n} p50 {p50s[n][-1]:.3f} ms" for n in daemons))
            one, many = (statistics.median(p50s[n]) for n in daemons)
            print(f"median of {args.batches} batches of {args.calls} sequential hot calls (minimal client): "
                  f"WORKERS=1 {one:.3f} ms, default {many:.3f} ms: {many / one:.2f}x (target <= 1.10x)")
        finally:
            for daemon in daemons.values():
                daemon.stop()


if __name__ == "__main__":
    main()
