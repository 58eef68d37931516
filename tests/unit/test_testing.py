"""``ironfunctions.testing``: the public fakes provide the interfaces they stand in for."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from ironfunctions.calls.interface import ICallStore
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.drivers.interface import IContainerDriver
from ironfunctions.metrics import IMetrics
from ironfunctions.mq.interface import IMessageQueue
from ironfunctions.testing import FakeDriver, memory_node


def test_the_public_fakes_provide_their_interfaces() -> None:
    clock = Clock()
    node = memory_node(clock)
    assert verifyObject(IDatastore, node.datastore)
    assert verifyObject(ICallStore, node.calls)
    assert verifyObject(IMessageQueue, node.queue)
    assert verifyObject(IMetrics, node.metrics)
    assert verifyObject(IContainerDriver, FakeDriver(clock))


def test_memory_node_gives_fresh_backends_each_time() -> None:
    clock = Clock()
    first, second = memory_node(clock), memory_node(clock)
    assert first.datastore is not second.datastore and first.queue is not second.queue
    first.metrics.count("run.requests", app="a")
    assert first.metrics.total("run.requests") == 1 and second.metrics.total("run.requests") == 0
