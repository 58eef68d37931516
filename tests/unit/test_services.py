"""Root service stop order and the backend start-retry service."""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, fail
from twisted.internet.task import Clock

from ironfunctions.services import BackendService, IronFunctionsService, Readiness, settled


class Recorder(Service):
    name: str  # always given here; Service declares it optional

    def __init__(self, name: str, log: list[str], gate: Deferred[None] | None = None, fail: bool = False) -> None:
        self.name, self._log, self._gate, self._fail = name, log, gate, fail

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # Service.stopService is untyped
        self._log.append("stop " + self.name)
        if self._fail:
            raise RuntimeError("boom")
        return self._gate


def test_children_stop_one_at_a_time_last_added_first() -> None:
    log: list[str] = []
    gate: Deferred[None] = Deferred()
    root = IronFunctionsService()
    for child in (Recorder("datastore", log), Recorder("agent", log, fail=True), Recorder("listener", log, gate)):
        child.setServiceParent(root)
    root.startService()  # type: ignore[no-untyped-call]  # MultiService.startService is untyped
    done = root.stopService()
    assert log == ["stop listener"] and not done.called  # waits for the listener
    gate.callback(None)
    assert log == ["stop listener", "stop agent", "stop datastore"] and done.called


class FlakyBackend:
    def __init__(self, failures: int) -> None:
        self.failures, self.started, self.closed = failures, 0, False

    async def start(self) -> None:
        self.started += 1
        if self.started <= self.failures:
            raise ConnectionError("down")

    async def close(self) -> None:
        self.closed = True


def test_backend_service_retries_until_ready() -> None:
    clock, backend = Clock(), FlakyBackend(2)
    service = BackendService("queue", backend, clock, retry_delay=1.0)
    ready = service.when_ready()
    service.startService()
    assert not service.ready
    clock.advance(1)
    clock.advance(1)
    assert service.ready and ready.called and backend.started == 3
    service.stopService()
    assert backend.closed


def test_periodic_service_runs_at_start_if_asked_and_survives_errors() -> None:
    from ironfunctions.services import PeriodicService

    clock, runs = Clock(), []

    async def tick() -> None:
        runs.append(clock.seconds())
        if len(runs) == 2:
            raise RuntimeError("flaky")

    service = PeriodicService("ticks", 2.0, tick, clock, now=True)
    service.startService()
    assert runs == [0]
    clock.advance(2)
    clock.advance(2)  # the failure at 2 s is logged; the loop goes on
    assert runs == [0, 2, 4]
    service.stopService()
    clock.advance(2)
    assert runs == [0, 2, 4]


def test_readiness_fires_its_waiters_once_ready_and_forgets_one_that_timed_out() -> None:
    clock = Clock()
    readiness = Readiness()
    early = readiness.wait()
    timed = readiness.wait().addTimeout(1, clock)
    clock.advance(1)
    failures: list[object] = []
    timed.addErrback(lambda f: failures.append(f.check(DeferredTimeout)))
    assert failures == [DeferredTimeout] and len(readiness._waiters) == 1
    fired: list[object] = []
    early.addCallback(fired.append)
    readiness.set(True)
    assert fired == [None] and readiness.wait().called


def test_settled_fires_once_its_deferred_has_whatever_its_result() -> None:
    pending: Deferred[None] = Deferred()
    later = settled(pending)
    assert not later.called
    pending.errback(RuntimeError("start-up removal failed"))
    pending.addErrback(lambda f: None)
    assert later.called and settled(None).called
    failed = fail(RuntimeError("x"))
    assert settled(failed).called
    failed.addErrback(lambda f: None)
