"""Call ids: ULIDs (26 chars of Crockford base32: 48-bit ms time + 80 random bits).

Unique, URL-safe and sortable by creation time; ids made in the same millisecond by
one generator stay increasing (the random part is incremented), so a node's ids sort
in the order it made them.
"""

from __future__ import annotations

import os
import random
from typing import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two characters: ids are encoded two characters per step.
# (base64.b32encode is pure Python on 3.11 and costs more than the rest of an id.)
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_MAX = (1 << 80) - 1


def encode(value: int, length: int) -> str:
    """``value`` in Crockford base32, left-padded to ``length`` characters."""
    parts = []
    for _ in range(length >> 1):
        parts.append(_PAIRS[value & 1023])
        value >>= 10
    if length & 1:
        parts.append(_ALPHABET[value & 31])
    return "".join(reversed(parts))


def _encode_time(ms: int) -> str:
    """The 50-bit time part as 10 characters (``encode(ms, 10)``, unrolled)."""
    pairs = _PAIRS
    return (
        pairs[(ms >> 40) & 1023] + pairs[(ms >> 30) & 1023] + pairs[(ms >> 20) & 1023]
        + pairs[(ms >> 10) & 1023] + pairs[ms & 1023]
    )


def _encode_random(rand: int) -> str:
    """The 80 random bits as 16 characters (``encode(rand, 16)``, unrolled)."""
    pairs = _PAIRS
    high, low = rand >> 40, rand & 0xFFFFFFFFFF  # two 40-bit halves: cheaper shifts
    return (
        pairs[high >> 30] + pairs[(high >> 20) & 1023] + pairs[(high >> 10) & 1023] + pairs[high & 1023]
        + pairs[low >> 30] + pairs[(low >> 20) & 1023] + pairs[(low >> 10) & 1023] + pairs[low & 1023]
    )


class CallIds:
    """Makes call ids. ``now`` gives seconds since the epoch (a clock's ``seconds``),
    ``random_bytes(n)`` gives n random bytes; both injectable for tests.

    By default the random part comes from a per-generator PRNG seeded from
    ``os.urandom``: ids must be unique, not secret (they grant nothing), and a
    syscall per call is measurable on the hot path."""

    def __init__(
        self,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        if random_bytes is None:
            bits = random.Random(os.urandom(32)).getrandbits
            self._random: Callable[[], int] = lambda: bits(80)
        else:
            self._random = lambda: int.from_bytes(random_bytes(10), "big")
        self._now = now
        self._last_ms = -1
        self._last_random = 0
        self._time_part = ""

    def __call__(self) -> str:
        """A new id."""
        ms = int(self._now() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            if self._last_random >= _RANDOM_MAX:
                ms += 1  # astronomically rare: borrow the next millisecond
                rand = self._random()
            else:
                rand = self._last_random + 1
        else:
            rand = self._random()
        if ms != self._last_ms:
            self._time_part = _encode_time(ms)  # the same for every id of this millisecond
        self._last_ms, self._last_random = ms, rand
        return self._time_part + _encode_random(rand)
