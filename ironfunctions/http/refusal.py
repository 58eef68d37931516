"""What the edge says before any request is framed, and to connections beyond the cap.

``canned(status, message)`` is a whole HTTP/1.1 answer with a JSON error body and
``Connection: close`` (408 for a slow head or body, 400 for a bare-LF head, 503 beyond
the connection cap or the body budget), written straight to the transport.

``BeyondCap`` is the protocol of a connection accepted while the node is at its
connection cap (``http/conncap.py``). It must cost next to nothing and must not let
the node run out of descriptors, yet ``/health`` must still answer there (a balancer
that cannot reach it takes the node out, and the cap is a defence, not a failure of
the node). So the newest ``HEALTH_ROOM`` such connections are checked: their request
line (at most ``_LINE`` bytes, within ``TRIAGE_S``) is read, and a ``GET``/``HEAD
/health`` goes on to an ordinary channel and is answered; anything else is answered 503
with ``Retry-After``. A new connection takes the place of the oldest one being checked,
which is answered 503 at once without its request being read: silent connections
cannot hold the places, and a balancer's check, whose request line follows its
connection at once, is read and answered. The answer is followed by a half close, so that the
client reads it rather than a reset, and the connection is aborted ``LINGER_S``
seconds later if the client has not closed its side. Beyond ``MAX_REFUSING`` such
connections at once (a flood), a new one is aborted at once: its descriptor is back
at the next reactor turn.
"""

from __future__ import annotations

import re
from typing import Any, Protocol as TypingProtocol

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from ironfunctions.http.deadlines import ClientLimits, Deadline, Verdict
from ironfunctions.http.errors import error_answer
from ironfunctions.http.watchdog import Watchdog

HEALTH_ROOM = 8
MAX_REFUSING = 32
TRIAGE_S = 2.0
LINGER_S = 2.0
RETRY_AFTER_S = 5
SLOW_HEAD = "Request head not received in time"
SLOW_BODY = "Request body too slow"
CAP_MESSAGE = "Too many connections to this node; retry later"
_LINE = 256
_HEALTH = re.compile(rb"(GET|HEAD) /health(\?[!-~]*)? HTTP/1\.[01]\r?")


def canned(status: int, message: str, retry_after: int = 1) -> bytes:
    """A complete answer: ``status``, a JSON error, ``Connection: close``."""
    status, headers, body = error_answer(status, message, retry_after=retry_after)
    head = b"".join(b"%s: %s\r\n" % header for header in headers)
    return b"HTTP/1.1 %d %s\r\n%sconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
        status, RESPONSES.get(status, b"Unknown Status"), head, len(body), body)


REFUSED = canned(503, CAP_MESSAGE, RETRY_AFTER_S)


class CapSite(TypingProtocol):
    """What ``BeyondCap`` needs of its site (``http/site.py``'s ``FastSite``)."""

    watchdog: Watchdog
    triage: dict[BeyondCap, None]  # connections beyond the cap being checked for /health, oldest first
    refusing: int  # connections beyond the cap being refused now

    def refused(self) -> None:
        """Count a refusal (metric, rate-limited warning)."""

    def build_channel(self, addr: IAddress | None) -> Protocol:
        """The channel that serves an ordinary connection."""


class _Short(Deadline):
    """A deadline on the short bounds of a connection beyond the cap."""

    __slots__ = ()

    def check(self, now: float, limits: ClientLimits) -> Verdict | None:
        return super().check(now, SHORT_LIMITS)


SHORT_LIMITS = ClientLimits(header_timeout=TRIAGE_S, abort_after=LINGER_S)


class BeyondCap(Protocol):
    """A connection accepted beyond the cap; see the module docstring."""

    def __init__(self, site: CapSite, addr: IAddress | None) -> None:
        self._site = site
        self._addr = addr
        self._triage = False  # in site.triage
        self._refusing = False  # counted in site.refusing
        self._line = b""
        self._inner: Protocol | None = None
        self.deadline: Deadline = _Short(0.0)

    def connectionMade(self) -> None:
        site = self._site
        if len(site.triage) >= HEALTH_ROOM:
            next(iter(site.triage))._refuse()  # the oldest gives its place
        self._triage = True
        site.triage[self] = None
        self.deadline = _Short(site.watchdog.clock.seconds())
        site.watchdog.watch(self)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if not self._triage:
            return  # refused: what it sends is read and dropped while it reads our answer
        self._line += data
        end = self._line.find(b"\n")
        if end < 0 and len(self._line) < _LINE:
            return
        if end >= 0 and _HEALTH.fullmatch(self._line[:end]):
            self._serve()
        else:
            self._refuse()

    def _serve(self) -> None:
        """A health check: an ordinary channel answers it (and counts it)."""
        self._stop_triage()
        self._site.watchdog.unwatch(self)
        transport: Any = self.transport
        inner = self._site.build_channel(self._addr)
        self._inner = inner
        inner.makeConnection(transport)
        data, self._line = self._line, b""
        inner.dataReceived(data)

    def _refuse(self) -> None:
        self._stop_triage()
        site = self._site
        if site.refusing >= MAX_REFUSING:
            site.refused()
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._refusing = True
        site.refusing += 1
        site.refused()
        self.deadline.closing(site.watchdog.clock.seconds())
        transport: Any = self.transport
        transport.write(REFUSED)
        getattr(transport, "loseWriteConnection", transport.loseConnection)()

    def _stop_triage(self) -> None:
        if self._triage:
            self._triage = False
            del self._site.triage[self]

    def expire(self, verdict: Verdict) -> None:
        if self._triage:
            self._refuse()  # no request line within TRIAGE_S
        elif verdict is Verdict.ABORT:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 (Twisted API)
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        self._site.watchdog.unwatch(self)
        self._stop_triage()
        if self._refusing:
            self._refusing = False
            self._site.refusing -= 1
