"""The HTTP server side: a ``Site`` whose requests refuse oversized bodies, and whose
connections start on the lean ``/r/`` channel of ``ironfunctions.http.channel``.

Clients are bounded (SPEC §8): every connection, lean or twisted.web's
(``http/webchannel.py``), is held to ``ClientLimits`` by the site's ``Watchdog``;
request bodies share the site's ``BodyBudget`` (``http/budget.py``: held in memory up to
``MAX_BUFFERED``, then spooled to temporary files up to ``MAX_SPOOLED``, then 503); and
beyond ``max_connections`` open connections a new one is refused
(``http/refusal.py``, the cap's formula in ``http/conncap.py``).

A body larger than ``MAX_REQUEST_SIZE`` (by Content-Length, or counted while a chunked
body arrives) is not buffered: its bytes are read and dropped, then the client gets a
413 JSON error (from the one error map, ``http/errors.py``). Reading it to the end,
rather than closing at once, lets the client see the answer instead of a connection
reset; a body over 16x the limit closes the connection.
"""

from __future__ import annotations

import io
import tempfile
from typing import Any, overload

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ironfunctions.errors import PayloadTooLarge
from ironfunctions.http.budget import BodyBudget
from ironfunctions.http.channel import MAX_HEAD, FastChannel
from ironfunctions.http.conncap import CapAlarm
from ironfunctions.http.deadlines import ClientLimits
from ironfunctions.http.encode import HttpDate
from ironfunctions.http.errors import ErrorAnswer, answer_for, error_answer
from ironfunctions.http.refusal import BeyondCap
from ironfunctions.http.watchdog import Watchdog
from ironfunctions.http.webchannel import BoundedHTTPChannel
from ironfunctions.metrics import IMetrics
from ironfunctions.runner.invoker import Invoker

_ABORT_FACTOR = 16
_IN_MEMORY_BELOW = 100_000  # as twisted.web: a larger body is spooled to a temporary file
BUDGET_FULL = "Too many request bodies in progress on this node; retry later"


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
        self._refusal: ErrorAnswer | None = None  # answered once the body is read (and dropped)
        self._too_large = length is not None and length > self.max_request_size
        if self._too_large:
            self._refusal = self._too_large_answer()
            self.content = io.BytesIO()
            if length is not None and length > self.max_request_size * _ABORT_FACTOR:
                self._refuse()
            return
        budget: BodyBudget | None = getattr(getattr(self.channel, "site", None), "budget", None)
        if length == 0 or budget is None:
            super().gotLength(length)  # type: ignore[no-untyped-call]
            return
        # The body's share of the node's budget (http/budget.py), for its declared
        # length (a chunked one: the largest allowed), until the request is done.
        size = self.max_request_size if length is None else length
        if length is not None and length < _IN_MEMORY_BELOW and budget.take_memory(size):
            self.content = io.BytesIO()
            release = budget.release_memory
        elif budget.take_disk(size):
            self.content = tempfile.TemporaryFile()
            release = budget.release_disk
        else:
            self._refusal = error_answer(503, BUDGET_FULL, retry_after=5)
            self._too_large = True  # read and drop the body, then answer
            self.content = io.BytesIO()
            return
        self.notifyFinish().addBoth(lambda _: release(size))

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
        refusal = getattr(self, "_refusal", None)
        if refusal is not None:
            status, headers, body = refusal
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
    log line per call would cost more than a hot call itself), whose channels are
    held to ``limits`` by its ``watchdog``, and whose request bodies share ``budget``.

    :param clock: for the deadlines of connections (and, in ``FastSite``, the Date header).
    """

    log_access = False
    _log = Logger(namespace="ironfunctions.access")
    protocol = BoundedHTTPChannel  # type: ignore[assignment]

    def __init__(self, resource: IResource, clock: IReactorTime, limits: ClientLimits, budget: BodyBudget,
                 **kw: Any) -> None:
        super().__init__(resource, **kw)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.budget = budget
        self.watchdog = Watchdog(clock, limits, on_tick=self.tick)
        self.timeOut = None  # twisted.web's idle timer: the watchdog's deadlines instead

    def tick(self, now: float) -> None:
        """Periodic work, about once a second while connections are open."""

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

    Beyond ``max_connections`` open connections (None: no cap), a new one is a
    ``BeyondCap`` (``http/refusal.py``): refused with a 503, or answered if it is a
    health check. Refusals are counted (``connections.refused``, reported with the
    watchdog's tick rather than per refusal) and logged by ``CapAlarm``: one warning
    when they start, a count at most once a minute, a line when they stop.

    :param invoker: answers ``/r/`` requests (the one ``InvokeResource`` uses).
    :param max_request_size: bodies larger than this go to twisted.web (its 413).
    """

    def __init__(self, resource: IResource, invoker: Invoker, max_request_size: int, clock: IReactorTime,
                 limits: ClientLimits, budget: BodyBudget, max_connections: int | None = None,
                 metrics: IMetrics | None = None, **kw: Any) -> None:
        super().__init__(resource, clock, limits, budget, **kw)
        self.invoker = invoker
        self.max_request_size = max_request_size
        self.max_buffered = max_request_size + MAX_HEAD + 4  # the largest request it frames
        self.date = HttpDate(clock)
        self.open_connections = 0
        self.max_connections = max_connections
        self.triage: dict[BeyondCap, None] = {}
        self.refusing = 0
        self._metrics = metrics
        self._alarm = CapAlarm()
        self._reported = 0  # refusals already counted in the metric

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]  # noqa: N802
        if self.max_connections is not None and self.open_connections >= self.max_connections:
            return BeyondCap(self, addr)
        return FastChannel(self, addr)

    def build_channel(self, addr: IAddress | None) -> Protocol:
        """A lean channel, whatever the count (for a health check beyond the cap)."""
        return FastChannel(self, addr)

    def refused(self) -> None:
        if self._alarm.refused(self.clock.seconds()):
            self._log.warn("Connection cap reached ({cap} open): refusing new connections with 503",
                           cap=self.max_connections, open=self.open_connections)

    def tick(self, now: float) -> None:
        total = self._alarm.total
        if total != self._reported and self._metrics is not None:
            self._metrics.count("connections.refused", total - self._reported)
        self._reported = total
        report = self._alarm.report(now)
        if report is not None and report[0] == "still":
            self._log.warn("Connection cap reached: {refused} connections refused in the last minute",
                           refused=report[1], cap=self.max_connections)
        elif report is not None:
            self._log.info("Connection cap no longer reached", cap=self.max_connections)

    def build_web_channel(self, addr: IAddress | None) -> Protocol:
        """An ordinary twisted.web channel, for a connection handed over."""
        channel: Protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        return channel


