"""Cold-call benchmark (issue 3).

Floor: docker-py create/attach/start/wait/remove done directly, sequentially.
Product: sequential ``POST /r/bench/echo`` through a real daemon. Same image (a busybox
echo: ``iftest/cat:1``), network ``none`` for both unless ``--network NAME`` (e.g.
``bridge``, or ``ironfunctions-bench``: a guarded network the daemon makes, removed
with its rules at the end). Target: product median <= 1.10 x
floor. Then 50 concurrent cold calls: all must succeed; p50/p99 and the daemon's peak
RSS are reported.

    PYTHONPATH=. python bench/cold.py [N] [--network NAME]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import docker

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import PeakRss, percentile  # noqa: E402
from ironfunctions.drivers.netguard import NetworkGuard  # noqa: E402
from ironfunctions.drivers.netplan import DEFAULT_NETWORK, is_guarded  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.images import build_test_images, ensure_dockerd, image_tag  # noqa: E402

IMAGE = image_tag("cat")


def floor_once(api: docker.APIClient, network: str = "none") -> float:
    began = time.perf_counter()
    container = api.create_container(IMAGE, stdin_open=True, host_config=api.create_host_config(network_mode=network))
    sock = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    api.start(container)
    raw = getattr(sock, "_sock", sock)
    raw.sendall(b"hello")
    raw.shutdown(1)
    while raw.recv(65536):
        pass
    sock.close()
    api.wait(container)
    api.remove_container(container)
    return (time.perf_counter() - began) * 1000



def main() -> None:
    args = sys.argv[1:]
    network = "none"
    if "--network" in args:
        network = args.pop(args.index("--network") + 1)
        args.remove("--network")
    n = int(args[0]) if args else 40
    ensure_dockerd()
    build_test_images()
    api = docker.APIClient(version="1.41")
    with tempfile.TemporaryDirectory() as workdir:
        # One app: it may use the whole node (APP_MAX_CONCURRENCY's default is half).
        daemon = Daemon(workdir, env={"DOCKER_NETWORK": network, "MAX_CONCURRENCY": "64",
                                      "APP_MAX_CONCURRENCY": "64",
                                      "DB_URL": "memory://", "LOG_LEVEL": "warn"}).start()
        try:
            daemon.post("/v1/apps/bench/routes", {"route": {"path": "/echo", "image": IMAGE}})
            for _ in range(3):  # warm both paths
                floor_once(api, network)
                daemon.post("/r/bench/echo", "hello")
            floor, product = [], []
            for _ in range(n):  # interleaved, so drift hits both alike
                floor.append(floor_once(api, network))
                began = time.perf_counter()
                reply = daemon.post("/r/bench/echo", "hello")
                product.append((time.perf_counter() - began) * 1000)
                assert reply.status == 200 and reply.body == b"hello", reply
            f50, p50 = statistics.median(floor), statistics.median(product)
            print(f"sequential cold calls, n={n}, network {network}")
            print(f"  floor   (docker-py direct): p50 {f50:.1f} ms  p99 {percentile(floor, 99):.1f} ms")
            print(f"  product (POST /r/ daemon):  p50 {p50:.1f} ms  p99 {percentile(product, 99):.1f} ms")
            print(f"  ratio product/floor: {p50 / f50:.3f}  (target <= 1.10)")

            times: list[float] = []

            def one(i: int) -> int:
                began = time.perf_counter()
                reply = daemon.post("/r/bench/echo", str(i), timeout=120)
                times.append((time.perf_counter() - began) * 1000)
                return reply.status

            began = time.perf_counter()
            assert daemon.proc is not None
            with PeakRss(daemon.proc.pid, every=0.01) as peak, ThreadPoolExecutor(50) as pool:
                statuses = list(pool.map(one, range(50)))
            wall = time.perf_counter() - began
            ok = statuses.count(200)
            print(f"50 concurrent cold calls: {ok}/50 succeeded in {wall:.2f} s; "
                  f"p50 {percentile(times, 50):.0f} ms  p99 {percentile(times, 99):.0f} ms; "
                  f"daemon peak RSS {peak.kb / 1024:.1f} MiB")
        finally:
            daemon.stop()
            if is_guarded(network) and network != DEFAULT_NETWORK:
                NetworkGuard(api, network).remove()
                api.remove_network(network)


if __name__ == "__main__":
    main()
