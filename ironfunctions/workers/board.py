"""How many client connections each worker process holds, in a small shared file.

The workers of a node accept on one listening socket (``workers/adopted.py``). Left to
itself the kernel gives a burst of new connections to whichever worker wakes first, and
Twisted accepts up to a hundred at a time: a load balancer's or wrk's 8 keep-alive
connections opened at once land 8/0 or 6/2, and stay so, leaving a core idle. So each
worker writes its count of open connections to its slot of this board (8 bytes, one
writer per slot) and reads the others' before it accepts: one holding more than the
least loaded worker leaves the new connection to that one for a moment
(``workers/adopted.py``). Readers only ever see a count a little old, which is all a
balance needs.
"""

from __future__ import annotations

import mmap
import os
import struct

_SLOT = struct.Struct("=q")
# A slot's value when it is not a count of connections:
NOT_ACCEPTING = -1  # its worker is gone (or not started yet)
STARTING = -2  # its worker accepts, but its backends are not ready: a ready one goes first


class ConnectionBoard:
    """The board at ``path`` with ``workers`` slots; this process writes slot ``index``
    (None: the parent, which only creates and resets slots)."""

    def __init__(self, path: str, workers: int, index: int | None = None) -> None:
        self.workers = workers
        self.index = index
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < workers * _SLOT.size:
                os.ftruncate(fd, workers * _SLOT.size)
            self._map = mmap.mmap(fd, workers * _SLOT.size)
        finally:
            os.close(fd)

    def publish(self, count: int) -> None:
        """This worker holds ``count`` connections now (or is ``STARTING``)."""
        assert self.index is not None
        _SLOT.pack_into(self._map, self.index * _SLOT.size, count)

    def reset(self, index: int) -> None:
        """Worker ``index`` is gone, or not taking connections yet: it takes no part."""
        _SLOT.pack_into(self._map, index * _SLOT.size, NOT_ACCEPTING)

    def counts(self) -> list[int]:
        return [_SLOT.unpack_from(self._map, i * _SLOT.size)[0] for i in range(self.workers)]

    def least_loaded(self) -> bool:
        """Whether no other ready worker holds fewer connections than this one (a
        ``STARTING`` worker: whether no other is ready)."""
        assert self.index is not None
        counts = self.counts()
        mine = counts[self.index]
        ready = [c for i, c in enumerate(counts) if i != self.index and c >= 0]
        if mine == STARTING:
            return not ready
        return all(mine <= c for c in ready)

    def close(self) -> None:
        self._map.close()
