"""A lean HTTP/1.1 server channel for function invocations, in front of twisted.web.

A hot call costs the daemon a few hundred microseconds of CPU, and twisted.web's
general machinery (a line callback per header, a ``Request`` with its header objects,
resource traversal, a producer per request) was a quarter of it. ``FastChannel``
answers the common case itself: a well-formed HTTP/1.1 request to ``/r/`` with no body
or a ``Content-Length`` one. It frames the request, hands it to the ``Invoker``
(``runner/invoker.py``, which ``InvokeResource`` shares) and writes the reply in one write.

Everything else goes to twisted.web, untouched: the first request on a connection that
is not that simple (another path, chunked, ``Expect``, ``Upgrade``, HTTP/1.0, a
duplicate or odd ``Content-Length``, a body over ``MAX_REQUEST_SIZE``, an oversized
or malformed head...) hands the connection over, from that request's first byte, to an
ordinary twisted.web channel, which keeps it for good. So this code only ever decides
*whether* a request is simple; what to answer to an unusual or bad one is twisted.web's.
The framing it accepts is unambiguous by construction: CRLF line ends only, token
header names, no folded lines, one all-digits ``Content-Length``, no
``Transfer-Encoding``.

Requests are answered one at a time per connection, in order (pipelining works);
reading pauses while the transport's send buffer is full or too much is buffered, so a
client that does not read cannot grow the daemon's memory.

The channel knows its site only through ``ChannelSite`` (what ``http/site.py``'s
``FastSite`` provides), so this module does not import the site's.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from ironfunctions.http.channelsite import ChannelSite
from ironfunctions.http.deadlines import BODY, BUSY, HEAD, IDLE, Deadline, Verdict
from ironfunctions.http.encode import encode_reply
from ironfunctions.http.headers import TOKEN, canonical_name
from ironfunctions.http.hosts import authority, peer_host
from ironfunctions.http.refusal import SLOW_BODY, SLOW_HEAD, canned
from ironfunctions.http.writethrough import write_through
from ironfunctions.runner.invoker import Invocation, Reply

MAX_HEAD = 16 * 1024  # request line and headers; a longer head goes to twisted.web
MAX_HEADERS = HTTPChannel.maxHeaders  # more: twisted.web's 400
_TARGET = re.compile(rb"/r/[!-~]*")  # visible ASCII only
_HANDED_OFF = frozenset({"Transfer-Encoding", "Expect", "Upgrade", "Http2-Settings"})

log = Logger()
access_log = Logger(namespace="ironfunctions.access")


class _Request:
    """A framed request waiting for the rest of its body."""

    __slots__ = ("method", "target", "headers", "host", "close", "body_start", "end")

    def __init__(self, method: bytes, target: bytes, headers: dict[str, list[str]], host: str | None,
                 close: bool, body_start: int, end: int) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.host = host
        self.close = close
        self.body_start = body_start
        self.end = end


class FastChannel(Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, site: ChannelSite, addr: IAddress | None) -> None:
        self._site = site
        self._addr = addr
        self._buffer = bytearray()
        self._pending: _Request | None = None  # head parsed, body incomplete
        self._busy = False  # a request is being answered
        self._processing = False  # inside _process (replies can come back synchronously)
        self._send_paused = False  # the transport's send buffer is full
        self._read_paused = False  # we stopped reading: enough is buffered
        self._closing = False
        self._inner: Protocol | None = None  # the twisted.web channel after a hand-over
        self._local = ""
        self._peer: str | None = None  # whose X-Forwarded-* are believed (http/proxies.py)
        self._secure = False
        self._counted = False  # in the site's open_connections
        self._charged = 0  # body bytes of the request in hand, held in the site's budget
        self.deadline = Deadline(0.0)

    # -- connection

    def connectionMade(self) -> None:
        self._site.open_connections += 1
        self._counted = True
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._local = authority(transport.getHost())
        self._peer = peer_host(transport.getPeer())
        self._secure = ISSLTransport.providedBy(transport)
        self.deadline = Deadline(self._site.clock.seconds())
        self._site.watchdog.watch(self)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._closing:
            return
        self._buffer += data
        if self.deadline.phase == BODY:
            self.deadline.window_bytes += len(data)
        if self._busy or self._send_paused:
            if len(self._buffer) > self._site.max_buffered and not self._read_paused:
                self._read_paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 (Twisted API)
        self._closing = True
        self._buffer = bytearray()
        self._pending = None
        if self._counted:
            self._counted = False
            self._site.open_connections -= 1
        self._release()
        self._site.watchdog.unwatch(self)
        if self._inner is not None:
            self._inner.connectionLost(reason)

    def expire(self, verdict: Verdict) -> None:
        """Past a deadline (``http/deadlines.py``, checked by the site's watchdog): a
        slow head or body gets 408 (nothing of that request has been answered: no
        request is answered before it is complete), an idle connection is closed,
        and one whose close does not complete (the client reads nothing) is aborted,
        as twisted.web does."""
        transport: Any = self.transport
        if verdict is Verdict.ABORT:
            transport.abortConnection()
            return
        if verdict is not Verdict.CLOSE:
            transport.write(canned(408, SLOW_HEAD if verdict is Verdict.HEAD_TIMEOUT else SLOW_BODY))
        self._closing = True
        self._buffer = bytearray()
        self.deadline.closing(self._site.clock.seconds())
        transport.loseConnection()

    def _release(self) -> None:
        """Give the body bytes of the request in hand back to the budget."""
        if self._charged:
            self._site.budget.release_memory(self._charged)
            self._charged = 0

    # -- IPushProducer: the transport's send buffer

    def pauseProducing(self) -> None:
        self._send_paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._send_paused = False
        if not self._read_paused:
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._process()

    def stopProducing(self) -> None:
        pass  # the connection is going away; connectionLost follows

    # -- requests

    def _process(self) -> None:
        """Start answering buffered requests, one at a time."""
        if self._processing:
            return  # a reply came back synchronously: the loop below goes on
        self._processing = True
        try:
            while (self._buffer and not self._busy and not self._send_paused and not self._closing
                   and self._inner is None):
                request = self._pending or self._frame()
                if request is None:
                    break
                if len(self._buffer) < request.end:
                    self._pending = request  # wait for the rest of the body
                    break
                self._pending = None
                self._start(request)
        finally:
            self._processing = False
        if self._inner is None and not self._closing:
            self._note_phase()
        # Reading pauses only while a call is in flight (or the send buffer is full):
        # with neither, the request at the front may need more bytes, so read on.
        if self._read_paused and not self._busy and self._inner is None:
            self._read_paused = False
            if not self._send_paused and not self._closing:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    def _note_phase(self) -> None:
        """Tell the deadline what this connection waits for now (its time is read
        only when the phase changes: one clock read per request)."""
        deadline = self.deadline
        phase = deadline.phase
        if self._busy:
            if phase != BUSY:
                deadline.busy()
        elif self._pending is not None:
            if phase != BODY:
                deadline.body(self._site.clock.seconds())
        elif self._buffer:
            if phase != HEAD:
                deadline.head(self._site.clock.seconds())
        elif phase != IDLE:
            deadline.idle(self._site.clock.seconds())

    def _frame(self) -> _Request | None:
        """The request at the front of the buffer, if this channel answers it; None if
        its head is incomplete, or after handing the connection to twisted.web."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # Too long, or a bare LF (the head may end at "\n\n"): twisted.web decides.
            if len(buffer) > MAX_HEAD or buffer.count(b"\n") != buffer.count(b"\r\n"):
                self._hand_over()
            return None
        if end > MAX_HEAD:
            self._hand_over()
            return None
        head = bytes(buffer[:end])
        lines = head.split(b"\r\n")
        if len(lines) > MAX_HEADERS + 1:
            self._hand_over()
            return None
        # CRLF line ends only, and no NUL (RFC 9110 §5.5): else twisted.web decides.
        if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1 or b"\0" in head:
            self._hand_over()
            return None
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not _TARGET.fullmatch(parts[1]) \
                or not TOKEN.fullmatch(parts[0]):
            self._hand_over()
            return None
        headers: dict[str, list[str]] = {}
        length = -1
        close = False
        for line in lines[1:]:
            raw_name, colon, raw_value = line.partition(b":")
            name = canonical_name(raw_name) if colon else None
            if name is None:  # no colon, a folded line, a space before the colon...
                self._hand_over()
                return None
            value = raw_value.strip(b" \t").decode("latin-1")
            key = name.decode("latin-1")
            if key == "Content-Length":
                if length >= 0 or not value.isdigit() or not value.isascii() or len(value) > 15 \
                        or int(value) > self._site.max_request_size:  # (int() refuses 4,300+ digits)
                    self._hand_over()
                    return None
                length = int(value)
            elif key == "Connection":
                close = close or "close" in [token.strip() for token in value.lower().split(",")]
            elif key in _HANDED_OFF:
                self._hand_over()
                return None
            values = headers.get(key)
            if values is None:
                headers[key] = [value]
            else:
                values.append(value)
        if length > 0:
            # The body is held in memory until the call is answered: within the node's
            # MAX_BUFFERED, else twisted.web spools it to disk (http/site.py).
            if not self._site.budget.take_memory(length):
                self._hand_over()
                return None
            self._charged = length
        host = headers.get("Host")
        body_start = end + 4
        return _Request(parts[0], parts[1], headers, host[-1] if host else None, close,
                        body_start, body_start + max(length, 0))

    def _start(self, request: _Request) -> None:
        buffer = self._buffer
        body = bytes(buffer[request.body_start:request.end]) if request.end > request.body_start else b""
        del buffer[:request.end]
        self._busy = True
        method = request.method.decode("ascii")
        target = request.target
        path = target.partition(b"?")[0]
        invocation = Invocation(method, path, target, request.headers, body, request.host, self._local,
                                self._secure, self._peer)
        d = Deferred.fromCoroutine(self._site.invoker.invoke(invocation))
        d.addCallback(self._reply, request, method)
        d.addErrback(self._reply_failed)

    def _reply(self, reply: Reply, request: _Request, method: str) -> None:
        self._busy = False
        self._release()
        if self._closing:
            return
        transport: Any = self.transport
        write_through(transport, encode_reply(reply, self._site.date(), method == "HEAD", request.close))
        if self._site.log_access:
            access_log.debug("{method} {uri} {code}", method=method,
                             uri=request.target.decode("latin-1"), code=reply.code)
        if request.close:
            self._closing = True
            self.deadline.closing(self._site.clock.seconds())
            transport.loseConnection()
            return
        self._process()

    def _reply_failed(self, failure: Failure) -> None:
        """Only a bug gets here (``Invoker.invoke`` never raises): log it and close."""
        log.failure("Answering an invocation failed", failure)
        self._busy = False
        self._release()
        self._closing = True
        self.deadline.closing(self._site.clock.seconds())
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _hand_over(self) -> None:
        """Give the connection, from the front of the buffer on, to twisted.web."""
        transport: Any = self.transport
        transport.unregisterProducer()  # the twisted.web channel registers itself
        self._site.watchdog.unwatch(self)  # the twisted.web channel is watched itself
        inner = self._site.build_web_channel(self._addr)
        self._inner = inner
        inner.makeConnection(transport)
        if self._read_paused:
            self._read_paused = False
            transport.resumeProducing()
        data, self._buffer = bytes(self._buffer), bytearray()
        inner.dataReceived(data)
