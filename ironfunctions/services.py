"""Long-lived parts of the daemon as Twisted services."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ironfunctions.ratelimit import OutageLog
from ironfunctions.threads import stop_pools


class IronFunctionsService(MultiService):
    """The root service.

    It stops its children one at a time, last added first, each only once the one
    before is quiet (``MultiService`` stops them all at once): the listener stops
    accepting, then async workers and the agent drain their calls, then the records
    of those calls are written, and only then do the driver, queue and datastore
    close. A child whose stop fails is logged and the rest still stop.

    Attached to twistd's Application, it installs the logfmt observer as the
    application's log observer (unless ``--logger`` was given), which is how twistd
    lets an application choose its logging."""

    log = Logger()

    def __init__(self, observer: ILogObserver | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._observer = observer

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802 (Twisted API)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self._observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        Service.stopService(self)

        async def stop_in_order() -> None:
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self.log.failure("Stopping {service} failed", service=child.name or repr(child))

        return Deferred.fromCoroutine(stop_in_order())


def settled(d: Deferred[Any] | None) -> Deferred[None]:
    """A Deferred that fires None (never fails) once ``d`` has fired, whatever its
    result: at once if ``d`` is None or has fired. ``d`` keeps its own result."""
    done: Deferred[None] = Deferred()
    if d is None:
        done.callback(None)
    else:

        def fire(result: object) -> object:
            done.callback(None)
            return result

        d.addBoth(fire)
    return done


class Startable(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Readiness:
    """Whether something is ready, and the Deferreds waiting until it is: ``wait()``
    fires once ``set(True)`` (at once if it already is). A waiter cancelled (e.g. by
    ``addTimeout``) is forgotten."""

    def __init__(self) -> None:
        self.ready = False
        self._waiters: list[Deferred[None]] = []

    def set(self, ready: bool) -> None:
        self.ready = ready
        if ready:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def wait(self) -> Deferred[None]:
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda cancelled: self._waiters.remove(cancelled))
        self._waiters.append(d)
        return d


class BackendService(Service):
    """Starts a backend (datastore, queue) in the background, retrying until it
    answers, so the daemon comes up (answering 503) while its database is still down;
    closes it at stop."""

    log = Logger()

    def __init__(self, name: str, backend: Startable, clock: IReactorTime, retry_delay: float = 1.0) -> None:
        self.name = name
        self._backend = backend
        self._clock = clock
        self._retry_delay = retry_delay
        self._ready = Readiness()
        self._starting: Deferred[None] | None = None
        self._not_up = OutageLog(  # a backend down at start is retried every second
            self.log, clock, started="{backend} not available yet ({error}); retrying every {delay}s",
            ongoing="{backend} still not available ({error}) after {attempt} attempts",
            ended="{backend} available after {seconds}s")

    @property
    def ready(self) -> bool:
        return self._ready.ready

    def when_ready(self) -> Deferred[None]:
        """Fires once the backend has started."""
        return self._ready.wait()

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # cancelled by stopService: expected
            self.log.failure("{backend} start loop failed", failure, backend=self.name)

    async def _start(self) -> None:
        from twisted.internet.task import deferLater

        attempt = 0
        while self.running:
            attempt += 1
            try:
                await self._backend.start()
            except CancelledError:  # stopService: stop trying (it is an Exception too)
                raise
            except Exception as e:
                self._not_up.failed(backend=self.name, error=str(e), delay=self._retry_delay, attempt=attempt)
                await deferLater(self._clock, self._retry_delay, lambda: None)
                continue
            self._not_up.recovered(backend=self.name)
            self.log.info("{backend} ready", backend=self.name)
            self._ready.set(True)
            return

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        if self._starting is not None:
            self._starting.cancel()
        self._ready.set(False)
        return Deferred.fromCoroutine(self._backend.close())


class PeriodicService(Service):
    """Calls ``fn`` every ``interval`` seconds (e.g. the ``queue.depth`` gauge), and
    once at start too if ``now``. Errors are logged and the loop goes on: a
    LoopingCall dies on its first uncaught one."""

    log = Logger()

    def __init__(
        self, name: str, interval: float, fn: Callable[[], Awaitable[None]], clock: IReactorTime,
        now: bool = False,
    ) -> None:
        self.name = name
        self._interval = interval
        self._fn = fn
        self._clock = clock
        self._now = now
        self._loop: LoopingCall | None = None
        # A backend outage fails every round (the queue depth every 5 s): one line when
        # it starts, a count a minute, one when it ends (issue 13).
        self._failures = OutageLog(
            self.log, clock, started="{name} failed: {error}",
            ongoing="{name} still failing: {failures} failures in {seconds}s: {error}",
            ended="{name} works again after {seconds}s ({total} failures)")

    async def _tick(self) -> None:
        try:
            await self._fn()
        except Exception as e:
            self._failures.failed(name=self.name, error=str(e))
            return
        self._failures.recovered(name=self.name)

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=self._now).addErrback(
            lambda f: self.log.failure("{name} loop died", f, name=self.name)
        )

    def stopService(self) -> Deferred[None] | None:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None


class FlushOnStopService(Service):
    """Calls ``flush`` when the daemon stops. Added first to the root, it stops last,
    so buffered output (coalesced metric lines) of the last calls is not lost."""

    def __init__(self, name: str, flush: Callable[[], None]) -> None:
        self.name = name
        self._flush = flush

    def stopService(self) -> None:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        self._flush()


class ThreadPoolService(Service):
    """Starts a dedicated thread pool with the daemon and stops it (off the reactor
    thread) when the daemon stops."""

    def __init__(self, name: str, pool: ThreadPool, reactor: Any) -> None:
        self.name = name
        self._pool = pool
        self._reactor = reactor

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        self._pool.start()

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        return stop_pools(self._reactor, self._pool, name=f"{self.name}-stop")
