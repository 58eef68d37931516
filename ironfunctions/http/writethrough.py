"""Writing to a Twisted ``FileDescriptor`` at once when nothing is queued.

A plain ``transport.write`` only queues the bytes: the reactor registers the socket for
writing, wakes on the next poll, sends, and unregisters it. For one small write per
call, that round costs more than the send itself, so on the hot path (the client's
connection, a hot container's socket) the bytes go straight to the socket when its
queue is empty; what the socket does not take is queued as usual, so order is kept.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.abstract import FileDescriptor


def write_through(transport: Any, data: bytes, queue: Callable[[bytes], None] | None = None) -> None:
    """Send ``data`` on ``transport`` now if nothing is queued on it, else (and for the
    rest) queue it with ``queue`` (default ``transport.write``). Transports that are
    not file descriptors (TLS, tests' fakes) just get ``write``."""
    if queue is None:
        queue = transport.write
    if (isinstance(transport, FileDescriptor) and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer)):
        written = transport.writeSomeData(data)
        if not isinstance(written, int):
            return  # the connection is gone: its read side will report it
        if written:
            data = data[written:]
    if data:
        queue(data)
