"""Cancels between the worker processes of one node (``WORKERS`` > 1, SPEC §9, issue 15).

A ``DELETE /v1/apps/{app}/calls/{id}`` reaches whichever worker accepted its
connection; the call may run in another. On a Redis ``MQ_URL`` every worker subscribes
to the shared cancel bus itself (``cancelbus/redis.py``), siblings included, and needs
nothing more. On the embedded queue (SQLite) the bus of a single node is in memory
(``cancelbus/memory.py``), which reaches no other process; so a worker's bus is a
``ParentCancelBus``: its own handler first, then the parent's ``CancelRelay`` asks the
other workers' handlers and answers with the first record, as the in-memory bus does
across its network.

Deleting an app must stop its calls on every worker too, including sync calls too
young to have a record (``runner/cancel.py``, ``make_app_calls_ender``): a worker asks
the parent, which asks every other worker to stop its calls of the app
(``app_ender``).

The messages (``workers/link.py``): the worker's ``bus_publish(app, call_id)`` answered
with a record (``cancelbus/wire.py``'s JSON form) or None; the parent's
``bus_cancel(app, call_id)``, answered likewise by each worker's handler; the worker's
``app_calls_end(app)`` and the parent's ``end_app_calls(app)``, answered with how many
calls were stopped.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.calls.model import CallRecord
from ironfunctions.cancelbus.interface import CancelHandler, ICancelBus
from ironfunctions.cancelbus.wire import record_from_json, record_to_json
from ironfunctions.errors import QueueUnavailable
from ironfunctions.workers.channel import Channel, Relay
from ironfunctions.workers.wire import WorkerLinkError

log = Logger()

APP_END_WAIT_S = 10.0  # how long a deleted app's worker waits for its siblings to stop the app's calls


@implementer(ICancelBus)
class ParentCancelBus:
    """A worker's cancel bus on the embedded queue: this worker, then its siblings
    through the parent (``CancelRelay``)."""

    def __init__(self, link: Channel, clock: IReactorTime) -> None:
        self._link = link
        self._clock = clock
        self._handler: CancelHandler | None = None
        link.handle("bus_cancel", self._asked)

    def on_cancel(self, handler: CancelHandler) -> None:
        self._handler = handler

    async def publish(self, app_name: str, call_id: str, wait: float = 0.0) -> CallRecord | None:
        here = self._handle(app_name, call_id)
        if here is not None:  # running in this worker: no sibling runs it
            return here if wait > 0 else None
        try:
            asked = self._link.request("bus_publish", app_name, call_id)
        except WorkerLinkError as e:
            raise QueueUnavailable(f"cannot reach the node's other workers: {e}") from None
        if wait <= 0:
            asked.addErrback(lambda f: log.warn("A cancel of {call_id} did not reach the other workers: {error}",
                                                call_id=call_id, error=str(f.value)))
            return None
        asked.addTimeout(wait, self._clock)
        try:
            answer = await asked
        except (TimeoutError, CancelledError):
            return None
        except WorkerLinkError as e:
            raise QueueUnavailable(f"cannot reach the node's other workers: {e}") from None
        return None if answer is None else record_from_json(answer)

    def _handle(self, app_name: str, call_id: str) -> CallRecord | None:
        if self._handler is None:
            return None
        try:
            return self._handler(app_name, call_id)
        except Exception:  # as on the other buses: a failing handler means "not here"
            log.failure("Cancel handler failed for {call_id}", call_id=call_id)
            return None

    def _asked(self, app_name: str, call_id: str) -> dict[str, Any] | None:
        record = self._handle(app_name, call_id)
        return None if record is None else record_to_json(record)


def app_ender(link: Channel, clock: IReactorTime,
              stop_here: Callable[[str], Coroutine[Any, Any, int]]) -> Callable[[str], Coroutine[Any, Any, None]]:
    """A worker's part in deleting an app: answer the parent's ``end_app_calls`` with
    ``stop_here(app)`` (stop this worker's calls of the app, return how many), and
    return what asks the other workers to do the same (``make_app_calls_ender``'s
    ``elsewhere``). Its Deferred fails with ``WorkerLinkError`` when the parent cannot
    be reached, and with ``TimeoutError`` after ``APP_END_WAIT_S``."""
    link.handle("end_app_calls", lambda app_name: Deferred.fromCoroutine(stop_here(app_name)))

    async def elsewhere(app_name: str) -> None:
        asked = link.request("app_calls_end", app_name)
        asked.addTimeout(APP_END_WAIT_S, clock)
        await asked

    return elsewhere


class CancelRelay(Relay):
    """The parent's side: relays cancels and ended apps between its workers."""

    def serve(self, worker: int, link: Channel) -> None:
        link.handle("bus_publish", lambda app, call_id: Deferred.fromCoroutine(
            self._publish(worker, app, call_id)))
        link.handle("app_calls_end", lambda app: Deferred.fromCoroutine(self._end_app(worker, app)))

    async def _publish(self, sender: int, app_name: str, call_id: str) -> dict[str, Any] | None:
        """Ask every worker but ``sender``; the first record wins, as soon as it comes."""
        asks = []
        for index, link in self.others(sender):
            try:
                asks.append(link.request("bus_cancel", app_name, call_id))
            except WorkerLinkError:  # gone meanwhile: it runs nothing
                continue
        if not asks:
            return None
        found: Deferred[dict[str, Any] | None] = Deferred()

        def heard(answer: Any) -> Any:
            if answer is not None and not found.called:
                found.callback(answer)
            return answer

        for ask in asks:
            ask.addCallbacks(heard, lambda f: None)  # an unreachable worker says "not here"

        def all_heard(_: object) -> None:
            if not found.called:
                found.callback(None)

        DeferredList(asks).addCallback(all_heard)
        return await found

    async def _end_app(self, sender: int, app_name: str) -> int:
        """Ask every worker but ``sender`` to stop its calls of ``app_name``; return how
        many they stopped."""
        asks = []
        for index, link in self.others(sender):
            try:
                asks.append(link.request("end_app_calls", app_name))
            except WorkerLinkError:
                continue
        stopped = 0
        for ok, value in await DeferredList(asks, consumeErrors=True):
            if ok and isinstance(value, int):
                stopped += value
            elif not ok:
                log.warn("A worker could not stop the calls of deleted app {app}: {error}", app=app_name,
                         error=str(value.value))
        return stopped
