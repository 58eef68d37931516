"""The parent's removal of the node's containers (``WORKERS`` > 1, SPEC §7, issue 15).

A single process removes every container labelled with its ``NODE_ID`` at start (a
crash's leftovers) and at stop. With worker processes that would be wrong in a worker:
a worker restarting after a crash would remove its live siblings' containers. So:

- the parent removes every container of the node (``io.ironfunctions.node``) at
  start, before any worker is spawned, and at stop, once the last worker has exited;
  it wipes the node's hot-socket directory (``<DATA_DIR>/hot-sockets``) both times;
- a worker removes only its own (``io.ironfunctions.worker=<index>`` too: ``Agent``'s
  ``cleanup_labels``), at its start and stop;
- when a worker dies, the parent removes that worker's containers and wipes its
  hot-socket directory (``w<index>``) at once, and starts its replacement only after
  that (``WorkerSupervisor``'s ``cleanup``): a dead worker's hot containers would
  otherwise hold their slots of the node until the replacement started, and a
  removal still listing while the replacement starts could take its new containers.

Docker failures are logged, never raised: a node whose engine is down at start still
starts (its ``/health`` says so) and a stop still ends.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.models import LABEL_NODE, LABEL_WORKER
from ironfunctions.runner.agent import CLEANUP_TIMEOUT_S, remove_labelled
from ironfunctions.services import settled

log = Logger()


def worker_socket_dir(socket_root: str, index: int) -> str:
    """Worker ``index``'s hot-socket directory under the node's ``socket_root`` (as
    ``tap.py`` gives it to the worker's driver)."""
    return os.path.join(socket_root, f"w{index}")


class NodeCleanupService(Service):
    """Removes the node's containers for the parent of its worker processes; see the
    module docstring.

    :param driver: a Docker driver (the parent's: only its removals are used).
    :param socket_root: the node's hot-socket directory (``<DATA_DIR>/hot-sockets``).
    :param timeout: bound on each removal (a hung engine must not hold the start or
        the stop forever).
    """

    name = "node-cleanup"

    def __init__(self, driver: IContainerDriver, node_id: str, socket_root: str, clock: IReactorTime,
                 timeout: float = CLEANUP_TIMEOUT_S) -> None:
        self._driver = driver
        self._node_id = node_id
        self._socket_root = socket_root
        self._clock = clock
        self._timeout = timeout
        self._ready: Deferred[None] | None = None

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        shutil.rmtree(self._socket_root, ignore_errors=True)  # once, before any worker exists
        self._ready = Deferred.fromCoroutine(
            self._remove({LABEL_NODE: self._node_id}, "Removed {count} containers left by a previous run"))

    def when_ready(self) -> Deferred[None]:
        """Fires once the start's removal is done (never fails): spawn workers then."""
        return settled(self._ready)

    def worker_gone(self, index: int) -> Deferred[None]:
        """Worker ``index`` died: remove its containers and wipe its hot-socket
        directory. Fires when done (never fails)."""
        # On the reactor: one directory and a socket file per hot container, a few
        # microseconds even for hundreds (the parent relays forwarded calls and slot
        # grants meanwhile, so anything slower would go to a thread). It must be gone
        # before the replacement makes its own.
        shutil.rmtree(worker_socket_dir(self._socket_root, index), ignore_errors=True)
        labels = {LABEL_NODE: self._node_id, LABEL_WORKER: str(index)}
        return Deferred.fromCoroutine(self._remove(labels, "Removed {count} containers of dead worker {worker}",
                                                   worker=index))

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        """Remove the node's containers: stop this after every worker has exited."""
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            await self._remove({LABEL_NODE: self._node_id}, "Removed {count} containers at stop")
            shutil.rmtree(self._socket_root, ignore_errors=True)

        return Deferred.fromCoroutine(stop())

    async def _remove(self, labels: Mapping[str, str], message: str, **fields: object) -> None:
        count = await remove_labelled(self._driver, labels, self._clock, self._timeout)
        if count:
            log.info(message, count=count, node_id=self._node_id, **fields)
