"""Code that retries through an outage warns outage-style (issue 13): a line when it
starts, a count a minute, a line when it ends; not a line per retry. On a ``Clock``."""

from __future__ import annotations

from typing import AbstractSet, Any, Sequence

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from ironfunctions import errors
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.drivers.netguard import EngineUnavailable
from ironfunctions.drivers.netguard_service import NetguardService
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import CallResult, Route
from ironfunctions.mq.interface import Reservation
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.async_worker import AsyncWorkerService
from ironfunctions.runner.reports import NodeGaugesService
from ironfunctions.services import BackendService

THREE_MINUTES = 170  # seconds of outage: a start line and two counts


def outage_kinds(events: Sequence[dict[str, Any]]) -> list[object]:
    """What was logged at warning level or above, and the ``ended`` lines."""
    return [e.get("outage", e["log_format"]) for e in events
            if e["log_level"] >= LogLevel.warn or e.get("outage") == "ended"]


class DownQueue(MemoryQueue):
    """A queue whose ``reserve`` fails while ``down``."""

    down = True

    async def reserve(self, lease_seconds: float, timeout: float = 0,
                      apps: AbstractSet[str] | None = None) -> Reservation | None:
        if self.down:
            raise errors.QueueUnavailable("queue unavailable: connection refused")
        return await super().reserve(lease_seconds, timeout, apps)  # waits on the clock: empty


def test_async_workers_warn_once_per_queue_outage_not_once_per_worker_and_retry() -> None:
    clock = Clock()
    queue = DownQueue(clock)

    async def unused(*args: object) -> CallResult:
        raise AssertionError("no call should run")

    async def lookup(app: str, path: str) -> Route:
        raise AssertionError("no lookup")

    workers = AsyncWorkerService(
        queue, MemoryCallStore(), lookup, unused, unused, unused,  # type: ignore[arg-type]
        clock, MemoryMetrics(), num_workers=4, max_attempts=3, retry_base=1.0,
    )
    with capturedLogs() as events:
        workers.startService()
        for _ in range(THREE_MINUTES):  # every worker retries each second
            clock.advance(1)
        queue.down = False
        for _ in range(6):
            clock.advance(1)  # a reserve that works waits up to 5 s for a call, then says so
        stopping = workers.stopService()
        clock.advance(60)
    assert outage_kinds(events) == ["started", "ongoing", "ongoing", "ended"]
    assert stopping.called


def test_node_gauges_warn_once_per_queue_outage() -> None:
    clock = Clock()
    depth: list[int | Exception] = [3]

    async def queue_depth() -> int:
        value = depth[0]
        if isinstance(value, Exception):
            raise value
        return value

    gauges = NodeGaugesService(MemoryMetrics(), clock, Slots(4, clock, 10, 1.0), queue_depth, lambda: {})
    with capturedLogs() as events:
        gauges.startService()
        depth[0] = errors.QueueUnavailable("queue unavailable: down")
        for _ in range(THREE_MINUTES):  # a round every 5 s
            clock.advance(1)
        depth[0] = 2
        clock.advance(5)
        gauges.stopService()
    assert outage_kinds(events) == ["started", "ongoing", "ongoing", "ended"]


class DownEngineGuard:
    network = "ironfunctions"

    def __init__(self) -> None:
        self.down = True

    def ensure(self) -> list[str]:
        if self.down:
            raise EngineUnavailable("connection refused")
        return []


def test_the_network_guard_warns_once_while_the_engine_is_down() -> None:
    clock = Clock()
    guard = DownEngineGuard()
    service = NetguardService(guard, reactor=None, on_fatal=lambda line: None, clock=clock,
                              in_pool=maybeDeferred)
    with capturedLogs() as events:
        service.startService()
        for _ in range(THREE_MINUTES):  # retried each second until the rules are in place
            clock.advance(1)
        guard.down = False
        clock.advance(1)
    assert service.ready
    assert outage_kinds(events) == ["started", "ongoing", "ongoing", "ended"]


class DownBackend:
    def __init__(self) -> None:
        self.down = True

    async def start(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")

    async def close(self) -> None:
        pass


def test_a_backend_down_at_start_is_retried_quietly() -> None:
    clock, backend = Clock(), DownBackend()
    service = BackendService("datastore", backend, clock, retry_delay=1.0)
    with capturedLogs() as events:
        service.startService()
        for _ in range(THREE_MINUTES):
            clock.advance(1)
        backend.down = False
        clock.advance(1)
    assert service.ready
    assert outage_kinds(events) == ["started", "ongoing", "ongoing", "ended"]
    service.stopService()
