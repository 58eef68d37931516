"""Cancelling a call (``DELETE /v1/apps/{app}/calls/{id}``), wherever it is.

The record is marked ``cancelled`` (atomically: a finished call refuses with
``CallCompleted``). A queued call is also taken out of the queue; a call running on
this node has its container removed at once; one running on another node is stopped by
that node's worker, which checks the record each time it renews the lease.

Deleting an app ends its calls the same ways (``make_app_calls_ender``).

A sync call has no record until it ends (records are written off the request path);
one in flight on this node is found through the agent and stopped the same way, and
its final record says ``cancelled``. A DELETE reaching another node than the one
running a sync call answers 404: only that node knows the call.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

import attrs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.calls.interface import AppCallsEnder, Canceller, ICallStore
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


APP_DELETED_REASON = "route_deleted"  # SPEC §10 names this reason for calls of deleted apps and routes
DELETE_BATCH = 1000


def make_app_calls_ender(
    calls: ICallStore,
    clock: IReactorTime,
    queue: IMessageQueue | None = None,
    kill_call: Callable[[str], Awaitable[Any]] | None = None,
    running_calls: Callable[[], Iterable[Call]] = lambda: (),
) -> AppCallsEnder:
    """What deleting an app does to its calls (SPEC §8 "Data has an end"), so that none
    of them shows up under a new app of the same name:

    - its queued and running calls are cancelled (reason ``route_deleted``): queued
      ones are taken out of ``queue``; running ones on this node are stopped by
      ``kill_call`` (``Agent.cancel``), on other nodes by their workers, which see the
      cancelled record when they renew the lease. Calls in flight on this node
      (``running_calls``: sync ones may have no record yet) are stopped too;
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
        while await calls.delete_finished(now_ms, DELETE_BATCH, app_name) == DELETE_BATCH:
            pass
        cancelled_ids = {call_id for call_id, _ in ended} | set(in_flight)
        if cancelled_ids:
            log.info("App {app} deleted: cancelled {count} calls", app=app_name, count=len(cancelled_ids))

    return end


async def _quietly(step: Awaitable[Any], call_id: str) -> None:
    """Take a call out of the queue or stop it; a failure is logged, not raised: the
    record already says cancelled, and workers honour it."""
    try:
        await step
    except Exception as e:
        log.warn("Cancelled {call_id}, but could not stop it yet: {error}", call_id=call_id, error=str(e))
