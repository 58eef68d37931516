"""The node's periodic reports, as services: its gauges, and records of long sync calls.

``NodeGaugesService`` reports the node-wide gauges of SPEC §6 every few seconds and
once at start (so the first ``/metrics`` scrape has them): ``containers.running``,
``queue.depth``, ``hot.containers`` per route (``app=`` and ``path=`` fields, so two
routes of one app are two series) and for the whole node (no ``app``/``path``), and,
when given a source, ``connections``.

``RunningSyncRecordsService`` writes a ``running`` record for a sync call still
running after a second, so it can be listed and cancelled meanwhile; the call's final
record, written when it ends, replaces it. (Sync records are written off the request
path, SPEC §1: a call that ends within the second gets only its final record.)

Both take their sources as plain callables, so they are tested with a ``Clock`` and
no agent, queue or pools.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.calls.model import CallRecord
from ironfunctions.metrics import IMetrics
from ironfunctions.models import Call
from ironfunctions.runner.admission import SlotSource
from ironfunctions.runner.records import running_sync_record
from ironfunctions.services import PeriodicService

GAUGES_INTERVAL_S = 5.0
RUNNING_RECORDS_INTERVAL_S = 1.0
RUNNING_RECORD_AFTER_S = 1.0


class NodeGaugesService(PeriodicService):
    """Reports the node's gauges every ``interval`` seconds and once at start.

    :param metrics: where the gauges go.
    :param clock: times the reports.
    :param slots: the node's container admission; its slots in use are the
        containers this node runs now, cold and hot: ``containers.running``.
    :param queue_depth: the async queue's depth (``IMessageQueue.depth``):
        ``queue.depth``. Until the queue has answered once, a failure is logged at
        debug level only (the queue's own service reports that it is not up yet);
        afterwards each failure is a warning. The other gauges are reported first,
        so a queue outage does not hide them.
    :param hot_containers: live hot containers per (app, path) (``HotRunner.containers``):
        ``hot.containers`` per route, and their sum for the node. A route that had
        containers and has none any more is reported once more, at 0.
    :param connections: optional source of the ``connections`` gauge (open client
        connections of the HTTP site).
    :param interval: seconds between reports.
    """

    log = Logger()

    def __init__(
        self,
        metrics: IMetrics,
        clock: IReactorTime,
        slots: SlotSource,
        queue_depth: Callable[[], Coroutine[Any, Any, int]],
        hot_containers: Callable[[], Mapping[tuple[str, str], int]],
        connections: Callable[[], int] | None = None,
        interval: float = GAUGES_INTERVAL_S,
    ) -> None:
        super().__init__("node-gauges", interval, self.report, clock, now=True)
        self._metrics = metrics
        self._slots = slots
        self._queue_depth = queue_depth
        self._hot_containers = hot_containers
        self._connections = connections
        self._hot_routes: set[tuple[str, str]] = set()  # routes last reported above 0
        self._queue_answered = False
        self._clock = clock
        self._depth_timeout = interval / 2  # so the next round starts on time

    async def report(self) -> None:
        """Report every gauge once. Raise what ``queue_depth`` raises (once the queue
        has answered before)."""
        self.report_local()
        try:
            # Bounded here too: the next round must not wait on a slow queue.
            asking = Deferred.fromCoroutine(self._queue_depth())
            depth = await asking.addTimeout(self._depth_timeout, self._clock)
        except Exception as e:
            if self._queue_answered:
                raise
            self.log.debug("queue.depth not reported: {error}", error=str(e))
            return
        self._queue_answered = True
        self._metrics.gauge("queue.depth", depth)

    def report_local(self) -> None:
        """Report the gauges this node knows without asking a backend."""
        gauge = self._metrics.gauge
        gauge("containers.running", self._slots.in_use)
        counts = self._hot_containers()
        total = 0
        reported: set[tuple[str, str]] = set()
        for (app, path), count in sorted(counts.items()):
            total += count
            if count or (app, path) in self._hot_routes:
                gauge("hot.containers", count, app=app, path=path)
            if count:
                reported.add((app, path))
        for app, path in sorted(self._hot_routes - counts.keys()):
            gauge("hot.containers", 0, app=app, path=path)  # its pool is gone
        self._hot_routes = reported
        gauge("hot.containers", total)
        if self._connections is not None:
            gauge("connections", self._connections())


class RunningSyncRecordsService(PeriodicService):
    """Every ``interval`` seconds, records each sync call that has been running for
    ``older_than`` seconds as ``running`` (once per call).

    :param calls_running: the calls in flight on this node that started at least the
        given number of seconds ago, with when each started (clock seconds), as
        ``Agent.calls_running`` returns them.
    :param record: queues a call record for writing (``CallRecorder.record``).
    :param clock: times the checks.
    """

    def __init__(
        self,
        calls_running: Callable[[float], Sequence[tuple[Call, float]]],
        record: Callable[[CallRecord], None],
        clock: IReactorTime,
        interval: float = RUNNING_RECORDS_INTERVAL_S,
        older_than: float = RUNNING_RECORD_AFTER_S,
    ) -> None:
        super().__init__("running-sync-records", interval, self.report, clock)
        self._calls_running = calls_running
        self._record = record
        self._older_than = older_than
        self._recorded: set[str] = set()  # ids of calls recorded as running, still running

    async def report(self) -> None:
        """Record the sync calls that became long-running since the last check."""
        self.record_long_calls()

    def record_long_calls(self) -> None:
        """As ``report``, synchronously."""
        running = self._calls_running(self._older_than)
        self._recorded.intersection_update(call.id for call, _ in running)
        for call, began in running:
            if call.route.type == "sync" and call.id not in self._recorded:
                self._recorded.add(call.id)
                self._record(running_sync_record(call.id, call.route, int(began * 1000)))
