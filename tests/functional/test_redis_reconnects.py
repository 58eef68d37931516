"""The Redis queue reconnects whatever the moment Redis goes away (a real Redis behind a
front that drops connections on purpose)."""

from __future__ import annotations

from typing import Any, Iterator, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.portforward import ProxyFactory
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from zope.interface import provider

from ironfunctions.mq.interface import QueueItem
from ironfunctions.mq.redis import RedisQueue
from tests.servers import RedisServer, redis_server  # noqa: F401 (session fixture)


class _DropOnFirstBytes(Protocol):
    """Accepts, then closes the connection as soon as the client says anything: a
    Redis shutting down between the TCP connect and the reply to AUTH/SELECT."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.front.dropped += 1
        assert self.transport is not None
        self.transport.loseConnection()

    front: _Front


class _Front(ServerFactory):
    """The first ``drops`` connections are dropped at setup, then forwards to Redis."""

    def __init__(self, port: int, drops: int) -> None:
        self.forward = ProxyFactory("127.0.0.1", port)
        self.drops = drops
        self.dropped = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:  # noqa: N802
        if self.drops > 0:
            self.drops -= 1
            p = _DropOnFirstBytes()
            p.front = self
            return p
        return self.forward.buildProtocol(addr)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(str(event.get("log_format")))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_during_setup_is_retried_not_given_up(
    redis_server: RedisServer, warnings: list[str],  # noqa: F811
) -> None:
    """txredisapi stopped reconnecting for good when SELECT failed, so a Redis restart
    at the wrong moment left the queue down until the daemon restarted."""
    front = _Front(redis_server.port, drops=6)
    port: IListeningPort = reactor.listenTCP(0, front, interface="127.0.0.1")
    address = cast(IPv4Address, port.getHost())
    queue = RedisQueue(reactor, "127.0.0.1", address.port, prefix="reconnects", max_retry_delay=0.2)
    try:
        await queue.start()  # within its 5 s timeout, after the drops
        assert front.dropped >= 2  # both the pool's and the subscriber's setups were dropped
        assert await queue.push(QueueItem("c1", "app", "/p"))
        held = await queue.reserve(30)
        assert held is not None and held.call_id == "c1"
        await queue.ack(held)
        started = [w for w in warnings if "connection setup failed" in w]
        assert 1 <= len(started) <= 2  # once per outage and connection kind, not per try
    finally:
        await queue.close()
        await cast(Any, port.stopListening())
