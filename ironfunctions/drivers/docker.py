"""``DockerDriver``: function containers on a Docker engine, through docker-py.

docker-py is blocking, so every engine call runs on the driver's own ``ThreadPool``
(sized to the node's container limit, plus a small control pool for kills, listings
and pings), never on the reactor thread and never on the reactor's default pool, which
Twisted's resolver needs (STYLE rule 11). docker-py exceptions are translated into
domain exceptions here and go no further.

The cold path is docker-py's create/attach/start/wait/remove and nothing more:
no image inspection up front (a missing image shows up as a failed create, then one
bounded pull is tried), an inspect only when the exit code says SIGKILL (to tell an OOM
kill), and the remove happens after the result has been handed back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Mapping

import attrs
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
from ironfunctions.drivers.attach import AttachedContainer, adopt
from ironfunctions.drivers.bridged import (
    BRIDGE_IN_CONTAINER, SOCKET_DIR_IN_CONTAINER, SOCKET_NAME, BridgedContainer, SocketDirs, listen,
)
from ironfunctions.drivers.interface import IAttachedContainer, IContainerDriver, IContainerStream
from ironfunctions.drivers.pump import pump
from ironfunctions.errors import ContainerNotFound, DockerUnavailable, ImageNotFound
from ironfunctions.models import ContainerResult, ContainerSpec

# Engine API 1.41 (Docker 20.10) is served by every engine since; pinning it avoids a
# version request (blocking I/O) when the client is built.
DEFAULT_API_VERSION = "1.41"
_ATTACH = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
_ATTACH_STDERR = {"stdin": 0, "stdout": 0, "stderr": 1, "stream": 1}
HOT_TRANSPORTS = ("attach", "socket")


@implementer(IContainerDriver)
class DockerDriver(Service):
    """``IContainerDriver`` on a Docker engine; a ``Service`` owning its thread pools.

    :param reactor: the reactor (threads and socket adoption).
    :param max_concurrency: containers this node runs at once; sizes the run pool.
    :param base_url: engine address (``DOCKER_HOST``); ``""`` = docker-py's default.
    :param api_timeout: bound in seconds on each engine request other than wait/attach.
    :param pull_timeout: bound in seconds on the one pull attempted for a missing image.
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
        hot_transport: str = "attach",
        socket_dir: str = "",
        bridge_binary: str = bridge.BINARY,
    ) -> None:
        if hot_transport not in HOT_TRANSPORTS:
            raise ValueError(f"hot_transport: expected attach or socket, got {hot_transport!r}")
        if hot_transport == "socket" and not socket_dir:
            raise ValueError("hot_transport socket needs a socket_dir")
        self._reactor = reactor
        self.hot_transport = hot_transport
        self._socket_dirs = SocketDirs(socket_dir) if socket_dir else None
        self._bridge_binary = bridge_binary
        # container id -> its socket directory's name; image id -> argv (socket only)
        self._socket_names: dict[str, str] = {}
        self._argv_of_image: dict[str, list[str]] = {}
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if base_url:
            kwargs["base_url"] = base_url
        size = max_concurrency + 4  # + room for removals finishing after their result
        self._api = docker.APIClient(
            version=api_version, timeout=api_timeout, max_pool_size=size, **kwargs
        )
        self._pull_api = docker.APIClient(version=api_version, timeout=pull_timeout, **kwargs)
        self._run_pool = ThreadPool(minthreads=0, maxthreads=size, name="docker-run")
        self._control_pool = ThreadPool(minthreads=0, maxthreads=4, name="docker-control")

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
        done: Deferred[None] = Deferred()

        def stop_pools() -> None:
            self._run_pool.stop()
            self._control_pool.stop()
            if self._socket_dirs is not None:
                self._socket_dirs.wipe()
            self._reactor.callFromThread(done.callback, None)

        threading.Thread(target=stop_pools, name="docker-driver-stop", daemon=True).start()
        return done

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
        await self._call(self._api.ping)

    async def ensure_image(self, image: str) -> None:
        await self._call(self._ensure_image_blocking, image)

    async def run(self, spec: ContainerSpec) -> ContainerResult:
        result: ContainerResult = await self._in_pool(self._run_pool, self._run_blocking, spec)
        return result

    async def start_attached(self, spec: ContainerSpec, stream: IContainerStream) -> IAttachedContainer:
        if self._socket_dirs is not None and self.hot_transport == "socket":
            return await self._start_bridged(spec, stream, self._socket_dirs)
        container_id, sock = await self._in_pool(
            self._run_pool, lambda deliver: deliver(self._start_attached_blocking(spec))
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
                lambda deliver: deliver(self._start_bridged_blocking(spec, directory, name)),
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
        await self._call(self._remove_blocking, container_id)

    async def list_containers(self, labels: Mapping[str, str]) -> list[str]:
        ids: list[str] = await self._call(self._list_blocking, labels)
        return ids

    async def remove_containers(self, labels: Mapping[str, str]) -> int:
        def remove_all(labels: Mapping[str, str]) -> int:
            ids = self._list_blocking(labels)
            for container_id in ids:
                self._remove_blocking(container_id)
            return len(ids)

        removed: int = await self._call(remove_all, labels)
        return removed

    # -- blocking helpers (run in the pools only)

    def _list_blocking(self, labels: Mapping[str, str]) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return [c["Id"] for c in self._api.containers(all=True, quiet=True, filters=filters)]

    def _remove_blocking(self, container_id: str) -> None:
        try:
            self._api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            # "removal already in progress" means someone else is on it.
            if e.status_code != 409:
                raise
        name = self._socket_names.pop(container_id, None)
        if name is not None and self._socket_dirs is not None:
            self._socket_dirs.remove(name)

    def _kill_blocking(self, container_id: str) -> None:
        try:
            self._api.kill(container_id)
        except docker.errors.APIError:
            pass  # already exited: nothing to kill

    def _ensure_image_blocking(self, image: str) -> None:
        try:
            self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            self._pull_once(image)

    def _pull_once(self, image: str) -> None:
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            self._pull_api.pull(repository, tag=tag or "latest")
            self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            raise ImageNotFound(image) from None

    def _create(
        self,
        spec: ContainerSpec,
        stdin_once: bool,
        entrypoint: list[str] | None = None,
        binds: dict[str, Mapping[str, str]] | None = None,
    ) -> str:
        memory = f"{spec.memory_mb}m"
        host_config = self._api.create_host_config(
            binds=binds,
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=spec.pids_limit,
            network_mode=spec.network_mode,
            # The output comes back over the attach stream; the engine need not log it.
            log_config=docker.types.LogConfig(type="none"),
        )

        config = self._api.create_container_config(
            spec.image,
            None,  # type: ignore[arg-type]  # the image's own command
            stdin_open=entrypoint is None,
            entrypoint=entrypoint,
            environment=docker.utils.format_environment(dict(spec.env)),
            labels=dict(spec.labels),
            host_config=host_config,
        )
        # stdin_once: the engine closes the container's stdin when our attach stream
        # half-closes (cold); a long-lived container keeps it open across calls.
        config["StdinOnce"] = stdin_once

        def create() -> str:
            container = self._api.create_container_from_config(config)  # type: ignore[no-untyped-call]
            return str(container["Id"])

        try:
            try:
                return create()
            except docker.errors.ImageNotFound:
                self._pull_once(spec.image)
            try:
                return create()
            except docker.errors.ImageNotFound:
                raise ImageNotFound(spec.image) from None
        except docker.errors.APIError as e:
            # 400 on create: the engine cannot use this image reference ("invalid
            # reference format"). A route's mistake, not the engine's: 502, not 503.
            if e.status_code == 400:
                raise ImageNotFound(f"{spec.image} ({e.explanation or e})") from None
            raise

    def _attach(self, container_id: str, params: Mapping[str, int] = _ATTACH) -> socket.socket:
        wrapper = self._api.attach_socket(container_id, params=dict(params))
        sock: socket.socket = getattr(wrapper, "_sock", wrapper)
        return sock

    def _run_blocking(self, deliver: Callable[[ContainerResult], None], spec: ContainerSpec) -> None:
        began = time.monotonic()
        container_id = self._create(spec, stdin_once=True)
        result: ContainerResult | None = None
        try:
            sock = self._attach(container_id)
            try:
                self._api.start(container_id)
                started = time.monotonic()
                deadline = started + spec.timeout_s
                output = pump(
                    sock, spec.stdin, deadline, spec.stdout_limit, spec.stderr_limit,
                    lambda: self._control_pool.callInThread(self._kill_blocking, container_id),
                )
            finally:
                sock.close()
            start_ms = _ms(started - began)
            if output.timed_out:
                self._remove_blocking(container_id)
                result = ContainerResult(
                    container_id, -1, output.stdout, output.stderr, timed_out=True,
                    stdout_truncated=output.stdout_truncated,
                    stderr_truncated=output.stderr_truncated,
                    start_ms=start_ms, run_ms=_ms(time.monotonic() - started),
                )
                deliver(result)
                return
            remaining = int(max(1.0, deadline - time.monotonic() + 5.0))
            try:
                status = self._api.wait(container_id, timeout=remaining)
                exit_code = int(status.get("StatusCode", -1))
            except docker.errors.NotFound:  # removed from outside (stop/crash cleanup)
                exit_code = 137
            ended = time.monotonic()
            oom_killed = False
            if exit_code == 137:  # SIGKILL: the OOM killer, or a kill
                try:
                    state = self._api.inspect_container(container_id)["State"]
                    oom_killed = bool(state.get("OOMKilled"))
                except docker.errors.NotFound:
                    pass
            result = ContainerResult(
                container_id, exit_code, output.stdout, output.stderr,
                oom_killed=oom_killed,
                stdout_truncated=output.stdout_truncated,
                stderr_truncated=output.stderr_truncated,
                start_ms=start_ms, run_ms=_ms(ended - started),
            )
            deliver(result)
        finally:
            if result is None or not result.timed_out:
                self._remove_blocking(container_id)

    def _start_attached_blocking(self, spec: ContainerSpec) -> tuple[str, socket.socket]:
        container_id = self._create(spec, stdin_once=False)
        try:
            sock = self._attach(container_id)
            self._api.start(container_id)
        except BaseException:
            self._remove_blocking(container_id)
            raise
        return container_id, sock

    def _start_bridged_blocking(
        self, spec: ContainerSpec, directory: str, name: str
    ) -> tuple[str, socket.socket]:
        image_id, argv = self._image_argv(spec.image)
        # Create from the id that was inspected: a tag moved meanwhile must not pair one
        # image's command with another image.
        spec = attrs.evolve(spec, image=image_id)
        entrypoint = [BRIDGE_IN_CONTAINER, f"{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}", *argv]
        binds: dict[str, Mapping[str, str]] = {
            self._bridge_binary: {"bind": BRIDGE_IN_CONTAINER, "mode": "ro"},
            directory: {"bind": SOCKET_DIR_IN_CONTAINER, "mode": "rw"},
        }
        container_id = self._create(spec, stdin_once=False, entrypoint=entrypoint, binds=binds)
        self._socket_names[container_id] = name
        try:
            sock = self._attach(container_id, _ATTACH_STDERR)
            self._api.start(container_id)
        except BaseException:
            self._remove_blocking(container_id)
            raise
        return container_id, sock

    def _image_argv(self, image: str) -> tuple[str, list[str]]:
        """The image's id and entrypoint + command, pulled once if missing; the argv is
        kept per image id (a re-tagged name gets its new command)."""
        try:
            info = self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            self._pull_once(image)
            info = self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        image_id = str(info["Id"])
        argv = self._argv_of_image.get(image_id)
        if argv is None:
            config = info.get("Config") or {}
            argv = [str(a) for a in (config.get("Entrypoint") or []) + (config.get("Cmd") or [])]
            if not argv:
                raise DockerUnavailable(f"image {image} has neither an entrypoint nor a command")
            self._argv_of_image[image_id] = argv
        return image_id, argv


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


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
