"""Docker's multiplexed attach stream, decoded incrementally (pure).

Without a TTY the engine frames the container's output: an 8-byte header
``[stream, 0, 0, 0, size (uint32 big-endian)]`` then ``size`` bytes, where stream 1 is
stdout and 2 is stderr. Used by the blocking cold path and the reactor-side hot path.
"""

from __future__ import annotations

import struct

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxL")


class Demuxer:
    """Feed raw bytes with ``feed``; get back ``(stream, payload)`` frames as they
    complete. Keeps at most one partial frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return every frame completed by it, in order."""
        buffer = self._buffer
        if not buffer and len(data) >= _HEADER.size:
            # The usual case on a hot path: one whole frame per read, nothing held back.
            kind, size = _HEADER.unpack_from(data)
            if len(data) == _HEADER.size + size:
                return [(kind, data[_HEADER.size:])]
        buffer += data
        frames: list[tuple[int, bytes]] = []
        offset = 0
        size_of_header = _HEADER.size
        while len(buffer) - offset >= size_of_header:
            stream, size = _HEADER.unpack_from(buffer, offset)
            end = offset + size_of_header + size
            if end > len(buffer):
                break
            frames.append((stream, bytes(buffer[offset + size_of_header:end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)


def frame(stream: int, payload: bytes) -> bytes:
    """Encode one frame (for fakes and tests)."""
    return _HEADER.pack(stream, len(payload)) + payload
