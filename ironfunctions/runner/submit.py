"""Accepting an async call: durable before the 202 (SPEC §4 Async).

The record (``queued``), with the request beside it in the same transaction (so the
reconciler can queue the call again from the datastore alone), is written first, then
the queue entry. Only when both are stored does the caller answer 202; if either fails
it answers 503 (not accepted), and a record whose queue entry could not be written is
marked ``cancelled`` with reason ``not_accepted`` before the 503 (SPEC §10). If even
that write fails, the record stays ``queued`` and the reconciler will run the call
later: the at-least-once edge ``docs/operating/queues.md`` describes.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.metrics import IMetrics
from ironfunctions.models import Call, CallStatus
from ironfunctions.mq.interface import IMessageQueue, QueueItem
from ironfunctions.runner.records import new_record, request_payload


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
        payload = request_payload(call.request)
        await self._calls.put_async(record, payload)
        item = QueueItem(call.id, route.app_name, route.path, priority, payload)
        try:
            await self._queue.push(item)
        except Exception as e:
            not_accepted = attrs.evolve(record, status=CallStatus.CANCELLED, reason="not_accepted",
                                        error=f"not accepted: {e}", completed_at=now)
            try:
                await self._calls.update_call(record.app_name, record.id, lambda _: not_accepted)
            except Exception as again:
                self.log.warn("Could not mark unqueued call {call_id} not accepted ({error}); "
                              "the reconciler may run it later", call_id=call.id, error=str(again))
            if isinstance(e, errors.QueueUnavailable):
                raise
            raise errors.QueueUnavailable(f"queue unavailable: {e}") from e
        self._metrics.count("async.submitted", 1, app=route.app_name, path=route.path, call_id=call.id)
        return record
