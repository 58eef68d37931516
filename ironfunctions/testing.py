"""Fakes for testing code that uses IronFunctions' parts, public as txacme's ``testing``.

Each fake is a real provider of its interface and passes the same contract suite as the
real backend (``tests/contracts/``): ``FakeDriver`` (``IContainerDriver``: containers
with scripted behaviour, on a clock), ``MemoryDatastore`` (``IDatastore``),
``MemoryCallStore`` (``ICallStore``), ``MemoryQueue`` (``IMessageQueue``),
``MemoryCancelBus`` (``ICancelBus``; ``joined()`` gives another node's bus) and
``MemoryMetrics`` (``IMetrics``: every figure kept, summed by ``total``). They live
beside their interfaces (the memory ones are also the ``memory://`` backends); this
module is the one place to import them from::

    from twisted.internet.task import Clock
    from ironfunctions.testing import FakeDriver, memory_node

    clock = Clock()
    node = memory_node(clock)
    driver = FakeDriver(clock)
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.cancelbus.memory import MemoryCancelBus
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.drivers.fake import FakeDriver, FakeRun, cat
from ironfunctions.metrics.memory import MemoryMetrics
from ironfunctions.mq.memory import MemoryQueue

__all__ = [
    "FakeDriver", "FakeRun", "cat", "MemoryCallStore", "MemoryDatastore", "MemoryMetrics",
    "MemoryQueue", "MemoryNode", "memory_node", "MemoryCancelBus",
]


@attrs.frozen
class MemoryNode:
    """The backends of one node, all in memory: what ``DB_URL=memory://`` and
    ``MQ_URL=memory://`` give, plus metrics that keep every figure."""

    datastore: MemoryDatastore
    calls: MemoryCallStore
    queue: MemoryQueue
    metrics: MemoryMetrics


def memory_node(clock: IReactorTime) -> MemoryNode:
    """Fresh, empty in-memory backends; the queue's leases run on ``clock``."""
    return MemoryNode(MemoryDatastore(), MemoryCallStore(), MemoryQueue(clock), MemoryMetrics())
