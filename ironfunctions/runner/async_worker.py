"""Async workers: reserve calls from the queue, run them, record the outcome, then ack.

``NUM_ASYNC`` workers per node, each running one call at a time through the same
``Agent`` as sync calls (so the route's own timeout, memory and format apply, and hot
routes run hot). At-least-once delivery; what each delivery means and what a failure
costs is decided from the call's record (``attempts.py``, SPEC §10):

- A reservation's lease covers the route's timeout plus a margin and is renewed while
  the call runs; a node that dies loses its leases and the calls run again elsewhere
  (``lost`` counts those; the 3rd ends the call ``node_lost``).
- A call whose function failed (non-zero exit, timeout, out of memory, image not found)
  is released back to the queue after ``retry_delay`` seconds, doubling each time, up
  to ``max_attempts`` attempts in all; then its record stays ``error``/``timeout``.
- A call the platform could not run (store or queue down, overload, Docker down, node
  not ready or stopping) goes back to the queue with backoff, its attempt not counted,
  until ``ASYNC_MAX_AGE`` (``expired``).
- The record is written (``running``, then the outcome with body and log) *before* the
  ack, so an acked call always has its final record; an outcome the store cannot take
  is retried (the lease kept) until it can.
- A cancelled call (``DELETE /v1/apps/{app}/calls/{id}``) is skipped if still queued;
  while it runs, the lease renewal notices the cancel and removes its container. A call
  whose app or route was deleted ends ``cancelled`` (``route_deleted``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord, cap_log
from ironfunctions.metrics import IMetrics
from ironfunctions.models import Call, CallResult, CallStatus, Route
from ironfunctions.mq.interface import IMessageQueue, Reservation
from ironfunctions.ratelimit import OutageLog
from ironfunctions.runner.attempts import (
    PLATFORM_RETRY,
    RETRY,
    AttemptPolicy,
    GiveUp,
    Skip,
    on_delivery,
    platform_delay,
    retries_after_failure,
    retry_delay,
)
from ironfunctions.runner.lease_keeper import keep_lease, release_patiently, write_unless_cancelled
from ironfunctions.runner.records import (
    failed_record,
    finished_record,
    request_from_payload,
    route_deleted_record,
    running_record,
)

__all__ = ["AsyncWorkerService", "lease_for", "retry_delay", "FIRST_LEASE_S", "PLATFORM_FAILURES"]

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]
# A coroutine function (``Agent.run_call``): its calls go to ``Deferred.fromCoroutine``.
RunCall = Callable[[Call], Coroutine[Any, Any, CallResult]]
KillCall = Callable[[str], Awaitable[Any]]
# Fires when the queue and the call store have started (tap.py: their services).
WhenReady = Callable[[], Awaitable[Any]]

FIRST_LEASE_S = 60.0  # until the route (and so its timeout) is known
LEASE_MARGIN_S = 10.0  # beyond the route timeout; renewed every third of the lease while running
RESERVE_WAIT_S = 5.0
QUEUE_DOWN_BACKOFF_S = 1.0
STORE_RETRY_MAX_S = 5.0  # longest wait between tries of writing an outcome the store refused
# The platform could not run the call: not the function's fault, not an attempt (SPEC §10).
PLATFORM_FAILURES = (errors.Overloaded, errors.DockerUnavailable, errors.NotReady)


def lease_for(route: Route) -> float:
    """A lease longer than anything one attempt of this route can take."""
    return float(route.timeout) + LEASE_MARGIN_S


class AsyncWorkerService(Service):
    """``num_workers`` loops reserving and running async calls on this node."""

    log = Logger()
    name = "async-workers"

    def __init__(
        self,
        queue: IMessageQueue,
        calls: ICallStore,
        lookup: RouteLookup,
        app_config: AppConfigLookup,
        run_call: RunCall,
        kill_call: KillCall,
        clock: IReactorTime,
        metrics: IMetrics,
        num_workers: int,
        max_attempts: int,
        retry_base: float,
        drain_timeout: float = 30.0,
        max_age: float = 24 * 3600.0,
        when_ready: WhenReady | None = None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._queue = queue
        self._calls = calls
        self._lookup = lookup
        self._app_config = app_config
        self._run_call = run_call
        self._kill_call = kill_call
        self._clock = clock
        self._metrics = metrics
        self._num_workers = num_workers
        self._policy = AttemptPolicy(max_attempts, retry_base, max_age)
        self._retry_base = retry_base
        self._drain_timeout = drain_timeout
        self._when_ready = when_ready
        # A draining node (SIGTERM, DRAIN_GRACE) takes no new async calls: another node
        # runs them, instead of this one starting what its shutdown would cut short.
        self._draining = draining
        self._loops: list[Deferred[None]] = []
        self._waits: set[Deferred[Any]] = set()
        self._held: dict[str, Reservation] = {}
        self._leases: dict[str, float] = {}  # call id -> lease seconds of the held call
        self._abandoned: set[str] = set()  # released at stop: their outcome is not ours to write
        self.running_calls = 0
        self._queue_down = OutageLog(  # one line per outage, not one per worker and retry
            self.log, clock, started="Queue unavailable ({error}); async workers back off",
            ongoing="Queue still unavailable ({error}): {failures} failed reserves in {seconds}s",
            ended="Queue available again after {seconds}s; async workers resume")

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- service

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        for n in range(self._num_workers):
            loop = Deferred.fromCoroutine(self._work(n))
            loop.addErrback(lambda f: self.log.failure("Async worker loop died", f))
            self._loops.append(loop)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Stop reserving; let running calls finish (bounded), then give back the
        leases of the ones that did not, so another node runs them at once."""
        super().stopService()  # type: ignore[no-untyped-call]
        for wait in list(self._waits):
            wait.cancel()

        async def stop() -> None:
            deadline = self._clock.seconds() + self._drain_timeout
            while not all(loop.called for loop in self._loops) and self._clock.seconds() < deadline:
                await deferLater(self._clock, 0.05, lambda: None)
            if self._held:
                self.log.warn("Stopping with {count} async calls unfinished; releasing them",
                              count=len(self._held))
            for held in list(self._held.values()):
                self._abandoned.add(held.call_id)
                await self._put_back(held, 0)

        return Deferred.fromCoroutine(stop())

    async def _sleep(self, seconds: float) -> None:
        d = deferLater(self._clock, seconds, lambda: None)
        self._waits.add(d)
        try:
            await d
        finally:
            self._waits.discard(d)

    async def _reserve(self, worker: int) -> Reservation | None:
        """The next call, or None (nothing came, or the queue is down: backed off)."""
        reserve = Deferred.fromCoroutine(self._queue.reserve(FIRST_LEASE_S, RESERVE_WAIT_S))
        self._waits.add(reserve)
        try:
            held = await reserve
        except errors.QueueUnavailable as e:
            self._queue_down.failed(error=str(e), worker=worker)
            await self._sleep(QUEUE_DOWN_BACKOFF_S)
            return None
        finally:
            self._waits.discard(reserve)
        self._queue_down.recovered()
        return held

    async def _work(self, worker: int) -> None:
        try:
            if self._when_ready is not None:  # no noise about backends still starting
                waiting = Deferred.fromCoroutine(_awaited(self._when_ready()))
                self._waits.add(waiting)
                try:
                    await waiting
                finally:
                    self._waits.discard(waiting)
            while self.running and not self._draining():
                held = await self._reserve(worker)
                if held is not None:
                    await self._hold(held)
        except CancelledError:  # stopService
            return

    async def _hold(self, held: Reservation) -> None:
        if not self.running or self._draining():
            await self._release(held, 0)
            return
        self._held[held.call_id] = held
        self._leases[held.call_id] = FIRST_LEASE_S
        try:
            await self.process(held)
        except errors.LeaseLost:
            # Another delivery has the call now: it records its own run.
            self.log.warn("Lease of {call_id} lost; another delivery has the call", call_id=held.call_id)
        except Exception as e:
            # The store or queue failed mid-way (the platform, not the function): give
            # the call back with a backoff rather than leave it until its lease runs
            # out; its attempt is not counted (the record says so, SPEC §10).
            self.log.warn("Async call {call_id} could not be processed ({error}); put back",
                          call_id=held.call_id, error=str(e) or type(e).__name__)
            if held.call_id not in self._abandoned:
                await self._put_back(held, platform_delay(self._retry_base, held.attempt))
        finally:
            self._held.pop(held.call_id, None)
            self._leases.pop(held.call_id, None)

    async def _put_back(self, held: Reservation, delay: float) -> None:
        """Release a call the platform could not finish: its record, if it says
        ``running``, goes back to ``queued`` (``platform_retry``) first, so the next
        delivery runs the same attempt instead of counting a lost node."""

        def back(current: CallRecord) -> CallRecord:
            if current.status != CallStatus.RUNNING:
                raise errors.CallCompleted()  # queued already, or ended: leave it
            return attrs.evolve(current, status=CallStatus.QUEUED, reason=PLATFORM_RETRY)

        try:
            await self._calls.update_call(held.item.app_name, held.call_id, back)
        except Exception:  # ended, gone, or the store is down: the record stays as it is
            pass
        await self._release(held, delay)

    async def _release(self, held: Reservation, delay: float) -> None:
        """Give the call back (visible after ``delay``), trying again while the queue is
        down (``release_patiently``) unless this service is stopping."""
        await release_patiently(self._queue, held, delay, self._clock, self._sleep, lambda: bool(self.running),
                                give_up_after=FIRST_LEASE_S)

    # -- one call

    async def process(self, held: Reservation) -> None:
        """Run one reserved call to a recorded outcome, then ack or release it."""
        item = held.item
        fields = {"app": item.app_name, "path": item.path, "call_id": item.call_id}
        try:
            record = await self._calls.get_call(item.app_name, item.call_id)
        except errors.CallNotFound:
            self.log.warn("Queued call {call_id} has no record; dropped", **fields)
            await self._ack(held)
            return
        now = self._now_ms()
        decision = on_delivery(record, now, self._policy)
        if isinstance(decision, Skip):  # cancelled while queued, or a duplicate delivery
            await self._ack(held)
            return
        record = attrs.evolve(record, lost=decision.lost)
        if isinstance(decision, GiveUp):
            self.log.warn("Async call {call_id} given up: {reason}", reason=decision.reason, **fields)
            await self._finish(held, failed_record(record, decision.error, now, decision.reason), None, ack=True)
            return
        attempt = decision.attempt
        try:
            route = await self._lookup(item.app_name, item.path)
            app_config = await self._app_config(item.app_name)
            request = request_from_payload(item.payload)
        except (errors.AppNotFound, errors.RouteNotFound) as e:
            await self._finish(held, route_deleted_record(record, str(e), now), None, ack=True)
            return
        except (KeyError, ValueError, TypeError):
            await self._finish(held, failed_record(record, "invalid queued request", now, "killed"), None, ack=True)
            return
        lease = lease_for(route)
        await self._queue.renew(held, lease)
        self._leases[item.call_id] = lease
        record = running_record(record, attempt, now)
        if not await write_unless_cancelled(self._calls, record):
            await self._ack(held)
            return
        self._metrics.timing("queue.wait_time", record.wait_ms or 0, **fields)

        run = Deferred.fromCoroutine(self._run_call(Call(item.call_id, route, request, app_config)))
        keeper = Deferred.fromCoroutine(
            keep_lease(self._queue, self._calls, self._kill_call, self._clock, held, lease, record))
        self.running_calls += 1
        platform = False
        try:
            result: CallResult | None = await run
            error = ""
        except errors.ImageNotFound as e:  # the function's own failure: an attempt
            result, error = None, str(e)
        except PLATFORM_FAILURES as e:
            result, error, platform = None, str(e), True
        finally:
            self.running_calls -= 1
            keeper.cancel()
        if item.call_id in self._abandoned:
            return
        if platform:
            self.log.info("Async call {call_id} not run ({error}); put back", error=error, **fields)
            back = attrs.evolve(record, status=CallStatus.QUEUED, reason=PLATFORM_RETRY)
            await self._finish(held, back, None, ack=False, delay=platform_delay(self._retry_base, held.attempt))
            return
        now = self._now_ms()
        if result is not None:
            final = finished_record(record, result, now, keep_body=True)
            # An async call's wait is its time in the queue plus its wait for a container.
            final = attrs.evolve(final, wait_ms=(record.wait_ms or 0) + result.wait_ms)
            log = result.stderr
        else:
            final, log = failed_record(record, error, now), None
        if final.status == CallStatus.SUCCESS or not retries_after_failure(attempt, self._policy):
            await self._finish(held, final, log, ack=True)
        else:
            delay = retry_delay(self._retry_base, attempt)
            retrying = attrs.evolve(final, status=CallStatus.QUEUED, reason=RETRY)
            await self._finish(held, retrying, log, ack=False, delay=delay)
            self.log.info("Async call {call_id} failed ({error}); retry in {delay}s",
                          error=final.error, delay=delay, **fields)

    async def _finish(self, held: Reservation, record: CallRecord, log: bytes | None,
                      ack: bool, delay: float = 0) -> None:
        """Write the record (and log), then ack, or release for a retry. A call
        cancelled meanwhile keeps its cancelled record and is acked."""
        if not await self._persist(held, record, log):
            await self._ack(held)
            return
        if ack:
            await self._ack(held)
            if record.status == CallStatus.ERROR:
                self._metrics.count("async.dead", 1, app=record.app_name, path=record.path, call_id=record.id)
        else:
            await self._release(held, delay)

    async def _persist(self, held: Reservation, record: CallRecord, log: bytes | None) -> bool:
        """Write the log and record (see ``write_unless_cancelled``), trying again
        while the store is down, keeping the lease meanwhile: an outcome is never
        dropped for a passing outage. Raise ``LeaseLost`` if another delivery took
        the call, or the store's error once the service stops."""
        wait = 0.5
        while True:
            try:
                if log:
                    await self._calls.put_log(record.app_name, record.id, cap_log(log))
                return await write_unless_cancelled(self._calls, record)
            except (errors.DatastoreUnavailable, errors.QueueUnavailable) as e:
                if not self.running:
                    raise
                self.log.warn("Could not record {call_id} ({error}); trying again in {wait}s",
                              call_id=record.id, error=str(e), wait=wait)
            await self._sleep(wait)
            wait = min(wait * 2, STORE_RETRY_MAX_S)
            try:
                await self._queue.renew(held, self._leases.get(held.call_id, FIRST_LEASE_S))
            except errors.QueueUnavailable:
                pass  # the lease may run out: then another delivery records the call

    async def _ack(self, held: Reservation) -> None:
        try:
            await self._queue.ack(held)
        except errors.LeaseLost:
            # Our lease ran out and another worker may have it: it records its own run.
            self.log.warn("Lease of {call_id} lost before ack", call_id=held.call_id)
        except errors.QueueUnavailable as e:
            # The record is final: the next delivery finds it so and acks it then.
            self.log.warn("Could not ack {call_id} ({error}); acked when delivered again",
                          call_id=held.call_id, error=str(e))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
