"""Writes sync call records and logs off the request path, in batches.

The seed principle: no datastore write on the synchronous request/response path. The
runner hands finished calls to ``CallRecorder.record`` (a list append) and answers at
once; every ``interval`` seconds the recorder writes what piled up in one transaction.
If the datastore is down, records wait and are retried; past ``max_buffer`` the oldest
are dropped (counted in ``calls.dropped``) so memory stays bounded.
"""

from __future__ import annotations

from collections import deque

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord, cap_log
from ironfunctions.metrics import IMetrics


class CallRecorder(Service):
    """A service that batches call records (and their logs) into the call store."""

    log = Logger()

    def __init__(
        self,
        calls: ICallStore,
        clock: IReactorTime,
        metrics: IMetrics,
        interval: float = 0.2,
        max_batch: int = 500,
        max_buffer: int = 50_000,
    ) -> None:
        self.name = "call-recorder"
        self._calls = calls
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._pending: deque[tuple[CallRecord, bytes | None]] = deque()
        self._loop: LoopingCall | None = None
        self._flushing: Deferred[None] | None = None

    def record(self, call: CallRecord, log: bytes | None = None) -> None:
        """Queue ``call`` (and its stderr) for writing. Never blocks, never raises."""
        self._pending.append((call, None if log is None else cap_log(log)))
        while len(self._pending) > self._max_buffer:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped, _ = self._pending.popleft()
        self._metrics.count("calls.dropped", 1, app=dropped.app_name)
        self.log.warn("Call record buffer full: dropped {call_id}", call_id=dropped.id, app=dropped.app_name)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: self.log.failure("CallRecord recorder loop died", f)
        )

    def _tick(self) -> Deferred[None] | None:
        if self._flushing is not None or not self._pending:
            return None
        self._flushing = Deferred.fromCoroutine(self.flush())
        self._flushing.addErrback(lambda f: self.log.failure("CallRecord record flush failed", f))

        def done(_: object) -> None:
            self._flushing = None

        self._flushing.addBoth(done)
        return None

    async def flush(self) -> None:
        """Write what is pending now, a batch at a time; on failure keep it for later.
        Records that arrive meanwhile wait for the next flush: chasing them would mean a
        transaction (and an fsync) for every few calls under load instead of one per
        ``max_batch`` records."""
        left = len(self._pending)
        while left > 0 and self._pending:
            # Take the batch out first: record() may drop the oldest pending entries
            # while we wait for the store, and must not drop these instead.
            size = min(self._max_batch, left, len(self._pending))
            left -= size
            batch = [self._pending.popleft() for _ in range(size)]
            try:
                await self._calls.put_calls([call for call, _ in batch])
                for call, log in batch:
                    if log:
                        await self._calls.put_log(call.app_name, call.id, log)
            except Exception as e:
                self.log.warn("Could not write {count} call records yet: {error}",
                              count=len(batch), error=str(e))
                self._pending.extendleft(reversed(batch))  # oldest first again
                while len(self._pending) > self._max_buffer:
                    self._drop_oldest()
                return

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Stop the loop and make one last attempt to write what is pending."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()

        async def last() -> None:
            if self._flushing is not None:
                await self._flushing
            await self.flush()
            if self._pending:
                self.log.warn("{count} call records not written at stop", count=len(self._pending))

        return Deferred.fromCoroutine(last())