@overload
def make_site(resource: IResource, max_request_size: int, log_access: bool = False, *, invoker: Invoker,
              clock: IReactorTime, limits: ClientLimits | None = None, budget: BodyBudget | None = None,
              max_connections: int | None = None, metrics: IMetrics | None = None) -> FastSite: ...


@overload
def make_site(resource: IResource, max_request_size: int, log_access: bool = False, invoker: None = None, *,
              clock: IReactorTime, limits: ClientLimits | None = None, budget: BodyBudget | None = None,
              max_connections: int | None = None, metrics: IMetrics | None = None) -> ApiSite: ...


def make_site(resource: IResource, max_request_size: int, log_access: bool = False,
              invoker: Invoker | None = None, *, clock: IReactorTime, limits: ClientLimits | None = None,
              budget: BodyBudget | None = None, max_connections: int | None = None,
              metrics: IMetrics | None = None) -> ApiSite:
    """A Site for ``resource`` whose requests are bounded by ``max_request_size``,
    its connections by ``limits`` (default: SPEC §2's) and its bodies by ``budget``
    (default: 64 MiB in memory, 1 GiB spooled); with ``invoker``, a ``FastSite`` that
    answers simple ``/r/`` requests on its own lean channel, with a cap of
    ``max_connections`` open connections."""

    class _Request(LimitedRequest):
        pass

    _Request.max_request_size = max_request_size
    limits = limits or ClientLimits()
    budget = budget or BodyBudget(64 * 1024 * 1024, 1024 * 1024 * 1024)
    site: ApiSite
    if invoker is not None:
        site = FastSite(resource, invoker, max_request_size, clock, limits, budget, max_connections, metrics,
                        requestFactory=_Request)
    else:
        site = ApiSite(resource, clock, limits, budget, requestFactory=_Request)
    site.log_access = log_access
    site.displayTracebacks = False
    site.noisy = False
    return site
