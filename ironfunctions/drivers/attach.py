"""The reactor side of a long-lived container: its adopted attach socket as a Twisted
protocol feeding an ``IContainerStream``, and the handle that writes to its stdin."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.drivers.interface import IAttachedContainer, IContainerStream
from ironfunctions.drivers.stream import STDOUT, Demuxer


@implementer(IHalfCloseableProtocol)
class AttachProtocol(Protocol):
    """Demultiplexes an adopted attach stream into an ``IContainerStream``."""

    def __init__(self, stream: IContainerStream) -> None:
        self._stream = stream
        self._demuxer = Demuxer()
        self._closed = False

    def dataReceived(self, data: bytes) -> None:
        for kind, payload in self._demuxer.feed(data):
            if kind == STDOUT:
                self._stream.stdout_received(payload)
            else:
                self._stream.stderr_received(payload)

    def readConnectionLost(self) -> None:
        self._close()
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.stream_closed()


class OneProtocolFactory(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


@implementer(IAttachedContainer)
class AttachedContainer:
    def __init__(self, container_id: str, protocol: AttachProtocol) -> None:
        self.container_id = container_id
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        assert self._protocol.transport is not None
        self._protocol.transport.write(data)

    def close_stdin(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.loseWriteConnection()  # type: ignore[attr-defined]
