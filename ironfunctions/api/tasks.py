"""``GET /tasks`` / ``DELETE /tasks``: IronFunctions' async-runner protocol.

External runners poll ``GET /tasks`` for the next async call and ``DELETE /tasks``
(body: the task) when they have run it; both answer 202, as the Go server did. A task
handed out is reserved with a lease covering its route's timeout: a runner that never
comes back loses it and the call is delivered again (to a runner or to a node's own
workers). The protocol carries no result, so a deleted task is recorded as ``success``
with reason ``external_runner``; no task waiting -> ``{}``.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from ironfunctions import errors
from ironfunctions.api.http import body_of, json_response, klein_app
from ironfunctions.api.schema import parse_json_object
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import rfc3339
from ironfunctions.models import Call, CallStatus, Route
from ironfunctions.mq.interface import IMessageQueue
from ironfunctions.runner.async_worker import FIRST_LEASE_S, lease_for
from ironfunctions.runner.plan import call_env
from ironfunctions.runner.records import request_from_payload, running_record

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]

_MAX_SKIPS = 10  # stale deliveries (cancelled, done) acked per GET before answering {}


class TasksAPI:
    """The ``/tasks`` endpoints."""

    app = klein_app()

    def __init__(self, queue: IMessageQueue, calls: ICallStore, lookup: RouteLookup,
                 app_config: AppConfigLookup, clock: IReactorTime) -> None:
        self._queue = queue
        self._calls = calls
        self._lookup = lookup
        self._app_config = app_config
        self._clock = clock

    @app.route("/", methods=["GET"])
    async def next_task(self, request: IRequest) -> bytes:
        for _ in range(_MAX_SKIPS):
            held = await self._queue.reserve(FIRST_LEASE_S, 0)
            if held is None:
                break
            item = held.item
            try:
                record = await self._calls.get_call(item.app_name, item.call_id)
                route = await self._lookup(item.app_name, item.path)
            except (errors.CallNotFound, errors.AppNotFound, errors.RouteNotFound):
                await self._queue.ack(held)
                continue
            if record.terminal:
                await self._queue.ack(held)
                continue
            await self._queue.renew(held, lease_for(route))
            record = running_record(record, held.attempt, int(self._clock.seconds() * 1000))
            await self._calls.put_calls([record])
            call_request = request_from_payload(item.payload)
            env = call_env(Call(item.call_id, route, call_request, await self._app_config(item.app_name)))
            return json_response(request, {
                "id": item.call_id,
                "app_name": route.app_name,
                "path": route.path,
                "image": route.image,
                "payload": call_request.body.decode("utf-8", "replace"),
                "priority": item.priority,
                "timeout": route.timeout,
                "idle_timeout": route.idle_timeout,
                "memory": route.memory,
                "format": route.format,
                "env_vars": env,
                "status": CallStatus.RUNNING,
                "created_at": rfc3339(record.created_at),
                "started_at": rfc3339(record.started_at),
                "attempt": held.attempt,
            }, status=202)
        return json_response(request, {}, status=202)

    @app.route("/", methods=["DELETE"])
    async def delete_task(self, request: IRequest) -> bytes:
        task = parse_json_object(body_of(request))
        call_id, app_name = task.get("id"), task.get("app_name")
        if not isinstance(call_id, str) or not call_id:
            raise errors.ValidationError("Missing task id")
        if not isinstance(app_name, str) or not app_name:
            raise errors.ValidationError("Missing task app_name")
        record = await self._calls.get_call(app_name, call_id)
        if not await self._queue.remove(call_id) and not record.terminal:
            raise errors.ValidationError("Task is not reserved")
        if not record.terminal:
            now = int(self._clock.seconds() * 1000)
            await self._calls.put_calls([attrs.evolve(
                record, status=CallStatus.SUCCESS, reason="external_runner", completed_at=now,
                run_ms=None if record.started_at is None else now - record.started_at,
            )])
        return json_response(request, {"message": "Task deleted", "id": call_id}, status=202)
