"""Call ids: ULIDs (26 chars of Crockford base32: 48-bit ms time + 80 random bits).

Unique, URL-safe and sortable by creation time; ids made in the same millisecond by
one generator stay increasing (the random part is incremented), so a node's ids sort
in the order it made them.
"""

from __future__ import annotations

import base64
import os
import random
from typing import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_MAX = (1 << 80) - 1
# RFC 4648 base32 -> Crockford's alphabet: 80 random bits are exactly 16 characters,
# so the C-coded b32encode does the encoding of the random part.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def encode(value: int, length: int) -> str:
    """``value`` in Crockford base32, left-padded to ``length`` characters."""
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


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
            random_bytes = random.Random(os.urandom(32)).randbytes
        self._now = now
        self._random_bytes = random_bytes
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
                rand = int.from_bytes(self._random_bytes(10), "big")
            else:
                rand = self._last_random + 1
        else:
            rand = int.from_bytes(self._random_bytes(10), "big")
        if ms != self._last_ms:
            self._time_part = encode(ms, 10)  # the same for every id of this millisecond
        self._last_ms, self._last_random = ms, rand
        return self._time_part + base64.b32encode(rand.to_bytes(10, "big")).translate(_TO_CROCKFORD).decode()
