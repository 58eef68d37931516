"""A stream socket read and written on the reactor with plain ``os.read``/``os.write``.

Hot containers' streams (the engine's attach socket, the bridge's unix socket) carry
one small request and answer per call. Twisted's UNIX transport reads with ``recvmsg``
and parses ancillary data on every read, and queues every write for the next poll:
per call that costs more than the bytes themselves. This ``FileDescriptor`` reads with
``os.read`` and writes at once when nothing is queued (``writethrough``).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.python.failure import Failure

from ironfunctions.drivers.interface import IContainerStream
from ironfunctions.http.writethrough import write_through

_READ_SIZE = 65536


class SocketConnection(FileDescriptor):
    """A connected, non-blocking stream socket whose bytes go to
    ``stream.stdout_received``; ``on_close`` is called once the connection is gone.
    ``loseWriteConnection`` half-closes it (the function's stdin ends)."""

    def __init__(
        self, sock: socket.socket, stream: IContainerStream, on_close: Callable[[], None], reactor: Any
    ) -> None:
        super().__init__(reactor)
        self._sock = sock
        self._fd = sock.fileno()
        self._stream = stream
        self._on_close = on_close
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:  # noqa: N802 (Twisted API)
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self._stream.stdout_received(data)
        return None

    def write(self, data: bytes) -> None:
        """Write at once when nothing is queued (saves a trip through the reactor
        per call); queue the rest as any ``FileDescriptor`` does."""
        write_through(self, data, super().write)

    def writeSomeData(self, data: bytes) -> Any:  # noqa: N802 (Twisted API)
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return 0
            return main.CONNECTION_LOST

    def _closeWriteConnection(self) -> None:  # noqa: N802 (Twisted API)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self._sock.close()
        self._on_close()
