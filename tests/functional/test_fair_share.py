"""SPEC §8 "Apps share fairly" and the admission settings (§2 ``ADMISSION_WAIT``,
``APP_MAX_CONCURRENCY``), through a real daemon and the real Docker engine."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)


def wait_for_running(daemon: Daemon, count: int, timeout: float = 10) -> None:
    """Until ``/stats`` shows ``count`` calls holding a container slot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.get("/stats").json()["Running"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {count} calls running: {daemon.get('/stats').json()}")


def test_a_call_over_capacity_gets_503_after_ADMISSION_WAIT(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"MAX_CONCURRENCY": "1", "ADMISSION_WAIT": "1s"})
    daemon.add_route("app", "/slow", image_tag("sleep"), config={"SLEEP": "8"}, timeout=30)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(daemon.post, "/r/app/slow", "")
        wait_for_running(daemon, 1)
        began = time.monotonic()
        reply = daemon.post("/r/app/slow", "")
        waited = time.monotonic() - began
        assert reply.status == 503 and reply.header("retry-after") == "1", reply
        assert 0.9 <= waited < 3, waited  # the default would be 10 s
        assert busy.result(timeout=30).status == 200


def test_a_call_finding_ADMISSION_MAX_WAITING_calls_waiting_gets_503_at_once(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"MAX_CONCURRENCY": "1", "ADMISSION_MAX_WAITING": "0"})
    daemon.add_route("app", "/slow", image_tag("sleep"), config={"SLEEP": "5"}, timeout=30)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(daemon.post, "/r/app/slow", "")
        wait_for_running(daemon, 1)
        began = time.monotonic()
        reply = daemon.post("/r/app/slow", "")
        assert reply.status == 503 and reply.header("retry-after"), reply
        assert time.monotonic() - began < 1  # not after ADMISSION_WAIT: no room to wait
        assert busy.result(timeout=30).status == 200


def test_one_app_flooding_the_node_does_not_keep_another_apps_calls_waiting(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    """App a sends 8 calls of 4 s at once to a node of 4 containers; app b's calls
    still start at once (a holds at most 2), instead of queueing behind a's."""
    daemon = daemon_factory(env={"MAX_CONCURRENCY": "4", "APP_MAX_CONCURRENCY": "2", "ADMISSION_WAIT": "30s"})
    daemon.add_route("flood", "/slow", image_tag("sleep"), config={"SLEEP": "4"}, timeout=30)
    daemon.add_route("quiet", "/fast", image_tag("cat"))
    assert daemon.post("/r/quiet/fast", "warm").status == 200  # image and first start paid

    def timed_call(n: int) -> float:
        began = time.monotonic()
        reply = daemon.post("/r/quiet/fast", f"b{n}", timeout=60)
        assert reply.status == 200 and reply.body == f"b{n}".encode()
        return time.monotonic() - began

    alone = statistics.median(timed_call(n) for n in range(3))  # a cold start on this machine now
    with ThreadPoolExecutor(12) as pool:
        flood = [pool.submit(daemon.post, "/r/flood/slow", "", timeout=60) for _ in range(8)]
        wait_for_running(daemon, 2)
        time.sleep(0.3)  # the rest of the flood is queued by now
        quiet = []
        for n in range(4):  # one call a second (slower than b's own calls) while a's flood lasts
            quiet.append(pool.submit(timed_call, n))
            time.sleep(1)
        durations = [f.result(timeout=60) for f in quiet]
        assert all(f.result(timeout=60).status == 200 for f in flood)
    p50 = statistics.median(durations)
    # a's calls take 4 s each; queued behind them, b's would wait for a's last wave (~8 s)
    assert p50 < min(alone + 1.5, 3.0), (alone, durations)
    metrics = daemon.get("/metrics").body.decode()
    assert 'ironfunctions_app_throttled_total{app="flood"' in metrics, metrics
