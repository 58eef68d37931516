"""Accepting an async call: durable before the 202 (SPEC §4 Async).

The record (``queued``), with the request beside it in the same transaction (so the
reconciler can queue the call again from the datastore alone), is written first, then
the queue entry. Only when both are stored does the caller answer 202; if either fails
it answers 503 (not accepted), and a record whose queue entry could not be written is
marked ``cancelled`` with reason ``not_accepted`` before the 503 (SPEC §10). If even
that write fails, the record stays ``queued`` and the reconciler will run the call
later: the at-least-once edge ``docs/operating/queues.md`` describes.

Per-app bounds (SPEC §8, issue 13): the push carries ``limits``; the queue checks them
and stores the item in one atomic step, so concurrent submits on any number of nodes
never pass them. A refused push (``QueueFull``, 429) deletes the record just written:
nothing of the call stays. Why record, then checked push, then take back on refusal,
rather than check first: a separate check before the record is a race (two submits
both see room), and pushing before the record lets a worker take a call with no
record. A crash between the record and the delete leaves a ``queued`` record with no
entry, the same state as a crash before any push, which the reconciler already
handles; should the delete itself fail, the record is marked ``error`` instead, so
nothing runs a call the client was told was refused.
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
from ironfunctions.mq.interface import IMessageQueue, QueueItem, QueueLimits
from ironfunctions.runner.records import failed_record, new_record, request_payload


class AsyncSubmitter:
    """``await submitter.submit(call)`` -> the queued record; raises
    ``DatastoreUnavailable`` or ``QueueUnavailable`` (both mean 503: not accepted), or
    ``QueueFull`` (429: the app is at one of its ``limits``; nothing stored)."""

    log = Logger()

    def __init__(self, queue: IMessageQueue, calls: ICallStore, clock: IReactorTime, metrics: IMetrics,
                 limits: QueueLimits | None = None) -> None:
        self._limits = limits
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
            await self._queue.push(item, limits=self._limits)
        except errors.QueueFull as full:
            await self._take_back(record, now)
            self._metrics.count("async.refused", 1, app=route.app_name, path=route.path, bound=full.bound)
            raise
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

    async def _take_back(self, record: CallRecord, now: int) -> None:
        """Delete the record of a call the queue refused; if that fails, mark it
        ``error`` so no reconciler runs it (best effort, logged)."""
        try:
            await self._calls.delete_call(record.app_name, record.id)
            return
        except Exception as e:
            self.log.warn("Could not delete refused call {call_id}: {error}", call_id=record.id, error=str(e))
        try:
            refused = failed_record(record, "queue full", now, reason="queue_full")
            await self._calls.update_call(record.app_name, record.id, lambda _: refused)
        except Exception as e:
            self.log.warn("Could not mark refused call {call_id}: {error}", call_id=record.id, error=str(e))
