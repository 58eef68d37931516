"""``FakeDriver``: an in-memory container engine with scripted behaviour.

It is the unit tests' driver and passes the same contract suite as ``DockerDriver``.
Each image name maps to a *behaviour*: a function of the ``ContainerSpec`` returning a
``FakeRun`` (exit code, output, how long it "runs"). Time passes on the given clock, so
tests drive timeouts with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, race
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from ironfunctions.config import HOT_TRANSPORTS
from ironfunctions.drivers.interface import IAttachedContainer, IContainerDriver, IContainerStream
from ironfunctions.drivers.probe import PROBE_TIMEOUT_S, SingleFlightProbe
from ironfunctions.errors import DockerUnavailable, ImageNotFound
from ironfunctions.models import ContainerResult, ContainerSpec


@attrs.frozen
class FakeRun:
    """What a fake container does: wait ``start_delay`` s to start, run ``duration`` s,
    then exit with ``exit_code`` having written ``stdout``/``stderr``."""

    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    duration: float = 0.0
    start_delay: float = 0.0
    oom_killed: bool = False


Behaviour = Callable[[ContainerSpec], FakeRun]


def cat(spec: ContainerSpec) -> FakeRun:
    """The default behaviour: echo stdin to stdout, exit 0."""
    return FakeRun(stdout=spec.stdin)


@attrs.define
class FakeContainer:
    """A container the fake engine knows about."""

    id: str
    spec: ContainerSpec
    state: str = "created"  # created | running | exited
    waiters: list[Deferred[None]] = attrs.field(factory=list)


@implementer(IContainerDriver)
class FakeDriver(Service):
    """``IContainerDriver`` in memory.

    :param clock: where simulated time passes.
    :param images: image name → behaviour; unknown images fail with ``ImageNotFound``
        (the fake has no registry to pull from).
    :param hot_transport: ``attach`` or ``socket``, as ``DockerDriver``: under ``socket``
        each long-lived container has a (pretend) socket file, listed by
        ``socket_paths`` until the container is removed or the driver stops.
    """

    name = "driver"

    def __init__(
        self,
        clock: IReactorTime,
        images: Mapping[str, Behaviour] | None = None,
        hot_transport: str = "attach",
    ) -> None:
        if hot_transport not in HOT_TRANSPORTS:
            raise ValueError(f"hot_transport: expected attach or socket, got {hot_transport!r}")
        self._clock = clock
        self.hot_transport = hot_transport
        self.sockets: dict[str, str] = {}
        self.images: dict[str, Behaviour] = dict(images or {})
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.started_specs: list[ContainerSpec] = []
        self.down = False
        self.hung = False  # pings time out, as against a hung engine
        self.pings = 0  # engine calls made by ping and probe
        self._probe = SingleFlightProbe(lambda: Deferred.fromCoroutine(self.ping()), clock)
        self._ids = itertools.count(1)

    def add_image(self, image: str, behaviour: Behaviour = cat) -> None:
        self.images[image] = behaviour

    def add_container(self, labels: Mapping[str, str], image: str = "leftover") -> str:
        """Pretend a container exists (e.g. left behind by a crashed run)."""
        container = self._new(ContainerSpec(image=image, labels=labels))
        container.state = "exited"
        return container.id

    def _new(self, spec: ContainerSpec) -> FakeContainer:
        container = FakeContainer(f"fake{next(self._ids):08d}", spec)
        self.containers[container.id] = container
        return container

    def _check_up(self) -> None:
        if self.down:
            raise DockerUnavailable("container engine error: fake engine is down")

    async def ping(self) -> None:
        self.pings += 1
        if self.hung:
            # The real driver's ping gives up on its socket timeout.
            await deferLater(self._clock, PROBE_TIMEOUT_S)
            raise DockerUnavailable("container engine error: fake engine did not answer")
        self._check_up()

    def probe(self) -> Deferred[bool]:
        return self._probe.probe()

    async def ensure_image(self, image: str) -> None:
        self._check_up()
        if image not in self.images:
            raise ImageNotFound(image)

    async def run(self, spec: ContainerSpec) -> ContainerResult:
        await self.ensure_image(spec.image)
        run = self.images[spec.image](spec)
        container = self._new(spec)
        if run.start_delay:
            await deferLater(self._clock, run.start_delay)
        container.state = "running"
        self.started_specs.append(spec)
        start_ms = int(round(run.start_delay * 1000))
        began = self._clock.seconds()
        if await self._runs_until(container, min(run.duration, spec.timeout_s)):
            # Removed from outside while running: killed.
            return ContainerResult(
                container.id, 137, start_ms=start_ms,
                run_ms=int(round((self._clock.seconds() - began) * 1000)),
            )
        if run.duration > spec.timeout_s:
            self._remove_now(container.id)
            return ContainerResult(
                container.id, -1, timed_out=True, start_ms=start_ms,
                run_ms=int(round(spec.timeout_s * 1000)),
            )
        container.state = "exited"
        stdout, stderr = run.stdout, run.stderr
        result = ContainerResult(
            container.id,
            run.exit_code,
            stdout[: spec.stdout_limit],
            stderr[: spec.stderr_limit],
            oom_killed=run.oom_killed,
            stdout_truncated=len(stdout) > spec.stdout_limit,
            stderr_truncated=len(stderr) > spec.stderr_limit,
            stderr_lost_bytes=max(0, len(stderr) - spec.stderr_limit),
            stderr_lost_lines=stderr.count(b"\n", spec.stderr_limit),
            start_ms=start_ms,
            run_ms=int(round(run.duration * 1000)),
        )
        # Removed "shortly after" the result, as the real driver does.
        self._clock.callLater(0, self._remove_now, container.id)
        return result

    async def _runs_until(self, container: FakeContainer, seconds: float) -> bool:
        """Let ``seconds`` pass; return True if the container was removed meanwhile."""
        if seconds <= 0:
            return False
        removed: Deferred[None] = Deferred()
        container.waiters.append(removed)
        index, _ = await race([deferLater(self._clock, seconds), removed])
        return index == 1

    async def start_attached(self, spec: ContainerSpec, stream: IContainerStream) -> IAttachedContainer:
        await self.ensure_image(spec.image)
        container = self._new(spec)
        container.state = "running"
        self.started_specs.append(spec)
        if self.hot_transport == "socket":
            self.sockets[container.id] = f"/fake/hot-sockets/{container.id}/s"
        behaviour = self.images[spec.image]
        run = None if behaviour is cat else behaviour(attrs.evolve(spec, stdin=b""))
        return FakeAttachedContainer(container, stream, self._clock, run)

    def socket_paths(self) -> list[str]:
        """The hot containers' socket files that exist (``socket`` transport)."""
        return sorted(self.sockets.values())

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.sockets.clear()

    def _remove_now(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            container.state = "exited"
            self.removed.append(container_id)
            self.sockets.pop(container_id, None)
            for waiter in container.waiters:
                if not waiter.called:
                    waiter.callback(None)

    async def remove(self, container_id: str) -> None:
        self._check_up()
        self._remove_now(container_id)

    async def list_containers(self, labels: Mapping[str, str]) -> list[str]:
        self._check_up()
        return [
            c.id
            for c in self.containers.values()
            if all(c.spec.labels.get(k) == v for k, v in labels.items())
        ]

    async def remove_containers(self, labels: Mapping[str, str]) -> int:
        ids = await self.list_containers(labels)
        for container_id in ids:
            self._remove_now(container_id)
        return len(ids)


@implementer(IAttachedContainer)
class FakeAttachedContainer:
    """A long-lived fake container. With the ``cat`` behaviour it echoes its stdin to
    its stdout; with any other, it writes the behaviour's stdout and stderr (as for an
    empty stdin) and exits."""

    def __init__(
        self, container: FakeContainer, stream: IContainerStream, clock: IReactorTime,
        run: FakeRun | None = None,
    ) -> None:
        self.container_id = container.id
        self._container = container
        self._stream = stream
        self._clock = clock
        self._closed = False
        removed: Deferred[None] = Deferred()
        removed.addCallback(lambda _: self._ended())
        container.waiters.append(removed)  # removal ends the stream, as a kill does
        if run is not None:
            clock.callLater(run.duration, self._run, run)

    def _run(self, run: FakeRun) -> None:
        if self._container.state == "running":
            if run.stderr:
                self._stream.stderr_received(run.stderr)
            if run.stdout:
                self._stream.stdout_received(run.stdout)
            self._close()

    def write(self, data: bytes) -> None:
        self._clock.callLater(0, self._echo, data)

    def _echo(self, data: bytes) -> None:
        if self._container.state == "running":
            self._stream.stdout_received(data)

    def close_stdin(self) -> None:
        self._clock.callLater(0, self._close)

    def _close(self) -> None:
        if self._container.state == "running":
            self._container.state = "exited"
            self._ended()

    def _ended(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.stream_closed()


