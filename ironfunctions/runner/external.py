"""Async calls run by external runners: the runner's side of IronFunctions' ``/tasks``.

An external runner (the original Go runner, polling ``GET /tasks``) takes a queued
async call as a task and, when it has run it, deletes it (``DELETE /tasks``).
``api/tasks.py`` is the HTTP side; this module is all it needs of the runner, so the
leases and the container environment stay the runner's own:

- ``reserve_for_runner`` reserves the next live call like this node's workers do
  (``async_worker.py``): a first lease until the route is known, then one covering the
  route's timeout, so a runner that never comes back loses it and the call is
  delivered again. Stale deliveries (a cancelled or finished call) are acked and
  skipped; a call whose route was deleted ends ``cancelled`` (``route_deleted``); the
  attempt accounting is the workers' (``attempts.py``, SPEC §10).
- ``complete_for_runner`` records, then acknowledges, a task that is reserved through
  ``/tasks`` right now. The protocol carries no result, so the call is recorded as
  ``success`` with reason ``external_runner``.

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
from ironfunctions.mq.interface import IMessageQueue, Lease, Reservation
from ironfunctions.runner.async_worker import FIRST_LEASE_S, lease_for
from ironfunctions.runner.attempts import AttemptPolicy, GiveUp, Skip, on_delivery, platform_delay
from ironfunctions.runner.lease_keeper import write_unless_cancelled
from ironfunctions.runner.plan import call_env
from ironfunctions.runner.records import failed_record, request_from_payload, route_deleted_record, running_record

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]

COMPLETE_LEASE_S = 30.0  # held while the outcome of a completed task is written
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
                             apps: AbstractSet[str] | None = None,
                             policy: AttemptPolicy = AttemptPolicy()) -> RunnerTask | None:
    """Reserve the next live async call (of one of ``apps``, if given: the queue
    filters, so other apps' calls are never touched) for an external runner and
    record it ``running``; None when no call is waiting (or only stale ones, up to
    ``MAX_SKIPS``). Fails as the queue and the call store do (``QueueUnavailable``,
    ``DatastoreUnavailable``...): a call reserved when the store fails is given back
    at once, its attempt not counted (SPEC §10), so the runner's 503 loses nothing."""
    for _ in range(MAX_SKIPS):
        held = await queue.reserve(FIRST_LEASE_S, 0, apps)
        if held is None:
            break
        try:
            task = await _prepare(queue, calls, lookup, app_config, clock, held, policy)
        except (errors.LeaseLost, errors.CallNotFound):
            continue  # gone meanwhile (removed by a cancel): look further
        except Exception:
            try:
                await queue.release(held, platform_delay(policy.retry_base, held.attempt))
            except Exception:  # the queue is down too: the lease expires instead
                pass
            raise
        if task is not None:
            return task
    return None


async def _prepare(queue: IMessageQueue, calls: ICallStore, lookup: RouteLookup, app_config: AppConfigLookup,
                   clock: IReactorTime, held: Reservation, policy: AttemptPolicy) -> RunnerTask | None:
    """The task for the reservation ``held``, recorded ``running``; None (acked) for a
    delivery with nothing to run."""
    item = held.item
    try:
        record = await calls.get_call(item.app_name, item.call_id)
    except errors.CallNotFound:
        await queue.ack(held)
        return None
    now = int(clock.seconds() * 1000)
    decision = on_delivery(record, now, policy)
    if isinstance(decision, Skip):
        await queue.ack(held)
        return None
    record = attrs.evolve(record, lost=decision.lost)
    if isinstance(decision, GiveUp):
        await _end(queue, calls, held, failed_record(record, decision.error, now, decision.reason))
        return None
    try:
        route = await lookup(item.app_name, item.path)
        config = await app_config(item.app_name)
    except (errors.AppNotFound, errors.RouteNotFound) as e:
        await _end(queue, calls, held, route_deleted_record(record, str(e), now))
        return None
    await queue.renew(held, lease_for(route))
    record = running_record(record, decision.attempt, now)
    if not await write_unless_cancelled(calls, record):
        await queue.ack(held)
        return None
    request = request_from_payload(item.payload)
    env = call_env(Call(item.call_id, route, request, config))
    return RunnerTask(str(held.lease), item.call_id, route, request, env, record, item.priority, decision.attempt)


async def _end(queue: IMessageQueue, calls: ICallStore, held: Reservation, final: CallRecord) -> None:
    """Record ``final`` (unless the call was cancelled meanwhile), then ack."""
    await write_unless_cancelled(calls, final)
    await queue.ack(held)


async def complete_for_runner(queue: IMessageQueue, calls: ICallStore, app_name: str, task_id: str,
                              clock: IReactorTime) -> str:
    """Record the task ``task_id`` (a call of ``app_name``) that an external runner
    ran ``success`` (reason ``external_runner``), then acknowledge it, and return its
    call id. Raise ``CallNotFound`` unless the task is a call of ``app_name`` reserved
    under that lease right now; the call is then left as it was.

    The record is written before the ack, so a crash or a queue outage between them
    cannot lose the outcome: the call, delivered again, is found finished and acked.
    The lease is checked first (renewed), so no call held by another is marked done."""
    try:
        lease = Lease.parse(task_id)
    except ValueError:
        raise errors.CallNotFound(TASK_NOT_FOUND) from None
    try:
        record = await calls.get_call(app_name, lease.call_id)
        await queue.renew(lease, COMPLETE_LEASE_S)
    except (errors.CallNotFound, errors.LeaseLost):
        raise errors.CallNotFound(TASK_NOT_FOUND) from None
    now = int(clock.seconds() * 1000)

    def done(current: CallRecord) -> CallRecord:
        if current.terminal:
            raise errors.CallCompleted()  # cancelled meanwhile: it stays so
        return attrs.evolve(
            current, status=CallStatus.SUCCESS, reason="external_runner", completed_at=now,
            run_ms=None if current.started_at is None else now - current.started_at,
        )

    if not record.terminal:
        try:
            await calls.update_call(app_name, lease.call_id, done)
        except errors.CallCompleted:
            pass
    try:
        await queue.ack(lease)
    except errors.LeaseLost:  # expired since the renew: delivered again, found done, acked
        pass
    return lease.call_id
