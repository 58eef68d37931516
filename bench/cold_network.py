"""Cold-start cost of the function network (issue 11 item 3).

The engine's part of a cold call (docker-py create/attach/start/wait/remove of the
busybox echo ``iftest/cat:1``, as ``bench/cold.py``'s floor) on three networks,
interleaved round by round so that load drift hits all alike: ``none``, Docker's
``bridge``, a user-defined bridge with ICC off and no rules of ours
(``ifn-bench-plain``: what Docker's embedded DNS and ICC setting cost by themselves),
and a guarded network made by ``NetworkGuard`` (the same plus our firewall rules;
``ironfunctions-bench``). Both are removed, with our rules, at the end. The
daemon adds nothing per network on top (``bench/cold.py --network NAME`` shows it).

    PYTHONPATH=. python bench/cold_network.py [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import sys

import docker

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cold import floor_once  # noqa: E402
from bench.common import percentile  # noqa: E402
from ironfunctions.drivers.netguard import NetworkGuard  # noqa: E402
from tests.images import build_test_images, ensure_dockerd  # noqa: E402

GUARDED = "ironfunctions-bench"
PLAIN = "ifn-bench-plain"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    ensure_dockerd()
    build_test_images()
    api = docker.APIClient(version="1.41")
    guard = NetworkGuard(api, GUARDED)
    guard.ensure()
    api.create_network(PLAIN, driver="bridge", options={"com.docker.network.bridge.enable_icc": "false"})
    networks = ["none", "bridge", PLAIN, GUARDED]
    times: dict[str, list[float]] = {network: [] for network in networks}
    try:
        for network in networks:  # warm each
            floor_once(api, network)
        for i in range(rounds):
            for network in networks[i % 4:] + networks[:i % 4]:  # rotate the order too
                times[network].append(floor_once(api, network))
    finally:
        guard.remove()
        api.remove_network(GUARDED)
        api.remove_network(PLAIN)
    base = statistics.median(times["none"])
    print(f"cold container (docker-py create/attach/start/wait/remove), {rounds} rounds interleaved")
    for network in networks:
        p50 = statistics.median(times[network])
        print(f"  {network:20s} p50 {p50:6.1f} ms  p90 {percentile(times[network], 90):6.1f} ms  "
              f"(+{p50 - base:5.1f} ms vs none)")


if __name__ == "__main__":
    main()
