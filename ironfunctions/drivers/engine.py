"""The blocking side of ``DockerDriver``: docker-py calls, run on the driver's thread
pools only (never the reactor thread).

The cold path is docker-py's create/attach/start/wait/remove and nothing more:
no image inspection up front (a missing image shows up as a failed create, then one
bounded pull is tried), an inspect only when the exit code says SIGKILL (to tell an OOM
kill), and the remove happens after the result has been handed back.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Mapping

import attrs
import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
from twisted.python.threadpool import ThreadPool

from ironfunctions.drivers.bridged import BRIDGE_IN_CONTAINER, SOCKET_DIR_IN_CONTAINER, SOCKET_NAME, SocketDirs
from ironfunctions.drivers.pump import pump
from ironfunctions.errors import DockerUnavailable, ImageNotFound
from ironfunctions.models import ContainerResult, ContainerSpec

_ATTACH = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
_ATTACH_STDERR = {"stdin": 0, "stdout": 0, "stderr": 1, "stream": 1}


class Engine:
    """Blocking container operations on one engine.

    :param api: docker-py's client for every request but pulls.
    :param pull_api: the client for the one pull tried for a missing image.
    :param ping_api: the client for pings, with a short socket timeout (default: ``api``).
    :param control_pool: where a timed-out cold container's kill runs.
    :param socket_dirs: per-container socket directories (``socket`` transport).
    :param bridge_binary: host path of the static bridge (``socket`` transport).
    """

    def __init__(self, api: docker.APIClient, pull_api: docker.APIClient, control_pool: ThreadPool,
                 socket_dirs: SocketDirs | None, bridge_binary: str,
                 ping_api: docker.APIClient | None = None, labels: Mapping[str, str] | None = None) -> None:
        self._api = api
        self._labels = dict(labels or {})  # on every container (a worker process's index)
        self._ping_api = ping_api or api
        self._pull_api = pull_api
        self._control_pool = control_pool
        self._socket_dirs = socket_dirs
        self._bridge_binary = bridge_binary
        # container id -> its socket directory's name; image id -> argv (socket only)
        self._socket_names: dict[str, str] = {}
        self._argv_of_image: dict[str, list[str]] = {}

    def ping(self) -> None:
        self._ping_api.ping()

    def list_ids(self, labels: Mapping[str, str]) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return [c["Id"] for c in self._api.containers(all=True, quiet=True, filters=filters)]

    def remove(self, container_id: str) -> None:
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

    def kill(self, container_id: str) -> None:
        try:
            self._api.kill(container_id)
        except docker.errors.APIError:
            pass  # already exited: nothing to kill

    def ensure_image(self, image: str) -> None:
        try:
            self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            self.pull_once(image)

    def pull_once(self, image: str) -> None:
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            self._pull_api.pull(repository, tag=tag or "latest")
            self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            raise ImageNotFound(image) from None

    def create(
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
            **_hardening(spec),
        )

        config = self._api.create_container_config(
            spec.image,
            None,  # type: ignore[arg-type]  # the image's own command
            stdin_open=entrypoint is None,
            entrypoint=entrypoint,
            user=spec.user or None,
            environment=docker.utils.format_environment(dict(spec.env)),
            labels={**spec.labels, **self._labels},
            host_config=host_config,
        )
        # stdin_once: the engine closes the container's stdin when our attach stream
        # half-closes (cold); a long-lived container keeps it open across calls.
        config["StdinOnce"] = stdin_once

        def create_once() -> str:
            container = self._api.create_container_from_config(config)  # type: ignore[no-untyped-call]
            return str(container["Id"])

        try:
            try:
                return create_once()
            except docker.errors.ImageNotFound:
                self.pull_once(spec.image)
            try:
                return create_once()
            except docker.errors.ImageNotFound:
                raise ImageNotFound(spec.image) from None
        except docker.errors.APIError as e:
            # 400 on create: the engine cannot use this image reference ("invalid
            # reference format"). A route's mistake, not the engine's: 502, not 503.
            if e.status_code == 400:
                raise ImageNotFound(f"{spec.image} ({e.explanation or e})") from None
            raise

    def attach(self, container_id: str, params: Mapping[str, int] = _ATTACH) -> socket.socket:
        wrapper = self._api.attach_socket(container_id, params=dict(params))
        sock: socket.socket = getattr(wrapper, "_sock", wrapper)
        return sock

    def run(self, deliver: Callable[[ContainerResult], None], spec: ContainerSpec) -> None:
        began = time.monotonic()
        container_id = self.create(spec, stdin_once=True)
        result: ContainerResult | None = None
        try:
            try:
                sock = self.attach(container_id)
            except docker.errors.NotFound:  # removed from outside before it ran
                result = self._removed_before_start(container_id, began)
                deliver(result)
                return
            try:
                try:
                    self._api.start(container_id)
                except docker.errors.APIError as e:
                    # 404, or 409 "marked for removal": removed while being started
                    if e.status_code not in (404, 409) or (e.status_code == 409 and "removal" not in str(e)):
                        raise
                    result = self._removed_before_start(container_id, began)
                    deliver(result)
                    return
                started = time.monotonic()
                deadline = started + spec.timeout_s
                output = pump(
                    sock, spec.stdin, deadline, spec.stdout_limit, spec.stderr_limit,
                    lambda: self._control_pool.callInThread(self.kill, container_id),
                )
            finally:
                sock.close()
            start_ms = _ms(started - began)
            if output.timed_out:
                self.remove(container_id)
                result = ContainerResult(
                    container_id, -1, output.stdout, output.stderr, timed_out=True,
                    stdout_truncated=output.stdout_truncated,
                    stderr_truncated=output.stderr_truncated,
                    stderr_lost_bytes=output.stderr_lost_bytes, stderr_lost_lines=output.stderr_lost_lines,
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
                stderr_lost_bytes=output.stderr_lost_bytes, stderr_lost_lines=output.stderr_lost_lines,
                start_ms=start_ms, run_ms=_ms(ended - started),
            )
            deliver(result)
        finally:
            if result is None or not result.timed_out:
                self.remove(container_id)

    @staticmethod
    def _removed_before_start(container_id: str, began: float) -> ContainerResult:
        """A container removed from outside (the node's stop or crash cleanup) between
        its creation and its start ran nothing: it ends as a killed one does."""
        return ContainerResult(container_id, 137, b"", b"", start_ms=_ms(time.monotonic() - began), run_ms=0)

    def start_attached(self, spec: ContainerSpec) -> tuple[str, socket.socket]:
        container_id = self.create(spec, stdin_once=False)
        try:
            sock = self.attach(container_id)
            self._api.start(container_id)
        except BaseException:
            self.remove(container_id)
            raise
        return container_id, sock

    def start_bridged(
        self, spec: ContainerSpec, directory: str, name: str
    ) -> tuple[str, socket.socket]:
        image_id, argv = self.image_argv(spec.image)
        # Create from the id that was inspected: a tag moved meanwhile must not pair one
        # image's command with another image.
        spec = attrs.evolve(spec, image=image_id)
        entrypoint = [BRIDGE_IN_CONTAINER, f"{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}", *argv]
        binds: dict[str, Mapping[str, str]] = {
            self._bridge_binary: {"bind": BRIDGE_IN_CONTAINER, "mode": "ro"},
            # Read-only: the function connects to the daemon's socket but can plant
            # nothing on the host (issue 11: a setuid binary left there ran as root).
            directory: {"bind": SOCKET_DIR_IN_CONTAINER, "mode": "ro"},
        }
        container_id = self.create(spec, stdin_once=False, entrypoint=entrypoint, binds=binds)
        self._socket_names[container_id] = name
        try:
            sock = self.attach(container_id, _ATTACH_STDERR)
            self._api.start(container_id)
        except BaseException:
            self.remove(container_id)
            raise
        return container_id, sock

    def image_argv(self, image: str) -> tuple[str, list[str]]:
        """The image's id and entrypoint + command, pulled once if missing; the argv is
        kept per image id (a re-tagged name gets its new command)."""
        try:
            info = self._api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.NotFound:
            self.pull_once(image)
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


def _hardening(spec: ContainerSpec) -> dict[str, Any]:
    """The host config of ``spec``'s hardening (issue 11), as docker-py arguments."""
    kwargs: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "cap_add": list(spec.capabilities),
        "ulimits": [docker.types.Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile)],
        "read_only": spec.read_only_rootfs,
    }
    if spec.no_new_privileges:
        kwargs["security_opt"] = ["no-new-privileges"]
    if spec.cpu_shares:
        kwargs["cpu_shares"] = spec.cpu_shares
    if spec.tmpfs_mb:
        # exec: a runtime may unpack native code there (the function's code is arbitrary
        # anyway); nosuid/nodev: nothing planted there gains privileges.
        kwargs["tmpfs"] = {"/tmp": f"rw,exec,nosuid,nodev,size={spec.tmpfs_mb}m,mode=1777"}
    return kwargs


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))
