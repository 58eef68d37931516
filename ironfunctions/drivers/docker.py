"""``DockerDriver``: function containers on a Docker engine, through docker-py.

docker-py is blocking, so every engine call runs on the driver's own ``ThreadPool``
(sized to the node's container limit, plus a small control pool for kills, listings
and pings), never on the reactor thread and never on the reactor's default pool, which
Twisted's resolver needs (STYLE rule 11). docker-py exceptions are translated into
domain exceptions here and go no further. The blocking calls themselves are
``drivers.engine.Engine``'s.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable, Mapping

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ironfunctions import bridge
from ironfunctions.config import HOT_TRANSPORTS
from ironfunctions.drivers.attach import AttachedContainer, adopt
from ironfunctions.drivers.engine import Engine
from ironfunctions.drivers.bridged import (
    SOCKET_NAME, BridgedContainer, SocketDirs, listen,
)
from ironfunctions.drivers.interface import IAttachedContainer, IContainerDriver, IContainerStream
from ironfunctions.drivers.probe import PROBE_TIMEOUT_S, SingleFlightProbe
from ironfunctions.errors import ContainerNotFound, DockerUnavailable, ImageNotFound
from ironfunctions.models import ContainerResult, ContainerSpec
from ironfunctions.threads import stop_pools

# Engine API 1.41 (Docker 20.10) is served by every engine since; pinning it avoids a
# version request (blocking I/O) when the client is built.
DEFAULT_API_VERSION = "1.41"


@implementer(IContainerDriver)
class DockerDriver(Service):
    """``IContainerDriver`` on a Docker engine; a ``Service`` owning its thread pools.

    :param reactor: the reactor (threads and socket adoption).
    :param max_concurrency: containers this node runs at once; sizes the run pool.
    :param base_url: engine address (``DOCKER_HOST``); ``""`` = docker-py's default.
    :param api_timeout: bound in seconds on each engine request other than wait/attach.
    :param pull_timeout: bound in seconds on the one pull attempted for a missing image.
    :param probe_timeout: socket timeout in seconds of the health probe's engine call
        (``probe``, ``ping``): a hung engine frees the probe's thread after it.
    :param hot_transport: how long-lived containers talk to the daemon: ``attach`` (the
        engine's attach stream) or ``socket`` (a unix socket and the static bridge as
        entrypoint wrapper, skipping the engine's relay; see ``drivers/bridged.py``).
    :param socket_dir: host directory for the per-container sockets (``socket`` only;
        wiped at start and stop).
    :param bridge_binary: host path of the static bridge (``socket`` only).
    """

    log = Logger()
    name = "driver"

    def __init__(
        self,
        reactor: Any,
        max_concurrency: int,
        base_url: str = "",
        api_version: str = DEFAULT_API_VERSION,
        api_timeout: int = 60,
        pull_timeout: int = 10,
        probe_timeout: int = PROBE_TIMEOUT_S,
        hot_transport: str = "attach",
        socket_dir: str = "",
        bridge_binary: str = bridge.BINARY,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if hot_transport not in HOT_TRANSPORTS:
            raise ValueError(f"hot_transport: expected attach or socket, got {hot_transport!r}")
        if hot_transport == "socket" and not socket_dir:
            raise ValueError("hot_transport socket needs a socket_dir")
        self._reactor = reactor
        self.hot_transport = hot_transport
        self._socket_dirs = SocketDirs(socket_dir) if socket_dir else None
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if base_url:
            kwargs["base_url"] = base_url
        size = max_concurrency + 4  # + room for removals finishing after their result
        self._run_pool = ThreadPool(minthreads=0, maxthreads=size, name="docker-run")
        self._control_pool = ThreadPool(minthreads=0, maxthreads=4, name="docker-control")
        self._engine = Engine(
            docker.APIClient(version=api_version, timeout=api_timeout, max_pool_size=size, **kwargs),
            docker.APIClient(version=api_version, timeout=pull_timeout, **kwargs),
            self._control_pool, self._socket_dirs, bridge_binary,
            # Its own client: the socket timeout is per client, and a probe must give up
            # in seconds where other requests may take a minute.
            ping_api=docker.APIClient(version=api_version, timeout=probe_timeout, **kwargs),
            labels=labels,
        )
        # /health and the load-balancer agent share one probe; its clock timeout is a
        # backstop for a control pool too busy to start it.
        self._probe = SingleFlightProbe(lambda: self._call(self._engine.ping), reactor, probe_timeout + 0.5)

    # -- Service

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._socket_dirs is not None:
            # Left behind by a crash. Blocking, but once, before anything is served, and
            # it must finish before the first hot container makes its directory.
            self._socket_dirs.wipe()
        self._run_pool.start()
        self._control_pool.start()

    def stopService(self) -> Deferred[None]:
        """Fires when every engine call in flight (including removals) has finished."""
        super().stopService()  # type: ignore[no-untyped-call]
        wipe = self._socket_dirs.wipe if self._socket_dirs is not None else None
        return stop_pools(self._reactor, self._run_pool, self._control_pool, then=wipe, name="docker-driver-stop")

    # -- plumbing

    def _in_pool(self, pool: ThreadPool, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(deliver, *args)`` in ``pool``; the Deferred fires with what ``fn``
        passes to ``deliver`` (or with its exception). ``fn`` may keep working after
        delivering (cleanup off the caller's path)."""
        d: Deferred[Any] = Deferred()
        delivered = []
        reactor: IReactorFromThreads = self._reactor

        def deliver(result: Any) -> None:
            delivered.append(True)
            reactor.callFromThread(d.callback, result)

        def work() -> None:
            try:
                fn(deliver, *args)
            except BaseException:
                failure = Failure()
                if delivered:
                    reactor.callFromThread(
                        self.log.failure, "Docker cleanup failed", failure
                    )
                else:
                    reactor.callFromThread(d.errback, _translate(failure))

        pool.callInThread(work)
        return d

    def _call(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A plain engine call on the control pool."""
        return self._in_pool(self._control_pool, lambda deliver, *a: deliver(fn(*a)), *args)

    def socket_paths(self) -> list[str]:
        """The hot containers' socket files on the host (``socket`` transport; blocking
        but tiny: for tests and operators)."""
        if self._socket_dirs is None:
            return []
        root = self._socket_dirs.root
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return []
        return sorted(
            os.path.join(root, n, SOCKET_NAME) for n in names
            if os.path.exists(os.path.join(root, n, SOCKET_NAME))
        )

    # -- IContainerDriver

    async def ping(self) -> None:
        await self._call(self._engine.ping)

    def probe(self) -> Deferred[bool]:
        return self._probe.probe()

    async def ensure_image(self, image: str) -> None:
        await self._call(self._engine.ensure_image, image)

    async def run(self, spec: ContainerSpec) -> ContainerResult:
        result: ContainerResult = await self._in_pool(self._run_pool, self._engine.run, spec)
        return result

    async def start_attached(self, spec: ContainerSpec, stream: IContainerStream) -> IAttachedContainer:
        if self._socket_dirs is not None and self.hot_transport == "socket":
            return await self._start_bridged(spec, stream, self._socket_dirs)
        container_id, sock = await self._in_pool(
            self._run_pool, lambda deliver: deliver(self._engine.start_attached(spec))
        )
        try:
            return AttachedContainer(container_id, adopt(sock, stream, self._reactor))
        except BaseException:
            await self.remove(container_id)
            raise

    async def _start_bridged(
        self, spec: ContainerSpec, stream: IContainerStream, dirs: SocketDirs
    ) -> IAttachedContainer:
        """``start_attached`` under ``HOT_TRANSPORT=socket``: listen first, then create
        and start the container with the bridge in front of its own command."""
        name = uuid.uuid4().hex[:16]

        def prepare() -> tuple[str, socket.socket]:
            """The container's socket directory and listening socket (file system
            work: on the pool, not the reactor)."""
            try:
                directory = dirs.make(name)
                return directory, listen(directory)
            except BaseException:
                dirs.remove(name)
                raise

        directory, listener = await self._in_pool(self._run_pool, lambda deliver: deliver(prepare()))
        handle = BridgedContainer(stream, listener, self._reactor)
        try:
            container_id, sock = await self._in_pool(
                self._run_pool,
                lambda deliver: deliver(self._engine.start_bridged(spec, directory, name)),
            )
        except BaseException:
            handle.discard()
            await self._call(dirs.remove, name)
            raise
        handle.container_id = container_id
        try:
            adopt(sock, handle, self._reactor)  # stderr only
        except BaseException:
            handle.discard()
            await self.remove(container_id)
            raise
        return handle

    async def remove(self, container_id: str) -> None:
        await self._call(self._engine.remove, container_id)

    async def list_containers(self, labels: Mapping[str, str]) -> list[str]:
        ids: list[str] = await self._call(self._engine.list_ids, labels)
        return ids

    async def remove_containers(self, labels: Mapping[str, str]) -> int:
        def remove_all(labels: Mapping[str, str]) -> int:
            ids = self._engine.list_ids(labels)
            for container_id in ids:
                self._engine.remove(container_id)
            return len(ids)

        removed: int = await self._call(remove_all, labels)
        return removed


def _translate(failure: Failure) -> Failure:
    """docker-py / requests exceptions → domain exceptions; others pass through."""
    error = failure.value
    if isinstance(error, docker.errors.ImageNotFound):
        return Failure(ImageNotFound(str(getattr(error, "explanation", "") or error)))
    if isinstance(error, docker.errors.NotFound):
        return Failure(ContainerNotFound(str(getattr(error, "explanation", "") or error)))
    if isinstance(error, (docker.errors.DockerException, requests.exceptions.RequestException, OSError)):
        return Failure(DockerUnavailable(f"container engine error: {error}"))
    return failure
