"""Writes sync call records and logs off the request path, in batches.

The seed principle: no datastore write on the synchronous request/response path. The
runner hands finished calls to ``CallRecorder.record`` (a list append) and answers at
once; every ``interval`` seconds the recorder writes what piled up in one transaction.

If the datastore is down, records and logs wait and are retried (SPEC §10), in a buffer
of at most ``max_bytes`` (``RECORD_BUFFER``), counting each record's approximate size
(``record_size``) and its log's length. When it is full, logs go first, oldest first
(the record stays, without its log: ``calls.logs_dropped``), then the oldest records
(``calls.dropped``). Failed writes and drops are logged outage-style (one line when
they start, a count a minute, one line with the totals when the store is back), not
once per retry or drop.
"""

from __future__ import annotations

from collections import deque

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord, cap_log
from ironfunctions.metrics import COUNT, IMetrics
from ironfunctions.ratelimit import OutageLog

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# What a record costs in memory besides its strings and body (measured: ~640 bytes
# for a typical finished call, its strings included).
RECORD_OVERHEAD = 512


def record_size(call: CallRecord) -> int:
    """The approximate bytes ``call`` holds in memory, its log not included."""
    return (RECORD_OVERHEAD + len(call.id) + len(call.app_name) + len(call.path) + len(call.image)
            + len(call.error) + len(call.reason) + len(call.body or b""))


@attrs.define
class _Pending:
    """A record waiting to be written, with its log (dropped first when full)."""

    call: CallRecord
    log: bytes | None
    size: int  # record_size(call)

    @property
    def bytes(self) -> int:
        return self.size + len(self.log or b"")


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
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.name = "call-recorder"
        self._calls = calls
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._pending: deque[_Pending] = deque()
        self._logged: deque[_Pending] = deque()  # the entries of _pending with a log, in order
        self._bytes = 0  # of the entries in _pending
        self._loop: LoopingCall | None = None
        self._flushing: Deferred[None] | None = None
        self._write_failures = OutageLog(
            self.log, clock,
            started="Could not write call records: {error}; they wait (up to RECORD_BUFFER) and are retried",
            ongoing="Still could not write call records: {failures} failed writes in {seconds}s; "
                    "{count} records waiting: {error}",
            ended="Call records written again after {seconds}s ({total} failed writes)",
        )
        self._drops = OutageLog(
            self.log, clock,
            started="Call record buffer full (RECORD_BUFFER {max_bytes} bytes): dropping logs, "
                    "then records, oldest first",
            ongoing="Call record buffer still full: {logs_dropped} logs and {records_dropped} records dropped",
            ended="Call record buffer: {logs_dropped} logs and {records_dropped} records were dropped in all",
        )
        self._logs_dropped = 0  # since drops started
        self._records_dropped = 0

    def record(self, call: CallRecord, log: bytes | None = None) -> None:
        """Queue ``call`` (and its stderr) for writing. Never blocks, never raises."""
        entry = _Pending(call, None if not log else cap_log(log), record_size(call))
        self._pending.append(entry)
        if entry.log is not None:
            self._logged.append(entry)
        self._bytes += entry.bytes
        self._make_room()

    def _make_room(self) -> None:
        """Drop logs, then records, oldest first, until the buffer is within bounds.
        (Counted with ``many``, which the log sink coalesces: a full buffer drops on
        every call.)"""
        while self._bytes > self._max_bytes and self._pending:
            if self._logged:
                entry = self._logged.popleft()
                assert entry.log is not None
                self._bytes -= len(entry.log)
                entry.log = None
                self._logs_dropped += 1
                self._metrics.many(((COUNT, "calls.logs_dropped", 1),), app=entry.call.app_name)
            else:
                entry = self._pending.popleft()
                self._bytes -= entry.bytes
                self._records_dropped += 1
                self._metrics.many(((COUNT, "calls.dropped", 1),), app=entry.call.app_name)
            self._drops.failed(max_bytes=self._max_bytes, logs_dropped=self._logs_dropped,
                               records_dropped=self._records_dropped, call_id=entry.call.id)

    @property
    def pending(self) -> int:
        """Records waiting to be written (a batch being written not included)."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Their approximate size, logs included."""
        return self._bytes

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

    def _take(self, size: int) -> list[_Pending]:
        """Take the oldest ``size`` entries out of the buffer."""
        batch = [self._pending.popleft() for _ in range(size)]
        for entry in batch:
            self._bytes -= entry.bytes
            if entry.log is not None:
                assert self._logged[0] is entry
                self._logged.popleft()
        return batch

    def _put_back(self, batch: list[_Pending]) -> None:
        """Put a batch that could not be written back in front, oldest first again."""
        self._pending.extendleft(reversed(batch))
        self._logged.extendleft(reversed([entry for entry in batch if entry.log is not None]))
        self._bytes += sum(entry.bytes for entry in batch)
        self._make_room()

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
            batch = self._take(size)
            try:
                await self._calls.put_calls([entry.call for entry in batch])
                for entry in batch:
                    if entry.log:
                        await self._calls.put_log(entry.call.app_name, entry.call.id, entry.log)
            except Exception as e:
                self._write_failures.failed(error=str(e), count=len(self._pending) + len(batch))
                self._put_back(batch)
                return
            self._write_failures.recovered()
            self._drops.recovered(logs_dropped=self._logs_dropped, records_dropped=self._records_dropped)
            self._logs_dropped = self._records_dropped = 0

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
