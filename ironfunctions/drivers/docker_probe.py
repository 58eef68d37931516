"""``DockerProbe``: is this node's Docker engine up, for a process that runs no containers.

The parent of a node of worker processes (``WORKERS`` > 1, issue 15) answers the
balancer agent, so it needs the engine's health as a single process gets it from its
``DockerDriver.probe``, without the driver's pools and clients: one docker-py client
with a short socket timeout, one thread of its own (never the reactor's pool, which
resolves host names), and ``SingleFlightProbe``, so a hung engine holds that one thread
and no more.
"""

from __future__ import annotations

from typing import Any

import docker
import docker.utils
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ironfunctions.drivers.docker import DEFAULT_API_VERSION
from ironfunctions.drivers.probe import PROBE_TIMEOUT_S, SingleFlightProbe
from ironfunctions.threads import stop_pools


class DockerProbe(Service):
    """``probe()`` as ``IContainerDriver.probe``: fires with whether the engine at
    ``base_url`` (``DOCKER_HOST``; ``""``: docker-py's default) answered a ping within
    ``timeout`` seconds; never fails. A service named ``docker-probe`` owning its thread."""

    name = "docker-probe"

    def __init__(self, reactor: Any, base_url: str = "", timeout: int = PROBE_TIMEOUT_S) -> None:
        self._reactor = reactor
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if base_url:
            kwargs["base_url"] = base_url
        # Built now, connected on the first ping (docker-py connects lazily).
        self._api = docker.APIClient(version=DEFAULT_API_VERSION, timeout=timeout, **kwargs)
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="docker-probe")
        # The clock's timeout is a backstop: the socket's gives the thread back.
        self._probe = SingleFlightProbe(self._ping, reactor, timeout + 0.5)

    def _ping(self) -> Deferred[Any]:
        if not self.running:
            raise RuntimeError("the probe is not running")
        return deferToThreadPool(self._reactor, self._pool, self._api.ping)

    def probe(self) -> Deferred[bool]:
        return self._probe.probe()

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        self._pool.start()

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        super().stopService()  # type: ignore[no-untyped-call]
        return stop_pools(self._reactor, self._pool, then=self._api.close)
