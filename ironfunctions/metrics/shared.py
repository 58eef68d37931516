"""The node's Prometheus figures shared by its processes (``WORKERS`` > 1, issue 15).

prometheus_client's multiprocess mode: every process writes its values to files of its
own (named by its pid) in one directory, and ``/metrics`` reads them all
(``PrometheusMetrics(multiprocess_dir=...)``), so whichever worker answers shows the
whole node. The library picks how it keeps values when it is imported, from
``PROMETHEUS_MULTIPROC_DIR``: a worker gets the variable from its parent when it is
spawned, so it is in place before the import. The parent imported the library before
it knew the directory (twistd loads the plugin's module to parse the options), so
``share_values`` switches it over.

The directory is ``<DATA_DIR>/metrics-<parent pid>``, fresh for each run of the parent
(``prepare``, which also removes the directories of parents that are gone: a
``kill -9`` leaves one) and removed at stop (``SharedMetricsService``). When a worker
dies its live gauges go with it (``mark_process_dead``); its counters and histograms
stay, so the node's totals never go back.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Callable

from prometheus_client import multiprocess, values
from twisted.application.service import Service
from twisted.logger import Logger

ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR_NAME = re.compile(r"^metrics-(\d+)$")

log = Logger()


def share_values(directory: str) -> None:
    """From now on, this process's new metric values live in files in ``directory``.

    A no-op in a process that was started with ``PROMETHEUS_MULTIPROC_DIR`` set to it (a
    worker). Otherwise it replaces prometheus_client's value class, which its metrics
    read when they are made (``values.ValueClass``; tests/unit/test_metrics_shared.py
    breaks if a release moves it), and sets the variable, where the library reads the
    directory and which the workers inherit.
    """
    if getattr(values.ValueClass, "_multiprocess", False) and os.environ.get(ENV) == directory:
        return
    os.environ[ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare(data_dir: str, pid: int, alive: Callable[[int], bool] = _alive) -> str:
    """A fresh, empty directory for the figures of the node whose parent is ``pid``;
    the directories of parents no longer running go. Blocking, once at start."""
    os.makedirs(data_dir, exist_ok=True)
    for name in os.listdir(data_dir):
        match = _DIR_NAME.match(name)
        if match and int(match.group(1)) != pid and not alive(int(match.group(1))):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
    path = os.path.join(data_dir, f"metrics-{pid}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def mark_process_dead(directory: str, pid: int) -> None:
    """Worker ``pid`` is gone: its live gauges (its containers, its connections) leave
    the node's figures."""
    if not pid:
        return
    try:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    except OSError as e:
        log.warn("Could not drop the gauges of worker pid {pid}: {error}", pid=pid, error=str(e))


class SharedMetricsService(Service):
    """Removes the node's figures directory when the node stops. Add it before the
    workers' supervisor, so it stops after every worker has exited."""

    name = "shared-metrics"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def stopService(self) -> None:  # noqa: N802 (Twisted API)
        super().stopService()  # type: ignore[no-untyped-call]
        shutil.rmtree(self.directory, ignore_errors=True)
