"""``BodyBudget``: request body bytes held across all connections (SPEC §8, issue 13).

Up to ``MAX_BUFFERED`` bytes of bodies are held in memory; beyond it bodies are
spooled to temporary files (as twisted.web does with bodies over 100 KB), up to
``MAX_SPOOLED`` bytes on disk; beyond that a new body is refused (503). A request
takes its share when its head is read, for its declared length (for a chunked body,
for the largest body the node accepts), and gives it back when it is answered or its
connection goes: so a request admitted is never dropped or paused half way, and a
stalled upload costs its own share and no one else's. Both channels use one budget:
the lean ``/r/`` channel holds bodies in memory only, and hands a request whose body
does not fit to twisted.web, whose ``LimitedRequest`` (``http/site.py``) spools it.

Both figures are the node's: with worker processes (``WORKERS`` > 1) each worker
holds its share of them (``workers/shares.py``: ``MAX_BUFFERED`` / workers, the first
ones one byte more where it does not divide), so the node's bodies stay within them
without a counter shared between processes on every request.

Pure: counters and comparisons, no I/O.
"""

from __future__ import annotations


class BodyBudget:
    """The node's body bytes in memory and on disk; see the module docstring."""

    def __init__(self, max_buffered: int, max_spooled: int) -> None:
        self.max_buffered = max_buffered
        self.max_spooled = max_spooled
        self.in_memory = 0
        self.on_disk = 0

    def take_memory(self, size: int) -> bool:
        """Hold ``size`` bytes in memory, if they fit."""
        if self.in_memory + size > self.max_buffered:
            return False
        self.in_memory += size
        return True

    def take_disk(self, size: int) -> bool:
        """Spool ``size`` bytes to disk, if they fit."""
        if self.on_disk + size > self.max_spooled:
            return False
        self.on_disk += size
        return True

    def release_memory(self, size: int) -> None:
        self.in_memory -= size

    def release_disk(self, size: int) -> None:
        self.on_disk -= size
