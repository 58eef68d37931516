"""``GET /tasks`` / ``DELETE /tasks``: IronFunctions' async-runner protocol.

External runners poll ``GET /tasks`` for the next async call and ``DELETE /tasks``
(body: the task) when they have run it; both answer 202, as the Go server did. A task
handed out is reserved with a lease covering its route's timeout: a runner that never
comes back loses it and the call is delivered again (to a runner or to a node's own
workers). The task's ``id`` names that reservation (``call_id`` names the call); a
``DELETE`` whose ``id`` is not a reservation alive now is 404 and changes nothing.
The protocol carries no result, so a deleted task is recorded as ``success`` with
reason ``external_runner``; no task waiting -> ``{}``.

Behind the API key (``api/__init__.py``); a token limited to some apps reserves and
deletes only their calls, filtered by the queue itself. The runner's side of it
(reservations, leases, records) is ``runner/external.py``; this is the HTTP side.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from twisted.web.resource import IResource

from ironfunctions import errors
from ironfunctions.api.auth import EVERYTHING, Access
from ironfunctions.api.http import body_of, json_response, klein_app
from ironfunctions.api.schema import parse_json_object
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import rfc3339
from ironfunctions.models import CallStatus, Route
from ironfunctions.names import check_storable
from ironfunctions.mq.interface import IMessageQueue
from ironfunctions.runner.attempts import AttemptPolicy
from ironfunctions.runner.external import TASK_NOT_FOUND, RunnerTask, complete_for_runner, reserve_for_runner

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]


class TasksAPI:
    """The ``/tasks`` endpoints."""

    app = klein_app()

    def __init__(self, queue: IMessageQueue, calls: ICallStore, lookup: RouteLookup,
                 app_config: AppConfigLookup, clock: IReactorTime, access: Access = EVERYTHING,
                 policy: AttemptPolicy = AttemptPolicy()) -> None:
        self._policy = policy
        self._queue = queue
        self._calls = calls
        self._lookup = lookup
        self._app_config = app_config
        self._clock = clock
        self._access = access

    def resource_for(self, access: Access) -> IResource:
        """The ``/tasks`` resource for a request granted ``access``."""
        return TasksAPI(self._queue, self._calls, self._lookup, self._app_config, self._clock, access,
                        self._policy).app.resource()

    @app.route("/", methods=["GET"])
    async def next_task(self, request: IRequest) -> bytes:
        task = await reserve_for_runner(self._queue, self._calls, self._lookup, self._app_config, self._clock,
                                        self._access.apps, self._policy)
        return json_response(request, {} if task is None else task_json(task), status=202)

    @app.route("/", methods=["DELETE"])
    async def delete_task(self, request: IRequest) -> bytes:
        task = parse_json_object(body_of(request))
        task_id, app_name = task.get("id"), task.get("app_name")
        if not isinstance(task_id, str) or not task_id:
            raise errors.ValidationError("Missing task id")
        if not isinstance(app_name, str) or not app_name:
            raise errors.ValidationError("Missing task app_name")
        check_storable(task_id)  # JSON may hold "\u0000" or a lone "\udc80"
        check_storable(app_name)
        if not self._access.allows(app_name):
            raise errors.CallNotFound(TASK_NOT_FOUND)
        call_id = await complete_for_runner(self._queue, self._calls, app_name, task_id, self._clock)
        return json_response(request, {"message": "Task deleted", "id": task_id, "call_id": call_id}, status=202)


def task_json(task: RunnerTask) -> dict[str, Any]:
    """A task as IronFunctions' runner reads it."""
    route, record = task.route, task.record
    return {
        "id": task.task_id,
        "call_id": task.call_id,
        "app_name": route.app_name,
        "path": route.path,
        "image": route.image,
        "payload": task.request.body.decode("utf-8", "replace"),
        "priority": task.priority,
        "timeout": route.timeout,
        "idle_timeout": route.idle_timeout,
        "memory": route.memory,
        "format": route.format,
        "env_vars": dict(task.env),
        "status": CallStatus.RUNNING,
        "created_at": rfc3339(record.created_at),
        "started_at": rfc3339(record.started_at),
        "attempt": task.attempt,
    }
