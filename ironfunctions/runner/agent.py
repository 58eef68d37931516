"""The agent: takes a call (route + request), runs it, returns how it ended.

It owns what every way of running a call shares: refusing work while stopping,
counters for ``/stats``, per-call metrics (SPEC §6), logging the function's stderr with
its call id (within the node's budget: ``runner/stderr_log.py``), and draining in-flight calls at stop. *How* a call runs is a
``CallRunner`` chosen by the route's format: ``ColdRunner`` here (one container per
call) for ``default``, and ``runner.hot.HotRunner`` (pools of hot containers) for
``http``. Container admission (``Slots``) is shared between runners so cold and hot
containers together stay within the node's ``MAX_CONCURRENCY``.

At start the agent removes containers that a crashed previous run of this node (same
``NODE_ID``) left behind; at stop, after draining, it removes its own.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import attrs

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.calls.model import LOG_TRUNCATED_MARKER
from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.errors import NotReady, Overloaded
from ironfunctions.metrics import IMetrics
from ironfunctions.models import (
    CANCELLED_MESSAGE,
    LABEL_CALL,
    LABEL_NODE,
    Call,
    CallResult,
    CallStatus,
    ContainerResult,
)
from ironfunctions.runner.admission import DEFAULT_MAX_WAITING, DEFAULT_WAIT_BOUND_S, Slots, SlotSource
from ironfunctions.runner.plan import FunctionPolicy, container_spec
from ironfunctions.runner.stderr_log import StderrLog
from ironfunctions.services import settled

DEFAULT_DRAIN_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 30.0
_log = Logger()


class CallRunner(Protocol):
    """Runs one call of a given format to its end."""

    async def run(self, call: Call) -> CallResult:
        """Return how the call ended; raise ``Overloaded``, ``ImageNotFound``,
        ``DockerUnavailable`` when it could not run at all."""
        ...

    async def cancel(self, call_id: str) -> bool:
        """Stop the container running ``call_id`` (its ``run`` then ends with an error
        result); return whether this runner was running it."""
        ...


def cold_outcome(call_id: str, result: ContainerResult, wait_ms: int) -> CallResult:
    """How a cold call ended, from how its container ended (pure)."""
    if result.timed_out:
        status, error = CallStatus.TIMEOUT, "Timed out"
    elif result.stdout_truncated:
        status, error = CallStatus.ERROR, "Function response too large"
    elif result.oom_killed:
        status, error = CallStatus.ERROR, "out of memory"
    elif result.exit_code != 0:
        status, error = CallStatus.ERROR, f"exit code {result.exit_code}"
    else:
        status, error = CallStatus.SUCCESS, ""
    return CallResult(
        call_id=call_id,
        status=status,
        body=result.stdout if status == CallStatus.SUCCESS else b"",
        stderr=result.stderr,
        stderr_lost_bytes=result.stderr_lost_bytes,
        stderr_lost_lines=result.stderr_lost_lines,
        error=error,
        exit_code=None if result.timed_out else result.exit_code,
        wait_ms=wait_ms,
        start_ms=result.start_ms,
        run_ms=result.run_ms,
    )


class ColdRunner:
    """One fresh container per call (format ``default``)."""

    def __init__(
        self,
        driver: IContainerDriver,
        slots: SlotSource,
        clock: IReactorTime,
        node_id: str,
        network_mode: str = "bridge",
        max_response_size: int = 6 * 1024 * 1024,
        policy: FunctionPolicy = FunctionPolicy(),
    ) -> None:
        self._driver = driver
        self._slots = slots
        self._clock = clock
        self._node_id = node_id
        self._network_mode = network_mode
        self._max_response_size = max_response_size
        self._policy = policy
        self._waiting: dict[str, Deferred[None]] = {}  # calls waiting for a slot
        self._cancelled: set[str] = set()

    async def cancel(self, call_id: str) -> bool:
        """Stop ``call_id``: remove its container, or, while it waits for a slot, end
        its wait (no container starts for it). True if either was found."""
        waiting = self._waiting.get(call_id)
        if waiting is not None:
            self._cancelled.add(call_id)
            waiting.cancel()
            return True
        return await self._driver.remove_containers({LABEL_CALL: call_id}) > 0

    async def run(self, call: Call) -> CallResult:
        spec = container_spec(call, self._node_id, self._network_mode, self._max_response_size, self._policy)
        queued_at = self._clock.seconds()
        app = call.route.app_name
        call_id = call.id
        # The wait for a slot can be cancelled (``cancel``): a call cancelled while it
        # waits must not start a container later, after its client was told it ended.
        acquiring = Deferred.fromCoroutine(self._slots.acquire(app))
        if not acquiring.called:
            self._waiting[call_id] = acquiring
        try:
            await acquiring
        except Overloaded:
            if call_id not in self._cancelled:
                raise
            self._cancelled.discard(call_id)
            return CallResult(call_id, CallStatus.CANCELLED, error=CANCELLED_MESSAGE,
                              wait_ms=int(round((self._clock.seconds() - queued_at) * 1000)))
        finally:
            self._waiting.pop(call_id, None)
        try:
            wait_ms = int(round((self._clock.seconds() - queued_at) * 1000))
            result = await self._driver.run(spec)
        finally:
            self._slots.release(app)
        return cold_outcome(call.id, result, wait_ms)


class Agent(Service):
    """Runs calls on this node. A ``Service`` named ``agent``; start it after the
    driver (it cleans up containers at start) and it stops before the driver.

    :param runners: format -> runner; calls of other formats use ``default``.
    :param drain_timeout: how long ``stopService`` waits for in-flight calls, in
        seconds, or a callable giving it when the stop begins (the time left before the
        shutdown deadline, ``Drain.remaining``).
    """

    log = Logger()
    name = "agent"

    def __init__(
        self,
        driver: IContainerDriver,
        clock: IReactorTime,
        node_id: str,
        metrics: IMetrics,
        runners: dict[str, CallRunner],
        slots: SlotSource,
        drain_timeout: float | Callable[[], float] = DEFAULT_DRAIN_TIMEOUT_S,
        stderr_log: StderrLog | None = None,
        cleanup_labels: Mapping[str, str] | None = None,
    ) -> None:
        self._driver = driver
        self._clock = clock
        self._node_id = node_id
        # What its start and stop remove: the node's containers (a worker process: its own).
        self._cleanup_labels = {LABEL_NODE: node_id, **(cleanup_labels or {})}
        self._metrics = metrics
        self._runners = runners
        self.slots = slots
        self._drain_timeout = drain_timeout
        self.stderr_log = stderr_log if stderr_log is not None else StderrLog(clock)
        self._in_flight = 0
        self._calls: dict[str, tuple[Call, float]] = {}  # in flight: call id -> (call, start)
        self._cancelled: set[str] = set()
        self._idle: list[Deferred[None]] = []
        self._ready: Deferred[None] | None = None
        self._accepting = False
        self.complete = 0

    @classmethod
    def cold(
        cls,
        driver: IContainerDriver,
        clock: IReactorTime,
        node_id: str,
        metrics: IMetrics,
        max_concurrency: int,
        network_mode: str = "bridge",
        max_response_size: int = 6 * 1024 * 1024,
        wait_bound: float = DEFAULT_WAIT_BOUND_S,
        max_waiting: int = DEFAULT_MAX_WAITING,
        app_limit: int = 0,
    ) -> "Agent":
        """An agent with the cold runner for every format, hot ones included (a node
        or a test that wants no hot pools). ``app_limit``: see ``Slots``."""
        slots = Slots(max_concurrency, clock, max_waiting, wait_bound, app_limit, metrics)
        cold = ColdRunner(driver, slots, clock, node_id, network_mode, max_response_size)
        return cls(driver, clock, node_id, metrics, {"default": cold}, slots)

    # -- Service

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._accepting = True
        self._ready = Deferred.fromCoroutine(self._remove_leftovers("Removed {count} containers left by a previous run"))

    def when_ready(self) -> Deferred[None]:
        """Fires once the start-up cleanup is done (never fails)."""
        return settled(self._ready)

    def stopService(self) -> Deferred[None]:
        """Refuse new calls, let in-flight ones finish (at most ``drain_timeout`` s),
        then remove this node's containers."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._accepting = False
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._in_flight:
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            timeout = self._drain_timeout() if callable(self._drain_timeout) else self._drain_timeout
            idle.addTimeout(timeout, self._clock)
            try:
                await idle
            except Exception:
                self.log.warn("Stopping with {count} calls still running", count=self._in_flight)
        # Runners that keep containers (hot pools) remove them; at the same time, so
        # that every engine call is queued before the driver (stopping beside us,
        # MultiService does not wait) stops its pools.
        removals = [
            Deferred.fromCoroutine(close())
            for close in (getattr(r, "close", None) for r in self._runners.values())
            if close is not None
        ]
        removals.append(Deferred.fromCoroutine(self._remove_leftovers("Removed {count} containers at stop")))
        try:
            await gatherResults(removals, consumeErrors=True)
        except Exception as e:
            self.log.error("Could not remove this node's containers: {error}", error=str(e))

    async def _remove_leftovers(self, message: str) -> None:
        count = await remove_labelled(self._driver, self._cleanup_labels, self._clock)
        if count:
            self.log.info(message, count=count, node_id=self._node_id)

    # -- calls

    def stats(self) -> dict[str, int]:
        """``/stats`` of IronFunctions: waiting, running, completed calls on this node."""
        waiting = self.slots.waiting
        return {"Queue": waiting, "Running": self._in_flight - waiting, "Complete": self.complete}

    async def run_call(self, call: Call) -> CallResult:
        """Run ``call``; return its ``CallResult``. Raise ``NotReady`` while starting
        or stopping, ``Overloaded``, ``ImageNotFound``, ``DockerUnavailable``."""
        if not self._accepting:
            raise NotReady("node is stopping")
        if self._ready is not None and not self._ready.called:
            await self.when_ready()
        route = call.route
        call_id = call.id
        runner = self._runners.get(route.format) or self._runners["default"]
        self._in_flight += 1
        self._calls[call_id] = (call, self._clock.seconds())
        try:
            result = await runner.run(call)
        except Exception as e:
            self._cancelled.discard(call_id)
            self._metrics.many(_FAILED_TO_RUN, app=route.app_name, path=route.path, call_id=call_id)
            self.log.info("Call {call_id} failed to run: {error}", error=str(e),
                          app=route.app_name, path=route.path, call_id=call_id)
            raise
        finally:
            self._in_flight -= 1
            del self._calls[call_id]
            self.complete += 1
            if not self._in_flight and self._idle:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
        if call_id in self._cancelled:
            self._cancelled.discard(call_id)
            result = attrs.evolve(result, status=CallStatus.CANCELLED, error=CANCELLED_MESSAGE, body=b"")
        if result.stderr:
            self.stderr_log.call(result, route.app_name, route.path, call_id)
            if result.stderr_lost_bytes:
                # The call's own log says it was cut (``cap_log`` keeps the marker).
                result = attrs.evolve(result, stderr=result.stderr + LOG_TRUNCATED_MARKER)
        # All of a call's figures in one go: one log event per call, not ten. The fields
        # as keywords, not **fields: that would build the same dict twice.
        self._metrics.many(
            [
                ("count", "run.requests", 1),
                ("count", _STATUS_METRIC[result.status], 1),
                ("time", "run.wait_time", result.wait_ms),
                ("time", "run.start_time", result.start_ms),
                ("time", "run.exec_time", result.run_ms),
            ],
            app=route.app_name, path=route.path, call_id=call_id,
        )
        return result

    def calls_running(self, older_than: float = 0.0) -> list[tuple[Call, float]]:
        """Calls in flight on this node (and when each started, clock seconds) that
        have been running for at least ``older_than`` seconds."""
        cutoff = self._clock.seconds() - older_than
        return [(call, began) for call, began in self._calls.values() if began <= cutoff]

    def running_call(self, call_id: str) -> Call | None:
        entry = self._calls.get(call_id)
        return None if entry is None else entry[0]

    async def cancel(self, call_id: str) -> bool:
        """Stop ``call_id`` if it runs on this node: its container is removed and the
        call ends with status ``cancelled``. Return whether it was running here."""
        call = self.running_call(call_id)
        if call is None:
            return False
        self._cancelled.add(call_id)
        runner = self._runners.get(call.route.format) or self._runners["default"]
        if not await runner.cancel(call_id):
            # No container and no wait found: its container is being created (a cold
            # call's in the few ms between its slot and the engine's create: that
            # container runs to its end), or the call is ending. The mark alone makes
            # its outcome "cancelled". (A call still waiting for a slot or a hot
            # container is taken out of the wait by the runner: no container starts.)
            self.log.info("Call {call_id} cancelled before or after its container", call_id=call_id)
        return True


_STATUS_METRIC = {
    CallStatus.SUCCESS: "run.succeeded", CallStatus.ERROR: "run.error", CallStatus.TIMEOUT: "run.timeout",
    CallStatus.CANCELLED: "run.cancelled",
}
_FAILED_TO_RUN = [("count", "run.requests", 1), ("count", "run.error", 1)]


async def remove_labelled(driver: IContainerDriver, labels: Mapping[str, str], clock: IReactorTime,
                          timeout: float = CLEANUP_TIMEOUT_S) -> int | None:
    """Remove every container carrying ``labels`` (at most ``timeout`` s): how many
    went, or None when the engine failed (logged)."""
    d = Deferred.fromCoroutine(driver.remove_containers(labels))
    d.addTimeout(timeout, clock)
    try:
        removed: int = await d
    except Exception as e:
        _log.error("Could not remove this node's containers ({labels}): {error}",
                   labels=",".join(f"{k}={v}" for k, v in sorted(labels.items())), error=str(e) or repr(e))
        return None
    return removed
