"""The blocking side of a cold run: feed stdin and collect the demultiplexed output of
an attach socket in one thread (``DockerDriver.run`` calls it on its run pool)."""

from __future__ import annotations

import selectors
import socket
import time
from typing import Callable

from ironfunctions.drivers.stream import STDOUT, Demuxer

_READ_SIZE = 65536


class PumpResult:
    __slots__ = ("stdout", "stderr", "stdout_truncated", "stderr_truncated", "timed_out",
                 "stderr_lost_bytes", "stderr_lost_lines")

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.stdout_truncated = False
        self.stderr_truncated = False
        self.timed_out = False
        self.stderr_lost_bytes = 0  # stderr beyond its limit: counted, never kept
        self.stderr_lost_lines = 0


def pump(
    sock: socket.socket,
    stdin: bytes,
    deadline: float,
    stdout_limit: int,
    stderr_limit: int,
    on_overflow: Callable[[], None],
) -> PumpResult:
    """Write ``stdin`` and read the demultiplexed output until the engine closes the
    stream, in one thread (writing while reading, so neither side can block the other),
    or until ``deadline``. Output over a limit is dropped; stdout over its limit calls
    ``on_overflow`` (which kills the container from another thread) and the stream is
    drained to its end meanwhile: the engine may not finish a kill while its copy of
    the output to us is blocked."""
    result = PumpResult()
    stdout, stderr = bytearray(), bytearray()
    demuxer = Demuxer()
    sock.setblocking(False)
    pending = memoryview(stdin)
    selector = selectors.DefaultSelector()
    if pending:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    else:
        sock.shutdown(socket.SHUT_WR)
        selector.register(sock, selectors.EVENT_READ)
    writing = bool(pending)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            events = selector.select(remaining)
            if not events:
                continue
            mask = events[0][1]
            if writing and mask & selectors.EVENT_WRITE:
                try:
                    sent = sock.send(pending[:_READ_SIZE])
                    pending = pending[sent:]
                except BlockingIOError:
                    pass
                except OSError:  # the container exited without reading it all
                    pending = pending[:0]
                if not pending:
                    writing = False
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    selector.modify(sock, selectors.EVENT_READ)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(_READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    break
                for stream, payload in demuxer.feed(data):
                    if stream == STDOUT:
                        if len(stdout) + len(payload) > stdout_limit:
                            if not result.stdout_truncated:
                                result.stdout_truncated = True
                                on_overflow()
                            stdout += payload[: max(0, stdout_limit - len(stdout))]
                        else:
                            stdout += payload
                    else:
                        if len(stderr) + len(payload) > stderr_limit:
                            # Kept up to the limit while reading; the rest only counted
                            # (a function writing 200 MB costs us 1 MiB).
                            result.stderr_truncated = True
                            room = max(0, stderr_limit - len(stderr))
                            stderr += payload[:room]
                            result.stderr_lost_bytes += len(payload) - room
                            result.stderr_lost_lines += payload.count(b"\n", room)
                        else:
                            stderr += payload
    finally:
        selector.close()
    result.stdout = bytes(stdout)
    result.stderr = bytes(stderr)
    return result
