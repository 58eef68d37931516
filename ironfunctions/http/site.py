"""The HTTP server side: a ``Site`` whose requests refuse oversized bodies, and whose
connections start on the lean ``/r/`` channel of ``ironfunctions.http.channel``.

A body larger than ``MAX_REQUEST_SIZE`` (by Content-Length, or counted while a chunked
body arrives) is not buffered: its bytes are read and dropped, then the client gets a
413 JSON error (from the one error map, ``http/errors.py``). Reading it to the end,
rather than closing at once, lets the client see the answer instead of a connection
reset; a body over 16x the limit closes the connection.
"""

from __future__ import annotations

import io
from typing import Any, overload

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ironfunctions.errors import PayloadTooLarge
from ironfunctions.http.channel import MAX_HEAD, FastChannel, HttpDate
from ironfunctions.http.errors import ErrorAnswer, answer_for
from ironfunctions.runner.invoker import Invoker

_ABORT_FACTOR = 16


class LimitedRequest(Request):
    """A request with a bounded body; see the module docstring."""

    max_request_size = 6 * 1024 * 1024

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)  # type: ignore[no-untyped-call]
        # Twisted asks the socket for its own address (a getsockname syscall) on every
        # request; it cannot change during a connection, so ask once per connection.
        if channel is not None and "getHost" not in vars(channel):
            host = channel.getHost()
            channel.getHost = lambda: host

    def gotLength(self, length: int | None) -> None:
        self._body_size = 0
        self._too_large = length is not None and length > self.max_request_size
        if self._too_large:
            self.content = io.BytesIO()
            if length is not None and length > self.max_request_size * _ABORT_FACTOR:
                self._refuse()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        if not self._too_large and self._body_size > self.max_request_size:
            self._too_large = True
            if self.content is not None:
                self.content.close()
            self.content = io.BytesIO()
        if self._too_large:
            if self._body_size > self.max_request_size * _ABORT_FACTOR:
                self._close()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _close(self) -> None:
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()

    def _too_large_answer(self) -> ErrorAnswer:
        answer = answer_for(PayloadTooLarge(f"Request body too large (limit {self.max_request_size} bytes)"))
        assert answer is not None  # in the map
        return answer

    def _refuse(self) -> None:
        """Answer 413 now and close: the client announced far too much to read it all."""
        transport = self.channel.transport
        if transport is None:  # already disconnected
            return
        status, headers, body = self._too_large_answer()
        head = b"".join([b"%s: %s\r\n" % header for header in headers])
        transport.write(b"HTTP/1.1 %d %s\r\n%sconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
            status, RESPONSES[status], head, len(body), body))
        transport.loseConnection()

    def process(self) -> None:
        if getattr(self, "_too_large", False):
            status, headers, body = self._too_large_answer()
            self.setResponseCode(status)
            for name, value in headers:
                self.setHeader(name, value)  # type: ignore[no-untyped-call]
            self.setHeader(b"connection", b"close")  # type: ignore[no-untyped-call]
            self.write(body)  # type: ignore[no-untyped-call]
            self.finish()  # type: ignore[no-untyped-call]
            return
        super().process()  # type: ignore[no-untyped-call]


class ApiSite(Site):
    """A Site whose access log is a debug-level event (off at the default level: one
    log line per call would cost more than a hot call itself)."""

    log_access = False
    _log = Logger(namespace="ironfunctions.access")

    def log(self, request: Any) -> None:
        if self.log_access:
            self._log.debug(
                "{method} {uri} {code}",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                code=request.code,
            )


class FastSite(ApiSite):
    """A Site whose connections start on a ``FastChannel`` (``ironfunctions.http.channel``):
    it answers simple ``/r/`` requests itself and hands anything else to an ordinary
    twisted.web channel of this site.

    It provides what its channels need of it (``channel.ChannelSite``), and counts
    them: ``open_connections`` is the number of client connections open now (those
    handed to twisted.web included), kept by the channels as they open and close, so
    reading it costs nothing.

    :param invoker: answers ``/r/`` requests (the one ``InvokeResource`` uses).
    :param max_request_size: bodies larger than this go to twisted.web (its 413).
    :param clock: for the idle timeout (``Site.timeOut``) and the Date header.
    """

    def __init__(self, resource: IResource, invoker: Invoker, max_request_size: int, clock: IReactorTime,
                 **kw: Any) -> None:
        super().__init__(resource, **kw)  # type: ignore[no-untyped-call]
        self.invoker = invoker
        self.max_request_size = max_request_size
        self.max_buffered = max_request_size + MAX_HEAD + 4  # the largest request it frames
        self.clock = clock
        self.date = HttpDate(clock)
        self.open_connections = 0

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]  # noqa: N802
        return FastChannel(self, addr)

    def build_web_channel(self, addr: IAddress | None) -> Protocol:
        """An ordinary twisted.web channel, for a connection handed over."""
        channel: Protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        return channel


@overload
def make_site(resource: IResource, max_request_size: int, log_access: bool = False, *,
              invoker: Invoker, clock: IReactorTime) -> FastSite: ...


@overload
def make_site(resource: IResource, max_request_size: int, log_access: bool = False,
              invoker: None = None, clock: IReactorTime | None = None) -> ApiSite: ...


def make_site(resource: IResource, max_request_size: int, log_access: bool = False,
              invoker: Invoker | None = None, clock: IReactorTime | None = None) -> ApiSite:
    """A Site for ``resource`` whose requests are bounded by ``max_request_size``; with
    ``invoker`` (and ``clock``), a ``FastSite`` that answers simple ``/r/`` requests
    on its own lean channel."""

    class _Request(LimitedRequest):
        pass

    _Request.max_request_size = max_request_size
    site: ApiSite
    if invoker is not None:
        if clock is None:
            raise ValueError("a FastSite needs a clock")
        site = FastSite(resource, invoker, max_request_size, clock, requestFactory=_Request)
    else:
        site = ApiSite(resource, requestFactory=_Request)  # type: ignore[no-untyped-call]
    site.log_access = log_access
    site.displayTracebacks = False
    site.noisy = False
    return site
