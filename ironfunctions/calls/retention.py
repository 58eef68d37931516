"""``CALL_RETENTION`` (SPEC §8 "Data has an end"): finished call records and their logs
are deleted once they are older than the retention.

``CallRetentionService`` sweeps every ``interval`` seconds (``RETENTION_INTERVAL``, a
few minutes), off the request path: it deletes expired calls in batches of ``batch``
(one short transaction each, ``ICallStore.delete_finished``), handing the reactor back
between batches, until a batch comes back short. Queued and running calls are never
deleted (``calls/ending.py``). Every node sweeps; on a shared Postgres the batches of
two nodes skip each other's rows. A sweep that deleted something logs one line and
counts ``calls.expired``; a failed sweep logs a warning and the next one carries on.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ironfunctions.calls.interface import ICallStore
from ironfunctions.metrics import IMetrics
from ironfunctions.services import PeriodicService

DEFAULT_INTERVAL_S = 300.0
DEFAULT_BATCH = 1000


class CallRetentionService(PeriodicService):
    """Deletes finished calls older than ``retention`` seconds (see the module doc).

    :param calls: the call store.
    :param clock: times the sweeps and says what "older" means.
    :param metrics: where ``calls.expired`` is counted.
    :param retention: seconds a finished call is kept (``CALL_RETENTION``).
    :param interval: seconds between sweeps.
    :param batch: calls deleted per transaction.
    """

    log = Logger()

    def __init__(
        self,
        calls: ICallStore,
        clock: IReactorTime,
        metrics: IMetrics,
        retention: float,
        interval: float = DEFAULT_INTERVAL_S,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        super().__init__("call-retention", interval, self.sweep, clock)
        self._calls = calls
        self._clock = clock
        self._metrics = metrics
        self._retention = retention
        self._batch = batch

    async def sweep(self) -> None:
        """Delete what has expired now, a batch at a time."""
        before_ms = int((self._clock.seconds() - self._retention) * 1000)
        deleted = 0
        try:
            while True:
                count = await self._calls.delete_finished(before_ms, self._batch)
                deleted += count
                if count:
                    self._metrics.count("calls.expired", count)
                if count < self._batch or not self.running:
                    break
                await deferLater(self._clock, 0, lambda: None)  # let requests in between batches
        finally:
            if deleted:
                self.log.info("Deleted {count} call records that ended over {retention_s}s ago",
                              count=deleted, retention_s=int(self._retention))
