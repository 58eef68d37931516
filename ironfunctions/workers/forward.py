"""Hot calls sent from one worker process of a node to another (``WORKERS`` > 1).

A route at its ``max_concurrency`` whose containers all run in another worker
(``RouteElsewhere``, ``workers/slots.py``) has its calls sent there: a route at the
default ``max_concurrency`` 1 runs on its one container wherever its calls land
(``runner/hot_pool.py``). The call goes through the parent (``ForwardRelay``), which
knows the workers' links; the receiving worker runs it on its hot runner as one of its
own, and its result comes back. The worker that took the request keeps the call
(its record, metrics, ``/stats`` and cancel see it there); a cancel follows the call.

Messages: a worker's ``forward(worker, route, call id, request)`` request and
``forward_cancel(worker, call id)`` notice to the parent; the parent's ``hot_run(route,
call id, request)`` request and ``hot_cancel(call id)`` notice to the worker running it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from ironfunctions.errors import Overloaded
from ironfunctions.models import Call, CallResult, CallStatus
from ironfunctions.workers.channel import Channel, Relay
from ironfunctions.workers.wire import (
    WorkerLinkError, request_from_tuple, request_tuple, result_from_tuple, result_tuple, route_from_tuple,
    route_tuple,
)

log = Logger()

WORKER_GONE = "The worker process running the call stopped"

RunHere = Callable[[Call, bool], Awaitable[CallResult]]


class Forwarder:
    """A worker's side: sends calls to siblings, runs siblings' calls here."""

    def __init__(self, link: Channel) -> None:
        self._link = link

    def serve(self, run: RunHere, cancel: Callable[[str], Coroutine[Any, Any, bool]]) -> None:
        """Run calls other workers send here with ``run(call, forwarded=True)``."""

        async def hot_run(route: Any, call_id: str, request: Any) -> Any:
            route_value, app_config = route_from_tuple(route)
            call = Call(call_id, route_value, request_from_tuple(request), app_config)
            return result_tuple(await run(call, True))

        self._link.handle("hot_run", hot_run)
        self._link.handle("hot_cancel", lambda call_id: ensureDeferred(cancel(call_id)))

    async def forward(self, worker: int, call: Call) -> CallResult:
        """Run ``call`` on ``worker``; its result, or ``Overloaded`` as the runner there
        raises it. A worker that dies during the call ends it with an error."""
        try:
            fields = await self._link.request(
                "forward", worker, route_tuple(call.route, call.app_config), call.id, request_tuple(call.request))
        except WorkerLinkError as e:
            log.warn("Forwarded call {call_id} lost: {error}", call_id=call.id, error=str(e), to_worker=worker)
            return CallResult(call.id, CallStatus.ERROR, error=WORKER_GONE)
        return result_from_tuple(fields)

    def cancel(self, worker: int, call_id: str) -> None:
        """Stop ``call_id``, forwarded to ``worker``."""
        self._link.notify("forward_cancel", worker, call_id)


class ForwardRelay(Relay):
    """The parent's side: passes forwarded calls and their cancels between workers."""

    def serve(self, worker: int, link: Channel) -> None:
        link.handle("forward", self._forward)
        link.handle("forward_cancel", self._cancel)

    def _forward(self, target: int, route: Any, call_id: str, request: Any) -> Deferred[Any]:
        link = self._links.get(target)
        if link is None:
            raise Overloaded("the worker running the route's containers is restarting", retry_after=1)
        return link.request("hot_run", route, call_id, request)

    def _cancel(self, target: int, call_id: str) -> None:
        link = self._links.get(target)
        if link is not None:
            link.notify("hot_cancel", call_id)
