"""Probing a daemon's reactor while something else loads it: ``/health`` answered by
the reactor thread (its checks are cached or cheap), timed from a client thread. Used
by the hostile-load tests and benchmarks (``bench/hostile_stderr.py``)."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from tests.daemon import http

T = TypeVar("T")


def health_latencies(url: str, busy: Callable[[], bool], min_probes: int = 50,
                     every: float = 0.01, timeout: float = 30.0) -> list[float]:
    """Seconds each ``GET /health`` took, probing every ``every`` s while ``busy()``
    and until at least ``min_probes`` were made (a probe that fails counts as
    ``timeout``)."""
    latencies: list[float] = []
    while busy() or len(latencies) < min_probes:
        began = time.perf_counter()
        try:
            http("GET", url + "/health", timeout=timeout)
            latencies.append(time.perf_counter() - began)
        except OSError:
            latencies.append(timeout)
        time.sleep(every)
    return latencies


def while_probing(url: str, work: Callable[[], T], min_probes: int = 50) -> tuple[T, list[float]]:
    """Run ``work()`` in a thread while probing ``/health``; return its result and the
    probes' latencies (seconds)."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    latencies = health_latencies(url, thread.is_alive, min_probes)
    thread.join()
    if errors:
        raise errors[0]
    return box[0], latencies
