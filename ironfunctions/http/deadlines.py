"""How long a client may take: the per-connection deadlines of SPEC §8 "Clients are
bounded", as pure state and one decision (``Deadline.check``), shared by the lean
``/r/`` channel and twisted.web's channel.

A connection is in one phase at a time, and each phase has its bound:

- ``NEW``: connected, nothing received yet. Its first head is due within
  ``HEADER_TIMEOUT`` of the connection (as Go's ``ReadHeaderTimeout`` and nginx's
  ``client_header_timeout``); then it is closed without a word (nothing to answer).
- ``HEAD``: a request head has begun; all of it must arrive within ``HEADER_TIMEOUT``
  of its first byte, however steadily it trickles in (the idle timer of old restarted
  on every byte, so one header line every 5 s held a connection for ever): then 408.
- ``BODY``: the head is in, the body is arriving; over each window of ``window``
  seconds it must average ``BODY_MIN_RATE`` bytes a second: else 408.
- ``BUSY``: the request is being answered; no client bound (the route's timeout
  bounds the call).
- ``IDLE``: a keep-alive connection between requests; closed after ``IDLE_TIMEOUT``.
- ``CLOSING``: we closed politely; a client that does not read would keep the close
  waiting on its send buffer, so it is aborted after ``abort_after`` (as twisted.web).

No timer per connection or per request: a node-wide tick (``http/watchdog.py``) calls
``check`` on every connection about once a second, and the channels only note phase
changes (an attribute write, and the time when a phase begins).
"""

from __future__ import annotations

import enum

import attrs

NEW, HEAD, BODY, BUSY, IDLE, CLOSING = range(6)


@attrs.frozen
class ClientLimits:
    """The bounds (seconds, bytes per second) from ``Config``: ``HEADER_TIMEOUT``,
    ``IDLE_TIMEOUT``, ``BODY_MIN_RATE`` (0: no minimum)."""

    header_timeout: float = 20.0
    idle_timeout: float = 60.0
    body_min_rate: int = 1024
    window: float = 10.0  # BODY_MIN_RATE is averaged over windows this long
    abort_after: float = 15.0  # twisted.web's HTTPChannel.abortTimeout


class Verdict(enum.Enum):
    """What ``check`` found: the channel acts on it."""

    CLOSE = "close"  # new or idle too long: close, nothing to say
    HEAD_TIMEOUT = "head"  # 408
    BODY_TOO_SLOW = "body"  # 408
    ABORT = "abort"  # a polite close did not complete: abort


class Deadline:
    """One connection's phase and when it began; see the module docstring."""

    __slots__ = ("phase", "since", "window_bytes")

    def __init__(self, now: float) -> None:
        self.phase = NEW
        self.since = now  # for BODY: the start of the current window
        self.window_bytes = 0  # body bytes received in the current window

    def head(self, now: float) -> None:
        """The first byte of a request head arrived."""
        self.phase, self.since = HEAD, now

    def body(self, now: float) -> None:
        """The head is complete and a body follows."""
        self.phase, self.since, self.window_bytes = BODY, now, 0

    def busy(self) -> None:
        """The request is complete and being answered."""
        self.phase = BUSY

    def idle(self, now: float) -> None:
        """Answered; waiting for the next request on a keep-alive connection."""
        self.phase, self.since = IDLE, now

    def closing(self, now: float) -> None:
        """Closed by us: waiting for the transport to let go."""
        self.phase, self.since = CLOSING, now

    def check(self, now: float, limits: ClientLimits) -> Verdict | None:
        """What to do at ``now``, or None. Moves a body's window on when it is full and
        was fast enough."""
        phase = self.phase
        elapsed = now - self.since
        if phase == BUSY:
            return None
        if phase == HEAD:
            return Verdict.HEAD_TIMEOUT if elapsed >= limits.header_timeout else None
        if phase == BODY:
            if elapsed < limits.window or not limits.body_min_rate:
                return None
            if self.window_bytes < limits.body_min_rate * elapsed:
                return Verdict.BODY_TOO_SLOW
            self.since, self.window_bytes = now, 0
            return None
        if phase == IDLE:
            return Verdict.CLOSE if elapsed >= limits.idle_timeout else None
        if phase == NEW:
            return Verdict.CLOSE if elapsed >= limits.header_timeout else None
        return Verdict.ABORT if elapsed >= limits.abort_after else None
