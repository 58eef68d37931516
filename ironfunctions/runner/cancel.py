"""Cancelling a call (``DELETE /v1/apps/{app}/calls/{id}``), wherever it is.

The record is marked ``cancelled`` (atomically: a finished call refuses with
``CallCompleted``). A queued call is also taken out of the queue; a call running on
this node has its container removed at once; one running on another node is stopped by
that node's worker, which checks the record each time it renews the lease.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.api.calls import Canceller, cancelled
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import QUEUED, RUNNING, CallRecord
from ironfunctions.mq.interface import IMessageQueue

log = Logger()


def make_canceller(
    calls: ICallStore,
    queue: IMessageQueue,
    kill_call: Callable[[str], Awaitable[Any]],
    clock: IReactorTime,
) -> Canceller:
    async def cancel(app_name: str, call_id: str) -> CallRecord:
        before = await calls.get_call(app_name, call_id)
        record = await calls.update_call(app_name, call_id, cancelled(int(clock.seconds() * 1000)))
        try:
            if before.status == QUEUED:
                await queue.remove(call_id)
            elif before.status == RUNNING:
                await kill_call(call_id)
        except Exception as e:  # the record says cancelled: workers will honour it
            log.warn("Cancelled {call_id}, but could not stop it yet: {error}", call_id=call_id, error=str(e))
        return record

    return cancel
