"""``MemoryCancelBus``: the cancel bus inside one process.

The bus of a single node (``MQ_URL`` memory:// or sqlite://: no other node shares the
queue, so no other node can run its calls) and the test double of ``ICancelBus``.
Buses made with ``joined()`` share one network, as nodes sharing a Redis do, so unit
tests can run two "nodes" in one process. Delivery is immediate and never lost.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.calls.model import CallRecord
from ironfunctions.cancelbus.interface import CancelHandler, ICancelBus


@implementer(ICancelBus)
class MemoryCancelBus:
    """Every bus of a network hands each published cancel to every handler at once."""

    log = Logger()

    def __init__(self) -> None:
        self._network: list[MemoryCancelBus] = [self]
        self._handler: CancelHandler | None = None

    def joined(self) -> MemoryCancelBus:
        """A new bus on this bus's network (another node)."""
        other = MemoryCancelBus()
        other._network = self._network
        self._network.append(other)
        return other

    def on_cancel(self, handler: CancelHandler) -> None:
        self._handler = handler

    async def publish(self, app_name: str, call_id: str, wait: float = 0.0) -> CallRecord | None:
        found = None
        for bus in list(self._network):
            record = bus._received(app_name, call_id)
            found = found or record
        return found if wait > 0 else None  # as on Redis: no answers asked, none given

    def _received(self, app_name: str, call_id: str) -> CallRecord | None:
        if self._handler is None:
            return None
        try:
            return self._handler(app_name, call_id)
        except Exception:  # as on Redis: a failing handler means "not here"
            self.log.failure("Cancel handler failed for {call_id}", call_id=call_id)
            return None
