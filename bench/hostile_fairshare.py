"""Fair share under a flood (issue 13 item 5, SPEC §8 "Apps share fairly").

One daemon (``MAX_CONCURRENCY=4``, ``APP_MAX_CONCURRENCY`` as given, default 2;
``DOCKER_NETWORK=none``, the embedded SQLite store). App ``flood`` sends ``--flood``
concurrent cold calls that sleep ``--sleep`` seconds (the test image ``iftest/sleep``);
while they last, app ``quiet`` starts one cold call (``iftest/cat``) every ``--every``
seconds (1 s: slower than its own calls, so it never queues behind itself).
Printed: the quiet app's call latency (p50, max) and the flood's own figures. With
``--app-max-concurrency 4`` (no share kept) the quiet app waits behind the flood.

Target: the quiet app's p50 well under the flood's sleep (it still gets containers).

    PYTHONPATH=. python bench/hostile_fairshare.py [--flood 10] [--sleep 4] [--every 1] [--app-max-concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402


def timed_post(daemon: Daemon, path: str, body: str) -> tuple[float, int]:
    began = time.monotonic()
    reply = daemon.post(path, body, timeout=120)
    return time.monotonic() - began, reply.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=10, help="concurrent slow calls of the flooding app")
    parser.add_argument("--sleep", type=float, default=4.0, help="seconds each flooding call sleeps")
    parser.add_argument("--app-max-concurrency", type=int, default=2)
    parser.add_argument("--quiet-calls", type=int, default=8, help="calls of the quiet app")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between the quiet app's calls")
    args = parser.parse_args()
    ensure_dockerd()
    build_test_images()
    with tempfile.TemporaryDirectory() as workdir:
        daemon = Daemon(workdir, env={
            "DOCKER_NETWORK": "none", "MQ_URL": "memory://", "MAX_CONCURRENCY": "4",
            "APP_MAX_CONCURRENCY": str(args.app_max_concurrency), "ADMISSION_WAIT": "60s",
        }).start()
        try:
            for app, path, image, config in (("flood", "/slow", "sleep", {"SLEEP": f"{args.sleep:g}"}),
                                             ("quiet", "/fast", "cat", {})):
                reply = daemon.post(f"/v1/apps/{app}/routes", {"route": {
                    "path": path, "image": image_tag(image), "config": config, "timeout": 120}})
                assert reply.status == 200, reply.body
            timed_post(daemon, "/r/quiet/fast", "warm")
            alone = [timed_post(daemon, "/r/quiet/fast", "alone")[0] for _ in range(5)]
            with ThreadPoolExecutor(args.flood + args.quiet_calls) as pool:
                began = time.monotonic()
                flood = [pool.submit(timed_post, daemon, "/r/flood/slow", "") for _ in range(args.flood)]
                time.sleep(0.5)
                quiet = []
                for _ in range(args.quiet_calls):
                    quiet.append(pool.submit(timed_post, daemon, "/r/quiet/fast", "q"))
                    time.sleep(args.every)
                quiet_results = [f.result() for f in quiet]
                flood_results = [f.result() for f in flood]
                flood_wall = time.monotonic() - began
            quiet_s = [d for d, _ in quiet_results]
            print(f"MAX_CONCURRENCY=4 APP_MAX_CONCURRENCY={args.app_max_concurrency}; "
                  f"flood: {args.flood} concurrent calls of {args.sleep:g} s")
            print(f"quiet app alone: p50 {statistics.median(alone) * 1000:.0f} ms")
            print(f"quiet app during the flood ({len(quiet_s)} calls, one every {args.every:g} s): "
                  f"p50 {statistics.median(quiet_s) * 1000:.0f} ms  max {max(quiet_s) * 1000:.0f} ms  "
                  f"statuses {sorted({s for _, s in quiet_results})}")
            print(f"flood: all done in {flood_wall:.1f} s, statuses {sorted({s for _, s in flood_results})}")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
