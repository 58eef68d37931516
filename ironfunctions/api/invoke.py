"""``ANY /r/{app}/{path}`` for requests twisted.web parsed (SPEC §4).

The invocation itself is ``runner/invoker.py``'s ``Invoker``, which the lean ``/r/``
channel (``ironfunctions.http.channel``) also feeds; ``InvokeResource`` adapts a
twisted.web request to it and writes its ``Reply`` back. It gets what the lean channel
hands to twisted.web: chunked bodies, ``Expect``, HTTP/1.0, a connection that went to
the management API first...
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ironfunctions.http.headers import canonical_name
from ironfunctions.http.hosts import authority, peer_host
from ironfunctions.runner.invoker import Invocation, Invoker, Reply

log = Logger()


class InvokeResource(Resource):
    """The ``/r`` resource (the ``r`` child of the root) for requests twisted.web
    parsed: adapts them to ``invoker``."""

    isLeaf = True

    def __init__(self, invoker: Invoker) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.invoker = invoker

    def render(self, request: IRequest) -> Any:
        d = Deferred.fromCoroutine(self.invoker.invoke(_invocation(request)))
        d.addCallback(_write_reply, request)
        d.addErrback(_write_failed, request)
        return NOT_DONE_YET


def _invocation(request: Any) -> Invocation:
    body = request.content.read() if request.content is not None else b""
    host = request.getHeader(b"host")
    headers = {
        name.decode("latin-1"): [v.decode("latin-1") for v in values]
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    return Invocation(request.method.decode("ascii", "replace"), request.path, request.uri, headers, body,
                      None if host is None else host.decode("latin-1"), authority(request.getHost()),
                      request.isSecure(), peer_host(request.getClientAddress()))


def _write_reply(reply: Reply, request: Any) -> None:
    if request._disconnected or request.finished:
        return
    request.setResponseCode(reply.code)
    headers = request.responseHeaders
    for name, value in reply.headers:
        if canonical_name(name) is None:  # not a token: dropped, as the lean channel does
            continue
        headers.addRawHeader(name, value)
    headers.setRawHeaders(b"content-length", [b"%d" % len(reply.body)])
    request.write(reply.body)
    request.finish()


def _write_failed(failure: Failure, request: Any) -> None:
    """Only a bug gets here (``Invoker.invoke`` never raises): log it and close."""
    log.failure("Writing an invocation's reply failed", failure)
    if not request._disconnected and not request.finished:
        request.loseConnection()
