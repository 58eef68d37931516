"""Async workers: reserve calls from the queue, run them, record the outcome, then ack.

``NUM_ASYNC`` workers per node, each running one call at a time through the same
``Agent`` as sync calls (so the route's own timeout, memory and format apply, and hot
routes run hot). At-least-once delivery:

- A reservation's lease covers the route's timeout plus a margin and is renewed while
  the call runs; a node that dies loses its leases and the calls run again elsewhere,
  with ``attempt`` one higher.
- A failed call (non-zero exit, timeout, could not start) is released back to the queue
  after ``retry_delay`` seconds, doubling each time, up to ``max_attempts`` attempts in
  all; then its record stays ``error``/``timeout`` for good.
- The record is written (``running``, then the outcome with body and log) *before* the
  ack, so an acked call always has its final record.
- A cancelled call (``DELETE /v1/apps/{app}/calls/{id}``) is skipped if still queued;
  while it runs, the lease renewal notices the cancel and removes its container.
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
from ironfunctions.runner.records import (
    failed_record,
    finished_record,
    request_from_payload,
    running_record,
)

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]
# A coroutine function (``Agent.run_call``): its calls go to ``Deferred.fromCoroutine``.
RunCall = Callable[[Call], Coroutine[Any, Any, CallResult]]
KillCall = Callable[[str], Awaitable[Any]]

FIRST_LEASE_S = 60.0  # until the route (and so its timeout) is known
LEASE_MARGIN_S = 10.0  # beyond the route timeout; renewed every third of the lease while running
RESERVE_WAIT_S = 5.0
QUEUE_DOWN_BACKOFF_S = 1.0


def lease_for(route: Route) -> float:
    """A lease longer than anything one attempt of this route can take."""
    return float(route.timeout) + LEASE_MARGIN_S


def retry_delay(base: float, attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: ``base``, doubling each attempt."""
    factor: int = 2 ** max(0, attempt - 1)  # int ** int is Any in typeshed
    return base * factor


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
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._drain_timeout = drain_timeout
        self._loops: list[Deferred[None]] = []
        self._waits: set[Deferred[Any]] = set()
        self._held: dict[str, Reservation] = {}
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
                try:
                    await self._queue.release(held)
                except Exception as e:
                    self.log.warn("Could not release {call_id}: {error}", call_id=held.call_id, error=str(e))

        return Deferred.fromCoroutine(stop())

    async def _sleep(self, seconds: float) -> None:
        d = deferLater(self._clock, seconds, lambda: None)
        self._waits.add(d)
        try:
            await d
        finally:
            self._waits.discard(d)

    async def _work(self, worker: int) -> None:
        while self.running:
            reserve = Deferred.fromCoroutine(self._queue.reserve(FIRST_LEASE_S, RESERVE_WAIT_S))
            self._waits.add(reserve)
            try:
                held = await reserve
                self._queue_down.recovered()
            except CancelledError:
                return
            except errors.QueueUnavailable as e:
                self._queue_down.failed(error=str(e), worker=worker)
                try:
                    await self._sleep(QUEUE_DOWN_BACKOFF_S)
                except CancelledError:
                    return
                continue
            finally:
                self._waits.discard(reserve)
            if held is None:
                continue
            if not self.running:
                try:
                    await self._queue.release(held)
                except Exception as e:  # its lease expires instead
                    self.log.warn("Could not release {call_id}: {error}", call_id=held.call_id, error=str(e))
                return
            self._held[held.call_id] = held
            try:
                await self.process(held)
            except Exception:
                # The store or queue failed mid-way: give the call back after the retry
                # delay rather than leave it until its lease runs out. (A call whose final
                # record was written is acked as done when it comes back.)
                self.log.failure("Async call {call_id} could not be processed", call_id=held.call_id)
                try:
                    await self._queue.release(held, retry_delay(self._retry_base, held.attempt))
                except Exception as e:
                    self.log.warn("Could not give {call_id} back; its lease will expire: {error}",
                                  call_id=held.call_id, error=str(e))
            finally:
                self._held.pop(held.call_id, None)

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
        if record.terminal:  # cancelled while queued, or a duplicate delivery
            await self._ack(held)
            return
        now = self._now_ms()
        if held.attempt > self._max_attempts:
            # The last allowed attempt was lost with its node: give up for good.
            await self._finish(held, failed_record(record, "too many attempts", now, "killed"), None, ack=True)
            return
        try:
            route = await self._lookup(item.app_name, item.path)
            app_config = await self._app_config(item.app_name)
            request = request_from_payload(item.payload)
        except (errors.AppNotFound, errors.RouteNotFound) as e:
            await self._finish(held, failed_record(record, str(e), now, "killed"), None, ack=True)
            return
        except (KeyError, ValueError, TypeError):
            await self._finish(held, failed_record(record, "invalid queued request", now, "killed"), None, ack=True)
            return
        lease = lease_for(route)
        await self._queue.renew(held, lease)
        record = running_record(record, held.attempt, now)
        if not await self._write_unless_cancelled(record):
            await self._ack(held)
            return
        self._metrics.timing("queue.wait_time", record.wait_ms or 0, **fields)

        run = Deferred.fromCoroutine(self._run_call(Call(item.call_id, route, request, app_config)))
        keeper = Deferred.fromCoroutine(self._keep_lease(held, lease, record, run))
        self.running_calls += 1
        try:
            result: CallResult | None = await run
            error = ""
        except (errors.Overloaded, errors.ImageNotFound, errors.DockerUnavailable, errors.NotReady) as e:
            result, error = None, str(e)
        finally:
            self.running_calls -= 1
            keeper.cancel()
        if item.call_id in self._abandoned:
            return
        now = self._now_ms()
        if result is not None:
            final = finished_record(record, result, now, keep_body=True)
            # An async call's wait is its time in the queue plus its wait for a container.
            final = attrs.evolve(final, wait_ms=(record.wait_ms or 0) + result.wait_ms)
            log = result.stderr
        else:
            final, log = failed_record(record, error, now), None
        if final.status == CallStatus.SUCCESS or held.attempt >= self._max_attempts:
            await self._finish(held, final, log, ack=True)
        else:
            delay = retry_delay(self._retry_base, held.attempt)
            retrying = attrs.evolve(final, status=CallStatus.QUEUED, reason="retry")
            await self._finish(held, retrying, log, ack=False, delay=delay)
            self.log.info("Async call {call_id} failed ({error}); retry in {delay}s",
                          error=final.error, delay=delay, **fields)

    async def _finish(self, held: Reservation, record: CallRecord, log: bytes | None,
                      ack: bool, delay: float = 0) -> None:
        """Write the record (and log), then ack, or release for a retry. A call
        cancelled meanwhile keeps its cancelled record and is acked."""
        if not await self._write_unless_cancelled(record):
            await self._ack(held)
            return
        if log:
            await self._calls.put_log(record.app_name, record.id, cap_log(log))
        if ack:
            await self._ack(held)
            if record.status == CallStatus.ERROR:
                self._metrics.count("async.dead", 1, app=record.app_name, path=record.path, call_id=record.id)
        else:
            try:
                await self._queue.release(held, delay)
            except errors.LeaseLost:
                self.log.warn("Lease of {call_id} lost before its retry was queued", call_id=held.call_id)

    async def _write_unless_cancelled(self, record: CallRecord) -> bool:
        """Replace the stored record by ``record`` in one atomic step, unless the call
        was cancelled (by any node) since we read it; return whether it was written.
        A read-then-put would let a cancel landing in between be overwritten."""

        def change(current: CallRecord) -> CallRecord:
            if current.status == CallStatus.CANCELLED:
                raise errors.CallCompleted()
            return record

        try:
            await self._calls.update_call(record.app_name, record.id, change)
        except errors.CallCompleted:
            return False
        return True

    async def _ack(self, held: Reservation) -> None:
        try:
            await self._queue.ack(held)
        except errors.LeaseLost:
            # Our lease ran out and another worker may have it: it records its own run.
            self.log.warn("Lease of {call_id} lost before ack", call_id=held.call_id)

    async def _keep_lease(self, held: Reservation, lease: float, record: CallRecord, run: Deferred[Any]) -> None:
        """While the call runs: renew the lease every third of it, and watch for a
        cancel (made through any node) to stop the call's container."""
        interval = max(0.5, min(lease / 3, 5.0))
        try:
            while True:
                await deferLater(self._clock, interval, lambda: None)
                try:
                    await self._queue.renew(held, lease)
                    current = await self._calls.get_call(record.app_name, record.id)
                except errors.LeaseLost:
                    self.log.warn("Lease of {call_id} lost while running", call_id=record.id)
                    return
                except CancelledError:  # the call ended: stop (CancelledError is an Exception)
                    raise
                except Exception as e:  # a passing outage: try again next tick
                    self.log.warn("Could not renew {call_id}: {error}", call_id=record.id, error=str(e))
                    continue
                if current.status == CallStatus.CANCELLED:
                    self.log.info("Call {call_id} cancelled while running; stopping it", call_id=record.id)
                    try:
                        await self._kill_call(record.id)
                    except Exception as e:  # engine trouble: the call runs to its timeout
                        self.log.warn("Could not stop cancelled call {call_id}: {error}",
                                      call_id=record.id, error=str(e))
                    return
        except CancelledError:
            return
