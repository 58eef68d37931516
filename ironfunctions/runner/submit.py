"""Accepting an async call: durable before the 202 (SPEC §4 Async).

The record (``queued``) is written first, then the queue entry. Only when both are
stored does the caller answer 202; if either fails it answers 503, and a record whose
queue entry could not be written is marked ``error`` (best effort) so nothing shows as
queued that no worker will ever run.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.metrics import IMetrics
from ironfunctions.models import Call
from ironfunctions.mq.interface import IMessageQueue, QueueItem
from ironfunctions.runner.records import failed_record, new_record, request_payload


class AsyncSubmitter:
    """``await submitter.submit(call)`` -> the queued record; raises
    ``DatastoreUnavailable`` or ``QueueUnavailable`` (both mean 503: not accepted)."""

    log = Logger()

    def __init__(self, queue: IMessageQueue, calls: ICallStore, clock: IReactorTime, metrics: IMetrics) -> None:
        self._queue = queue
        self._calls = calls
        self._clock = clock
        self._metrics = metrics

    async def submit(self, call: Call, priority: int = 0) -> CallRecord:
        route = call.route
        now = int(self._clock.seconds() * 1000)
        record = new_record(call.id, route, now)
        if priority:
            record = attrs.evolve(record, priority=priority)
        await self._calls.put_calls([record])
        item = QueueItem(call.id, route.app_name, route.path, priority, request_payload(call.request))
        try:
            await self._queue.push(item)
        except Exception as e:
            try:
                await self._calls.put_calls([failed_record(record, "queue unavailable", now)])
            except Exception as again:
                self.log.warn("Could not mark unqueued call {call_id}: {error}", call_id=call.id, error=str(again))
            if isinstance(e, errors.QueueUnavailable):
                raise
            raise errors.QueueUnavailable(f"queue unavailable: {e}") from e
        self._metrics.count("async.submitted", 1, app=route.app_name, path=route.path, call_id=call.id)
        return record
