"""The reactor side of a long-lived container's attach socket: the engine's
multiplexed stream (``drivers.stream``) decoded into an ``IContainerStream``, over a
``SocketConnection``, and the handle that writes to the container's stdin."""

from __future__ import annotations

import socket
from typing import Any

from zope.interface import implementer

from ironfunctions.drivers.connection import SocketConnection
from ironfunctions.drivers.interface import IAttachedContainer, IContainerStream
from ironfunctions.drivers.stream import STDOUT, Demuxer


@implementer(IContainerStream)
class DemuxedStream:
    """Takes the raw attach bytes as ``stdout_received`` and passes each frame on to
    ``stream`` as stdout or stderr."""

    def __init__(self, stream: IContainerStream) -> None:
        self._stream = stream
        self._demuxer = Demuxer()
        self._closed = False

    def stdout_received(self, data: bytes) -> None:
        stream = self._stream
        for kind, payload in self._demuxer.feed(data):
            if kind == STDOUT:
                stream.stdout_received(payload)
            else:
                stream.stderr_received(payload)

    def stderr_received(self, data: bytes) -> None:
        self._stream.stderr_received(data)

    def stream_closed(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.stream_closed()


def adopt(sock: socket.socket, stream: IContainerStream, reactor: Any) -> SocketConnection:
    """Read ``sock`` (a hijacked attach connection, taken over from docker-py) on the
    reactor, feeding ``stream``."""
    # docker-py's response object still references ``sock``: take its descriptor over
    # so that nothing else closes it.
    conn = socket.socket(sock.family, socket.SOCK_STREAM, fileno=sock.detach())
    conn.setblocking(False)
    demuxed = DemuxedStream(stream)
    connection = SocketConnection(conn, demuxed, demuxed.stream_closed, reactor)
    connection.startReading()  # type: ignore[no-untyped-call]
    return connection


@implementer(IAttachedContainer)
class AttachedContainer:
    def __init__(self, container_id: str, connection: SocketConnection) -> None:
        self.container_id = container_id
        self._connection = connection

    def write(self, data: bytes) -> None:
        self._connection.write(data)

    def close_stdin(self) -> None:
        self._connection.loseWriteConnection()  # type: ignore[no-untyped-call]
