"""Async calls run by external runners: the runner's side of IronFunctions' ``/tasks``.

An external runner (the original Go runner, polling ``GET /tasks``) takes a queued
async call as a task and, when it has run it, deletes it (``DELETE /tasks``).
``api/tasks.py`` is the HTTP side; this module is all it needs of the runner, so the
leases and the container environment stay the runner's own:

- ``reserve_for_runner`` reserves the next live call like this node's workers do
  (``async_worker.py``): a first lease until the route is known, then one covering the
  route's timeout, so a runner that never comes back loses it and the call is
  delivered again. Stale deliveries (a cancelled or finished call, a deleted route)
  are acked and skipped.
- ``complete_for_runner`` acknowledges a task that is reserved through ``/tasks``
  right now. The protocol carries no result, so the call is recorded as ``success``
  with reason ``external_runner``.

A task's ``id`` is its queue lease (``str(Lease)``: the reservation's random token and
the call id), which the original runner sends back unchanged in its ``DELETE``. Only
the reserver ever learns the token, so a call can be acknowledged only by whoever
reserved it, and only while that lease lasts: a call that is waiting, delivered again
since, cancelled or run by this node's own workers is never marked done (issue 11).
"""

from __future__ import annotations

from typing import AbstractSet, Awaitable, Callable, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.models import Call, CallRequest, CallStatus, Route
from ironfunctions.mq.interface import IMessageQueue, Lease
from ironfunctions.runner.async_worker import FIRST_LEASE_S, lease_for
from ironfunctions.runner.plan import call_env
from ironfunctions.runner.records import request_from_payload, running_record

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]

MAX_SKIPS = 10  # stale deliveries acked per reservation before answering "none"
TASK_NOT_FOUND = "Task not found: it is not reserved through /tasks now"


@attrs.frozen
class RunnerTask:
    """A call reserved for an external runner: what it needs to run it.

    ``task_id`` names this reservation (its lease) for the ``DELETE``; ``env`` is the
    container environment the call would get on this node (``plan.call_env``);
    ``record`` is its ``running`` record as stored; ``priority`` and ``attempt`` are
    its queue item's and delivery's.
    """

    task_id: str
    call_id: str
    route: Route
    request: CallRequest
    env: Mapping[str, str]
    record: CallRecord
    priority: int
    attempt: int


async def reserve_for_runner(queue: IMessageQueue, calls: ICallStore, lookup: RouteLookup,
                             app_config: AppConfigLookup, clock: IReactorTime,
                             apps: AbstractSet[str] | None = None) -> RunnerTask | None:
    """Reserve the next live async call (of one of ``apps``, if given: the queue
    filters, so other apps' calls are never touched) for an external runner and
    record it ``running``; None when no call is waiting (or only stale ones, up to
    ``MAX_SKIPS``). Fails as the queue and the call store do (``QueueUnavailable``,
    ``DatastoreUnavailable``...)."""
    for _ in range(MAX_SKIPS):
        held = await queue.reserve(FIRST_LEASE_S, 0, apps)
        if held is None:
            break
        item = held.item
        try:
            record = await calls.get_call(item.app_name, item.call_id)
            route = await lookup(item.app_name, item.path)
        except (errors.CallNotFound, errors.AppNotFound, errors.RouteNotFound):
            await queue.ack(held)
            continue
        if record.terminal:
            await queue.ack(held)
            continue
        await queue.renew(held, lease_for(route))
        record = running_record(record, held.attempt, int(clock.seconds() * 1000))
        await calls.put_calls([record])
        request = request_from_payload(item.payload)
        env = call_env(Call(item.call_id, route, request, await app_config(item.app_name)))
        return RunnerTask(str(held.lease), item.call_id, route, request, env, record, item.priority, held.attempt)
    return None


async def complete_for_runner(queue: IMessageQueue, calls: ICallStore, app_name: str, task_id: str,
                              clock: IReactorTime) -> str:
    """Acknowledge the task ``task_id`` (a call of ``app_name``) that an external
    runner ran, record it ``success`` (reason ``external_runner``) and return its call
    id. Raise ``CallNotFound`` unless the task is a call of ``app_name`` reserved under
    that lease right now; the call is then left as it was."""
    try:
        lease = Lease.parse(task_id)
    except ValueError:
        raise errors.CallNotFound(TASK_NOT_FOUND) from None
    try:
        record = await calls.get_call(app_name, lease.call_id)
    except errors.CallNotFound:
        raise errors.CallNotFound(TASK_NOT_FOUND) from None
    try:
        await queue.ack(lease)
    except errors.LeaseLost:
        raise errors.CallNotFound(TASK_NOT_FOUND) from None
    if not record.terminal:
        now = int(clock.seconds() * 1000)
        await calls.put_calls([attrs.evolve(
            record, status=CallStatus.SUCCESS, reason="external_runner", completed_at=now,
            run_ms=None if record.started_at is None else now - record.started_at,
        )])
    return lease.call_id
