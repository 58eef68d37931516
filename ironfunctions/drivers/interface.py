"""The container driver interface.

Two ways to run a function container, both built on the same engine calls:

- **cold** (``run``): create, attach, start, feed stdin, collect stdout/stderr, wait,
  remove. One container per call. This is exactly docker-py's
  create/attach/start/wait/remove, so a cold call costs what the engine costs.
- **long-lived** (``start_attached``): create, attach, start, and hand the attached
  stdin/stdout stream to the reactor, where a caller (the hot-function pool, issue 6)
  speaks a protocol over it for many calls, without a thread or an engine call per call.

Methods are coroutine functions. Failures are domain exceptions from
``ironfunctions.errors``: ``DockerUnavailable`` (engine unreachable or an engine error
not attributable to the function), ``ImageNotFound``, ``ContainerNotFound``.
Every provider passes ``tests/contracts/test_driver.py``.
"""

from __future__ import annotations

from typing import Mapping

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ironfunctions.models import ContainerResult, ContainerSpec


class IContainerStream(Interface):
    """Receives what a long-lived container writes. Called on the reactor thread."""

    def stdout_received(data: bytes) -> None:
        """Bytes the container wrote to stdout, in order."""

    def stderr_received(data: bytes) -> None:
        """Bytes the container wrote to stderr, in order."""

    def stream_closed() -> None:
        """The attached stream ended: the container exited or was removed. Called once."""


class IAttachedContainer(Interface):
    """A running long-lived container whose stdin/stdout stream lives on the reactor."""

    container_id = Attribute("The engine's id of the container (str).")

    def write(data: bytes) -> None:
        """Queue ``data`` for the container's stdin (non-blocking, ordered)."""

    def close_stdin() -> None:
        """Close the container's stdin (half-close; stdout keeps flowing)."""


class IContainerDriver(Interface):
    """Runs function containers on one engine.

    ``labels`` arguments select containers whose labels include every given
    ``key=value`` pair (see ``models.LABEL_*``).
    """

    async def ping() -> None:
        """Return when the engine answers; raise ``DockerUnavailable`` otherwise."""

    def probe() -> Deferred[bool]:
        """Whether the engine answers, for ``/health`` and the load-balancer agent:
        fires ``True`` or ``False`` (unreachable, failing or hung), never fails, within
        a few seconds. At most one engine call is in flight for it; concurrent probes
        share its answer (a hung engine does not fill a thread pool with probes)."""

    async def ensure_image(image: str) -> None:
        """Return when ``image`` is present locally, pulling it once (bounded, a few
        seconds) if it is not. Raise ``ImageNotFound`` if it is not there afterwards."""

    async def run(spec: ContainerSpec) -> ContainerResult:
        """Run one cold container to completion and return how it ended.

        The image is pulled once if missing (as ``ensure_image``). ``spec.stdin`` is
        written to the container's stdin, which is then closed. The timeout clock
        starts once the container is running; on expiry the container is killed and
        removed *before* this returns a result with ``timed_out=True``. In every other
        case the container is removed shortly after the result is returned (off the
        caller's path) and at the latest when the driver stops.
        Raise ``ImageNotFound``, ``DockerUnavailable``.
        """

    async def start_attached(
        spec: ContainerSpec, stream: IContainerStream
    ) -> IAttachedContainer:
        """Start a long-lived container with stdin open and attach ``stream`` to its
        output; return a handle to write to its stdin. ``spec.stdin`` and
        ``spec.timeout_s`` are ignored: the caller owns the protocol and the
        container's lifetime and must ``remove`` it.
        Raise ``ImageNotFound``, ``DockerUnavailable``."""

    async def remove(container_id: str) -> None:
        """Kill (if running) and remove the container. Removing a container that is
        already gone is not an error. Raise ``DockerUnavailable``."""

    async def list_containers(labels: Mapping[str, str]) -> list[str]:
        """Ids of every container (running or not) carrying all of ``labels``."""

    async def remove_containers(labels: Mapping[str, str]) -> int:
        """Kill and remove every container carrying all of ``labels`` (crash and stop
        cleanup); return how many were removed."""
