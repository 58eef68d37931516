"""Cancelling a call (``DELETE /v1/apps/{app}/calls/{id}``), wherever it is.

The record is marked ``cancelled`` (atomically: a finished call refuses with
``CallCompleted``). A queued call is also taken out of the queue; a call running on
this node has its container removed at once; one running on another node is stopped by
that node's worker, which checks the record each time it renews the lease.

A sync call has no record until it ends (records are written off the request path);
one in flight on this node is found through the agent and stopped the same way, and
its final record says ``cancelled``. A DELETE reaching another node than the one
running a sync call answers 404: only that node knows the call.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.calls.interface import Canceller, ICallStore
from ironfunctions.calls.model import CallRecord, cancelled
from ironfunctions.models import Call, CallStatus
from ironfunctions.runner.records import running_sync_record
from ironfunctions.mq.interface import IMessageQueue

log = Logger()


def make_canceller(
    calls: ICallStore,
    queue: IMessageQueue,
    kill_call: Callable[[str], Awaitable[Any]],
    clock: IReactorTime,
    running_call: Callable[[str], Call | None] = lambda call_id: None,
) -> Canceller:
    """``kill_call(id)`` stops a call running on this node; ``running_call(id)`` finds
    one (``Agent.cancel`` / ``Agent.running_call``)."""

    async def cancel(app_name: str, call_id: str) -> CallRecord:
        local = running_call(call_id)
        if local is not None and local.route.type == "sync" and local.route.app_name == app_name:
            await kill_call(call_id)
            now = int(clock.seconds() * 1000)
            return attrs.evolve(
                running_sync_record(call_id, local.route, now),
                status=CallStatus.CANCELLED, reason="client_request", completed_at=now,
            )
        before = await calls.get_call(app_name, call_id)
        record = await calls.update_call(app_name, call_id, cancelled(int(clock.seconds() * 1000)))
        try:
            if before.status == CallStatus.QUEUED:
                await queue.remove(call_id)
            elif before.status == CallStatus.RUNNING:
                await kill_call(call_id)
        except Exception as e:  # the record says cancelled: workers will honour it
            log.warn("Cancelled {call_id}, but could not stop it yet: {error}", call_id=call_id, error=str(e))
        return record

    return cancel
