"""Cancelling a call (``DELETE /v1/apps/{app}/calls/{id}``) through any node (SPEC §9).

The DELETE lands on whichever node the balancer picked; the call may be queued, or
running on this node or another. In order:

1. A sync call running on this node: stopped at once (``Agent.cancel``).
2. A call with a record: the record is marked ``cancelled`` (atomically: a finished
   call refuses with ``CallCompleted``). A queued call is taken out of the queue. A
   running one is stopped here if it runs here, else the cancel is published on the
   cancel bus (``ironfunctions/cancelbus/``): the node running it stops it within a
   Redis round trip. The answer is the record, without waiting for that node.
3. No record: a sync call younger than the running-record threshold (a second:
   ``reports.RunningSyncRecordsService``) has none, since sync records are written off
   the request path. The cancel is published and this node waits up to ``ASK_WAIT_S``
   for the node running the call to answer: 200 with its record if one does, 404 when
   every node has said "not here" (one round trip: each node answers) or the wait is
   over.

Why ask the nodes instead of giving every sync call a record when it starts: that is
a datastore write on the sync fast path, for the rare call that gets cancelled. What a
user expects is that a DELETE of a running call through any node cancels it: the bus
gives that for the price of one pub/sub round trip on the DELETE alone.

Best effort: a message can be lost (a node's subscriber reconnecting). For an async
call the record already says ``cancelled``, and its worker checks the record each time
it renews the lease (within ~5 s), so the cancel still happens, later. A long sync call
has no such check: it runs to its end. A DELETE of a call without a record while the
shared Redis is down answers 503 (``QueueUnavailable``): we cannot tell whether some
node runs it.

Every node's handler (``make_cancel_handler``) stops the call if it runs there,
whatever its type, and answers with its record. The client of a sync call cancelled
through any node gets the same reply as one cancelled on its own node: 502
``Call cancelled`` (``runner/invoker.py``), and the call's final record says
``cancelled``, reason ``client_request``.

Deleting an app ends its calls the same ways (``make_app_calls_ender``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine, Iterable

import attrs

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.calls.interface import AppCallsEnder, Canceller, ICallStore
from ironfunctions.calls.model import CallRecord, cancelled
from ironfunctions.cancelbus import CancelHandler, ICancelBus
from ironfunctions.cancelbus.memory import MemoryCancelBus
from ironfunctions.errors import CallNotFound
from ironfunctions.models import Call, CallStatus
from ironfunctions.runner.records import running_sync_record
from ironfunctions.mq.interface import IMessageQueue

log = Logger()

ASK_WAIT_S = 0.2  # how long a DELETE of a call with no record waits for the node running it

KillCall = Callable[[str], Awaitable[bool]]


def _cancelled_record(call: Call, now_ms: int) -> CallRecord:
    """The record of ``call`` (running on this node) as cancelled now."""
    return attrs.evolve(
        running_sync_record(call.id, call.route, now_ms),
        type=call.route.type, status=CallStatus.CANCELLED, reason="client_request", completed_at=now_ms,
    )


def make_cancel_handler(
    running_call: Callable[[str], Call | None], kill_call: KillCall, clock: IReactorTime,
) -> CancelHandler:
    """This node's handler on the cancel bus: stop the call if it runs here (its
    container is removed in the background) and answer with its cancelled record."""

    def handle(app_name: str, call_id: str) -> CallRecord | None:
        call = running_call(call_id)
        if call is None or call.route.app_name != app_name:
            return None

        async def stop() -> None:
            await kill_call(call_id)

        log.info("Call {call_id} cancelled through another node; stopping it", call_id=call_id)
        Deferred.fromCoroutine(stop()).addErrback(
            lambda f: log.warn("Could not stop cancelled call {call_id}: {error}", call_id=call_id,
                               error=str(f.value)))
        return _cancelled_record(call, int(clock.seconds() * 1000))

    return handle


def make_canceller(
    calls: ICallStore,
    queue: IMessageQueue,
    kill_call: KillCall,
    clock: IReactorTime,
    running_call: Callable[[str], Call | None] = lambda call_id: None,
    bus: ICancelBus | None = None,
) -> Canceller:
    """``kill_call(id)`` stops a call running on this node and says whether it ran
    here; ``running_call(id)`` finds one (``Agent.cancel`` / ``Agent.running_call``);
    ``bus`` reaches the other nodes (default: none, a single node)."""
    cancel_bus: ICancelBus = bus if bus is not None else MemoryCancelBus()

    async def cancel(app_name: str, call_id: str) -> CallRecord:
        local = running_call(call_id)
        if local is not None and local.route.type == "sync" and local.route.app_name == app_name:
            await kill_call(call_id)
            return _cancelled_record(local, int(clock.seconds() * 1000))
        try:
            before = await calls.get_call(app_name, call_id)
        except CallNotFound:
            elsewhere = await cancel_bus.publish(app_name, call_id, wait=ASK_WAIT_S)
            if elsewhere is None:
                raise
            return elsewhere
        record = await calls.update_call(app_name, call_id, cancelled(int(clock.seconds() * 1000)))
        try:
            if before.status == CallStatus.QUEUED:
                await queue.remove(call_id)
            elif before.status == CallStatus.RUNNING and not await kill_call(call_id):
                await cancel_bus.publish(app_name, call_id)
        except Exception as e:  # the record says cancelled: workers will honour it
            log.warn("Cancelled {call_id}, but could not stop it yet: {error}", call_id=call_id, error=str(e))
        return record

    return cancel


APP_DELETED_REASON = "route_deleted"  # SPEC §10 names this reason for calls of deleted apps and routes
DELETE_BATCH = 1000


def make_app_calls_ender(
    calls: ICallStore,
    clock: IReactorTime,
    queue: IMessageQueue | None = None,
    kill_call: Callable[[str], Awaitable[Any]] | None = None,
    running_calls: Callable[[], Iterable[Call]] = lambda: (),
    elsewhere: Callable[[str], Awaitable[Any]] | None = None,
) -> AppCallsEnder:
    """What deleting an app does to its calls (SPEC §8 "Data has an end"), so that none
    of them shows up under a new app of the same name:

    - its queued and running calls are cancelled (reason ``route_deleted``): queued
      ones are taken out of ``queue``; running ones on this node are stopped by
      ``kill_call`` (``Agent.cancel``), on other nodes by their workers, which see the
      cancelled record when they renew the lease. Calls in flight on this node
      (``running_calls``: sync ones may have no record yet) are stopped too, and so
      are those of this node's other worker processes (``elsewhere(app)``:
      ``workers/bus.py``, issue 15);
    - its finished calls and their logs are deleted, a batch at a time.

    The records just cancelled are kept (until ``CALL_RETENTION``): they say what
    became of calls that were accepted and never ran. (A sync call stopped here still
    gets its final, cancelled record when it ends, as any cancelled call does.)
    Without ``queue`` and ``kill_call`` (a bare API) only the records change."""

    async def end(app_name: str) -> None:
        now_ms = int(clock.seconds() * 1000)
        ended = await calls.cancel_unfinished(app_name, now_ms, APP_DELETED_REASON)
        in_flight = [call.id for call in running_calls() if call.route.app_name == app_name]
        stop = {call_id for call_id, status in ended if status == CallStatus.RUNNING} | set(in_flight)
        for call_id, status in ended:
            if status == CallStatus.QUEUED and queue is not None:
                await _quietly(queue.remove(call_id), call_id)
        if kill_call is not None:
            for call_id in sorted(stop):
                await _quietly(kill_call(call_id), call_id)
        if elsewhere is not None:
            try:
                await elsewhere(app_name)
            except Exception as e:  # records say cancelled; async workers honour them
                log.warn("App {app} deleted, but its calls in other workers could not be stopped yet: {error}",
                         app=app_name, error=str(e) or repr(e))
        while await calls.delete_finished(now_ms, DELETE_BATCH, app_name) == DELETE_BATCH:
            pass
        cancelled_ids = {call_id for call_id, _ in ended} | set(in_flight)
        if cancelled_ids:
            log.info("App {app} deleted: cancelled {count} calls", app=app_name, count=len(cancelled_ids))

    return end


def make_app_calls_stopper(kill_call: KillCall, running_calls: Callable[[], Iterable[Call]],
                            ) -> Callable[[str], Coroutine[Any, Any, int]]:
    """What a worker process does when a sibling deleted an app (``workers/bus.py``):
    stop each of its calls of the app in flight here; return how many."""

    async def stop(app_name: str) -> int:
        in_flight = sorted(call.id for call in running_calls() if call.route.app_name == app_name)
        for call_id in in_flight:
            await _quietly(kill_call(call_id), call_id)
        return len(in_flight)

    return stop


async def _quietly(step: Awaitable[Any], call_id: str) -> None:
    """Take a call out of the queue or stop it; a failure is logged, not raised: the
    record already says cancelled, and workers honour it."""
    try:
        await step
    except Exception as e:
        log.warn("Cancelled {call_id}, but could not stop it yet: {error}", call_id=call_id, error=str(e))
