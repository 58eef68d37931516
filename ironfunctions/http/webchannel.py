"""``BoundedHTTPChannel``: twisted.web's ``HTTPChannel`` held to the same client bounds
as the lean channel (SPEC §8, ``http/deadlines.py``).

twisted.web's own timeout is an idle timer restarted by every byte, so a head sent one
line every few seconds never ends; here it is off, and the connection's phases (head,
body, answering, idle) are noted for the site's ``Watchdog`` instead, which closes a
slow head or body with a 408, and an idle connection.

A head with a bare LF line end gets a 400 (twisted.web's ``LineReceiver`` splits on
CRLF only, so such a head was never complete and met silence until the timeout). RFC
9112 §2.2 lets a server accept a bare LF; refusing it leaves no doubt about where a
head ends, which a proxy in front might read otherwise.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from ironfunctions.http.deadlines import BODY, BUSY, HEAD, IDLE, NEW, Deadline, Verdict
from ironfunctions.http.refusal import SLOW_BODY, SLOW_HEAD, canned

BARE_LF = "Bad Request: a line of the request head ends in a bare LF"


def pending_line(channel: HTTPChannel) -> bytes:
    """The part line a ``LineReceiver`` holds (its private ``_buffer``: the one place
    we read it; ``tests/unit/test_client_bounds.py`` breaks if it moves)."""
    buffered = getattr(channel, "_buffer", b"")
    return buffered if isinstance(buffered, bytes) else b""


class BoundedHTTPChannel(HTTPChannel):
    """See the module docstring. ``site`` (set by ``Site.buildProtocol``) provides
    ``watchdog``."""

    site: Any
    timeOut = None  # twisted.web's idle timer: replaced by the watchdog
    deadline: Deadline

    def connectionMade(self) -> None:
        self.timeOut = None
        super().connectionMade()  # type: ignore[no-untyped-call]
        watchdog = self.site.watchdog
        self.deadline = Deadline(watchdog.clock.seconds())
        self._ended = False  # we answered and are closing: what arrives is not parsed
        watchdog.watch(self)

    def _now(self) -> float:
        return float(self.site.watchdog.clock.seconds())

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        deadline = self.deadline
        if deadline.phase == NEW or deadline.phase == IDLE:
            deadline.head(self._now())
        elif deadline.phase == BODY:
            deadline.window_bytes += len(data)
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if self.line_mode and not self._ended and not self.transport.disconnecting:  # type: ignore[union-attr]
            line = pending_line(self)
            if b"\n" in line and b"\n" in line.replace(b"\r\n", b""):
                self._bad_request()

    def lineReceived(self, line: bytes) -> None:
        if self._ended:
            return
        if b"\n" in line:
            self._bad_request()
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def _bad_request(self) -> None:
        self._ended = True
        self.transport.write(canned(400, BARE_LF))  # type: ignore[union-attr]
        self.loseConnection()

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()  # type: ignore[no-untyped-call]
        if self.length != 0 and self.deadline.phase == HEAD:
            self.deadline.body(self._now())

    def allContentReceived(self) -> None:
        self.deadline.busy()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        # Before twisted.web goes on to a pipelined request (synchronously).
        self.deadline.idle(self._now())
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def loseConnection(self) -> None:
        if self.deadline.phase != BUSY:
            self.deadline.closing(self._now())
        super().loseConnection()  # type: ignore[no-untyped-call]

    def expire(self, verdict: Verdict) -> None:
        """See ``FastChannel.expire``; a request whose answer has begun is just closed."""
        transport: Any = self.transport
        if verdict is Verdict.ABORT:
            transport.abortConnection()
            return
        if verdict is not Verdict.CLOSE and not any(r.startedWriting for r in self.requests):
            transport.write(canned(408, SLOW_HEAD if verdict is Verdict.HEAD_TIMEOUT else SLOW_BODY))
        self._ended = True
        self.deadline.closing(self._now())
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.site.watchdog.unwatch(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
