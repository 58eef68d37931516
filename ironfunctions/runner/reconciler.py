"""The reconciler: the datastore is the source of truth for accepted async calls (SPEC §10).

The queue can lose what it held: a Redis restarted without persistence, a crash between
a submit's record and its queue write, a lost ``appendfsync everysec`` second. Every
``RECONCILE_INTERVAL`` (20 s) one node of the cluster walks the unfinished (``queued`` or
``running``) records older than ``grace`` (so a submit in progress is never raced) and
asks the queue which of them it holds, in any state. For one it does not hold:

- its app or route was deleted: the call ends ``cancelled``, reason ``route_deleted``;
- ``running`` and started less than a lease ago (``lease_for(route)``): left alone, its
  worker may still be at it and will write the outcome;
- otherwise it is pushed again from the request stored beside the record at submit
  (``ICallStore.put_async``); its next delivery sees the record as the worker left it
  (``attempts.py``): ``running`` counts as a lost node. A call with no stored request
  (accepted before this release) cannot be rebuilt and ends ``error`` (``killed``).

One node at a time: the pass runs only while this node holds the ``reconciler`` lease
(``try_lead``: a row in Postgres, a key in Redis, both timed by the server's clock; none
for SQLite and memory, which are one process). A lease rather than a Postgres advisory
lock: a pass spans many queries on a pool whose connections may be dropped and
re-opened at any time, and a session lock would vanish silently with its connection.

``add_after_pass`` hooks run after each pass this node made, with its report:
``rebuild_counts_after_loss`` rebuilds the per-app queue counters (``ASYNC_MAX_QUEUED``)
after a pass that found the queue had lost calls (a restart without persistence, or
from an older snapshot), once what was lost is queued again.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.metrics import IMetrics
from ironfunctions.models import CallStatus
from ironfunctions.mq.interface import IMessageQueue, QueueItem
from ironfunctions.runner.async_worker import RouteLookup, lease_for
from ironfunctions.runner.records import failed_record, route_deleted_record

# (lease name, owner, ttl ms) -> whether ``owner`` holds the lease now.
TryLead = Callable[[str, str, int], Awaitable[bool]]
AfterPass = Callable[["PassReport"], Awaitable[None]]

LEASE_NAME = "reconciler"
DEFAULT_INTERVAL_S = 20.0
DEFAULT_GRACE_S = 30.0
PAGE = 200


@attrs.frozen
class PassReport:
    """What one pass did; ``led`` is False when another node holds the lease."""

    led: bool
    checked: int = 0
    requeued: int = 0
    cancelled: int = 0
    failed: int = 0

    @property
    def acted(self) -> bool:
        return bool(self.requeued or self.cancelled or self.failed)


class Reconciler:
    """``await reconciler.run_once()`` makes one pass (``ReconcilerService`` in
    ``tap.py`` runs it every ``interval``). Store and queue errors propagate: the
    pass is simply made again next time."""

    log = Logger()

    def __init__(self, calls: ICallStore, queue: IMessageQueue, lookup: RouteLookup, clock: IReactorTime,
                 metrics: IMetrics, node_id: str, try_lead: TryLead | None = None,
                 interval: float = DEFAULT_INTERVAL_S, grace: float = DEFAULT_GRACE_S, page: int = PAGE) -> None:
        self._calls = calls
        self._queue = queue
        self._lookup = lookup
        self._clock = clock
        self._metrics = metrics
        self._node_id = node_id
        self._try_lead = try_lead
        self._interval = interval
        self._grace = grace
        self._page = page
        self._after_pass: list[AfterPass] = []

    def add_after_pass(self, hook: AfterPass) -> None:
        """Run ``hook`` after every pass this node made (only the lease holder's)."""
        self._after_pass.append(hook)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def run_once(self) -> PassReport:
        # The lease outlives two missed passes, so a live leader keeps it and a dead
        # one's is taken over within a minute.
        if self._try_lead is not None and not await self._try_lead(
                LEASE_NAME, self._node_id, int(self._interval * 3000)):
            return PassReport(led=False)
        counts = {"checked": 0, "requeued": 0, "cancelled": 0, "failed": 0}
        before = self._now_ms() - int(self._grace * 1000)
        after: tuple[int, str] | None = None
        while page := await self._calls.list_unfinished(before, after, self._page):
            after = (page[-1].created_at, page[-1].id)
            counts["checked"] += len(page)
            held = await self._queue.holds([c.id for c in page])
            for record in page:
                if record.id not in held:
                    outcome = await self._mend(record)
                    if outcome:
                        counts[outcome] += 1
        report = PassReport(led=True, **counts)
        if report.requeued:
            self._metrics.count("reconciler.requeued", report.requeued)
        if report.acted:
            self.log.info(
                "Reconciler: {requeued} async calls queued again, {cancelled} cancelled (route deleted), "
                "{failed} could not be rebuilt, of {checked} unfinished",
                requeued=report.requeued, cancelled=report.cancelled, failed=report.failed,
                checked=report.checked,
            )
        for hook in self._after_pass:
            await hook(report)
        return report

    async def tick(self) -> None:
        """One pass, for ``PeriodicService``."""
        await self.run_once()

    async def _mend(self, listed: CallRecord) -> str | None:
        """Deal with one unfinished call the queue does not hold; return which count
        it adds to, or None when it was left alone."""
        try:  # read again: it may have ended (and left the queue) since it was listed
            record = await self._calls.get_call(listed.app_name, listed.id)
        except errors.CallNotFound:
            return None
        if record.terminal:
            return None
        now = self._now_ms()
        try:
            route = await self._lookup(record.app_name, record.path)
        except (errors.AppNotFound, errors.RouteNotFound) as e:
            return "cancelled" if await self._end(route_deleted_record(record, str(e), now)) else None
        if (record.status == CallStatus.RUNNING and record.started_at is not None
                and now - record.started_at < lease_for(route) * 1000):
            return None  # its worker may still be running it, and will record it
        try:
            request = await self._calls.get_request(record.app_name, record.id)
        except errors.CallNotFound:
            error = "request not stored: cannot be queued again"
            return "failed" if await self._end(failed_record(record, error, now, "killed")) else None
        await self._queue.push(QueueItem(record.id, record.app_name, record.path, record.priority, request))
        return "requeued"

    async def _end(self, final: CallRecord) -> bool:
        """Write ``final`` unless the call ended meanwhile; return whether written."""

        def change(current: CallRecord) -> CallRecord:
            if current.terminal:
                raise errors.CallCompleted()
            return final

        try:
            await self._calls.update_call(final.app_name, final.id, change)
        except errors.CallCompleted:
            return False
        return True


def rebuild_counts_after_loss(queue: IMessageQueue) -> AfterPass:
    """An after-pass hook: rebuild the queue's per-app counters after a pass that
    queued lost calls again. Not after every pass: a rebuild scans the whole queue
    (one Lua script on Redis), and counters and items only part when the queue lost
    data; a lossless queue keeps them together in one atomic step."""

    async def rebuild(report: PassReport) -> None:
        if report.requeued:
            await queue.rebuild_counts()

    return rebuild
