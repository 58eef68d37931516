"""The lean ``/r/`` channel (``ironfunctions.http.channel``) over a ``StringTransport``.

The same requests go to a ``FastSite`` and to a plain twisted.web site serving the same
``Invoker`` through ``InvokeResource``: the answers must agree (bar Date), whichever
server framed the request; anything the lean channel does not frame itself must reach
twisted.web intact, from its first byte, with the connection.
"""

from __future__ import annotations

import io
import json
from http.client import HTTPResponse
from typing import Any, cast

import jwt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from ironfunctions.api.invoke import InvokeResource
from ironfunctions.runner.invoker import Invoker, Reply
from ironfunctions.errors import RouteNotFound
from ironfunctions.http.channel import FastChannel
from ironfunctions.http.encode import encode_reply
from ironfunctions.http.headers import canonical_name
from ironfunctions.models import Call, CallResult, CallStatus, Route
from ironfunctions.http.site import make_site

ROUTE = Route(app_name="app", path="/echo", image="img", headers={"X-Route": ["r"], "X-Price": ["5 €"]})
# A route whose headers try to set the framing, and a function answering headers the
# daemon sets itself (as Go's net/http does with Date).
HOSTILE = Route(app_name="app", path="/hostile", image="img",
                headers={"Content-Length": ["0"], "Transfer-Encoding": ["chunked"], "Server": ["route"]})
# A route behind a JWT: the caller's Authorization is the daemon's to check, not the function's.
JWT_KEY = "k" * 32
SECRET = Route(app_name="app", path="/secret", image="img", jwt_key=JWT_KEY)
TOKEN = jwt.encode({"exp": 2**40}, JWT_KEY, algorithm="HS256")


class Functions:
    """Echoes the request; ``/r/app/hold`` answers when ``release()`` is called."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.held: list[Deferred[CallResult]] = []

    async def lookup(self, app: str, path: str) -> Route:
        if app == "app" and path in ("/echo", "/hold"):
            return ROUTE
        if app == "app" and path == "/hostile":
            return HOSTILE
        if app == "app" and path == "/secret":
            return SECRET
        raise RouteNotFound()

    async def app_config(self, app: str) -> dict[str, str]:
        return {}

    async def run_call(self, call: Call) -> CallResult:
        self.calls.append(call)
        if call.request.url.split("?")[0].endswith("/hold"):
            d: Deferred[CallResult] = Deferred()
            self.held.append(d)
            return await d
        if call.route is HOSTILE:
            return CallResult(call.id, CallStatus.SUCCESS, body=b"hello", status_code=200, headers={
                "Date": ["Mon, 01 Jan 2024 00:00:00 GMT"], "Server": ["fn"], "Fn-Call-Id": ["forged"],
                "Server-Timing": ["forged"], "Bad Name": ["v"]})
        summary = {"method": call.request.method, "url": call.request.url,
                   "headers": {k: v for k, v in call.request.headers.items() if k != "Content-Length"}}
        return CallResult(call.id, CallStatus.SUCCESS, body=json.dumps(summary).encode() + b"|" + call.request.body,
                          status_code=201, headers={"X-Fn": ["f"], "Connection": ["close"]})

    def release(self) -> None:
        self.held.pop(0).callback(CallResult("x", CallStatus.SUCCESS, body=b"held"))


class Web(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"web:" + request.uri


def ids() -> Any:
    n = iter(range(1, 10**6))
    return lambda: "%026d" % next(n)


def build(fast: bool, functions: Functions, clock: Clock, max_request_size: int = 1000) -> Any:
    invoker = Invoker(functions.lookup, functions.app_config, functions.run_call, ids(), clock=clock)
    root = Resource()
    root.putChild(b"r", InvokeResource(invoker))
    root.putChild(b"web", Web())
    if fast:
        return make_site(root, max_request_size, invoker=invoker, clock=clock)
    return make_site(root, max_request_size, clock=clock)


def connect(site: Any) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def responses(raw: bytes, method: str = "POST") -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in ``raw`` (to ``method`` requests), in order, Date and Server dropped."""

    class Unclosable(io.BytesIO):
        def close(self) -> None:  # HTTPResponse closes its file after each body
            pass

    class Sock:
        def __init__(self, data: bytes) -> None:
            self.file = Unclosable(data)

        def makefile(self, mode: str) -> io.BytesIO:
            return self.file

    sock = Sock(raw)
    out = []
    while sock.file.tell() < len(raw):
        reply = HTTPResponse(sock, method=method)  # type: ignore[arg-type]
        reply.begin()
        headers = {k.lower(): v for k, v in reply.getheaders() if k.lower() not in ("date", "server")}
        out.append((reply.status, headers, reply.read()))
    return out


def exchange(data: bytes, fast: bool = True, chunks: int = 1) -> tuple[list[Any], Any]:
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(fast, functions, clock))
    step = max(1, len(data) // chunks) if chunks > 1 else len(data)
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i:i + step])
    return responses(transport.value(), data.split(b" ")[0].decode("latin-1")), protocol


POST = b"POST /r/app/echo?x=1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 5\r\nX-Thing: a\r\nx-thing: b\r\n\r\nhello"


def test_a_simple_call_is_answered_by_the_lean_channel() -> None:
    [(status, headers, body)], protocol = exchange(POST)
    assert isinstance(protocol, FastChannel) and protocol._inner is None
    assert status == 201
    summary, _, stdin = body.partition(b"|")
    assert stdin == b"hello"
    assert json.loads(summary) == {"method": "POST", "url": "http://h:1/r/app/echo?x=1",
                                   "headers": {"Host": ["h:1"], "X-Thing": ["a", "b"]}}
    assert headers["x-fn"] == "f" and headers["x-route"] == "r"
    assert headers["x-price"].encode("latin-1") == "5 €".encode()  # a route's value, in UTF-8
    assert "connection" not in headers  # the function's framing headers are not passed on
    assert len(headers["fn-call-id"]) == 26 and headers["server-timing"].startswith("wait;dur=")


REQUESTS = [
    POST,
    b"GET /r/app/echo?payload=abc HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /r/app/echo HTTP/1.1\r\nHost: h\r\n\r\n",
    b"DELETE /r/app/nope HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /r/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"PUT /r/app/%2e%2e/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"POST /r/app/echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",  # no Host: the local address
    b"GET /r/app/hostile HTTP/1.1\r\nHost: h\r\n\r\n",
    # Issue 11: what reaches a function must not depend on which server framed it.
    b"GET /r/app/echo HTTP/1.1\r\nHost: h\r\nX-User: alice\r\nX_User: mallory\r\n\r\n",
    b"POST /r/app/echo HTTP/1.1\r\nHost: evil.example/r/app/admin?\r\nContent-Length: 0\r\n\r\n",
    b"GET /r/app/echo?a=b HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    b"GET /r/app/echo HTTP/1.1\r\nHost: user@h\r\n\r\n",
    b"GET /r/app/echo HTTP/1.1\r\nHost: \r\n\r\n",
    b"GET /r/app/secret HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS)
def test_the_lean_channel_answers_as_twisted_web_does(request_bytes: bytes) -> None:
    fast, protocol = exchange(request_bytes)
    web, _ = exchange(request_bytes, fast=False)
    assert protocol._inner is None
    assert fast == web


def summaries(request_bytes: bytes) -> list[dict[str, Any]]:
    """What the function was told (method, URL, headers), by the lean channel and by
    twisted.web (the request as HTTP/1.0 goes to twisted.web)."""
    out = []
    for data in (request_bytes, request_bytes.replace(b"HTTP/1.1", b"HTTP/1.0", 1)):
        [(status, _, body)], protocol = exchange(data)
        assert status == 201, body
        out.append(json.loads(body.partition(b"|")[0]))
    return out


def test_a_header_named_with_an_underscore_never_reaches_the_function() -> None:
    """``X_User`` would become ``HEADER_X_USER`` as ``X-User`` does (and win): dropped."""
    for summary in summaries(REQUESTS[8]):
        assert summary["headers"] == {"Host": ["h"], "X-User": ["alice"]}


@pytest.mark.parametrize("host", [b"evil.example/r/app/admin?", b"user@h", b"h:1/x", b"h h", b"h:port", b"",
                                  b"[::1", b"h:123456", b"h#x", b"a..b"])
def test_a_host_that_is_not_host_port_does_not_reach_the_url(host: bytes) -> None:
    """The URL is built from the request's own target and, only when it is a plain
    ``host[:port]``, the Host header; else the local address."""
    data = b"GET /r/app/echo?q=1 HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    for summary in summaries(data):
        assert summary["url"] == "http://10.0.0.1:12345/r/app/echo?q=1"


@pytest.mark.parametrize("host", [b"h", b"h:1", b"Example.COM.", b"10.1.2.3:8080", b"[::1]:8080", b"[fe80::1]",
                                  b"my_host-1.internal:80"])
def test_a_plain_host_port_is_the_urls_host(host: bytes) -> None:
    data = b"GET /r/app/echo HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    for summary in summaries(data):
        assert summary["url"] == "http://" + host.decode() + "/r/app/echo"


def test_the_authorization_a_jwt_route_consumed_is_not_passed_on() -> None:
    for summary in summaries(REQUESTS[-1]):
        assert summary["headers"] == {"Host": ["h"]}
    # Without a jwt_key the header is the function's own business.
    auth = b"GET /r/app/echo HTTP/1.1\r\nHost: h\r\nAuthorization: Basic eDp5\r\n\r\n"
    for summary in summaries(auth):
        assert summary["headers"]["Authorization"] == ["Basic eDp5"]


@pytest.mark.parametrize("chunks", [2, 3, 7, len(POST)])
def test_a_request_split_across_reads_gets_the_same_answer(chunks: int) -> None:
    assert exchange(POST, chunks=chunks)[0] == exchange(POST)[0]


def test_pipelined_requests_are_answered_in_order() -> None:
    data = POST + REQUESTS[1] + REQUESTS[3] + POST
    answers, protocol = exchange(data)
    assert [a[0] for a in answers] == [201, 201, 404, 201]
    assert protocol._inner is None


HANDED_OVER = [
    b"GET /web/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /r/app/echo HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\n folded\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\nContent-Length: 5\r\n\r\nhello",
    b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
    b"GARBAGE\r\n\r\n",
    b"\r\nPOST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /r/app/echo HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",  # NUL: twisted.web's 400
]


@pytest.mark.parametrize("request_bytes", HANDED_OVER)
def test_anything_else_goes_to_twisted_web_intact(request_bytes: bytes) -> None:
    fast, protocol = exchange(request_bytes)
    web, _ = exchange(request_bytes, fast=False)
    assert protocol._inner is not None
    assert fast == web
    assert fast and all(status != 500 for status, _, _ in fast)


def test_a_connection_handed_over_midway_keeps_its_order() -> None:
    answers, protocol = exchange(POST + HANDED_OVER[0] + POST)
    assert protocol._inner is not None
    assert [(a[0], a[2][:4]) for a in answers] == [(201, b'{"me'), (200, b"web:"), (201, b'{"me')]


def test_an_oversized_head_goes_to_twisted_web() -> None:
    data = b"GET /r/app/echo HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    fast, protocol = exchange(data)
    assert protocol._inner is not None
    assert fast == exchange(data, fast=False)[0]


def test_too_many_headers_go_to_twisted_web() -> None:
    data = POST.replace(b"X-Thing: a\r\n", b"X-Thing: a\r\n" * 501)
    fast, protocol = exchange(data)
    assert protocol._inner is not None and fast == exchange(data, fast=False)[0]
    assert fast[0][0] == 400


def test_connection_close_is_honoured() -> None:
    clock = Clock()
    protocol, transport = connect(build(True, Functions(), clock))
    protocol.dataReceived(POST.replace(b"Host: h:1", b"Host: h:1\r\nConnection: close") + POST)
    [(status, headers, _)] = responses(transport.value())
    assert status == 201 and headers["connection"] == "close"
    assert transport.disconnecting


def test_one_call_at_a_time_and_a_gone_client_gets_nothing() -> None:
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(True, functions, clock))
    hold = b"POST /r/app/hold HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    protocol.dataReceived(hold + POST)
    assert len(functions.calls) == 1 and transport.value() == b""
    functions.release()
    assert [a[0] for a in responses(transport.value())] == [200, 201]
    transport.clear()
    protocol.dataReceived(hold)
    protocol.connectionLost(None)
    functions.release()  # the answer has nowhere to go: dropped quietly
    assert transport.value() == b""


def test_a_full_send_buffer_stops_the_next_request_until_it_drains() -> None:
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(True, functions, clock))
    protocol.pauseProducing()  # what the transport does when its buffer is full
    assert transport.producerState == "paused"
    protocol.dataReceived(POST)
    assert functions.calls == []
    protocol.resumeProducing()
    assert transport.producerState == "producing" and len(functions.calls) == 1


def test_reading_pauses_while_too_much_is_buffered() -> None:
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(True, functions, clock, max_request_size=100))
    protocol.dataReceived(b"POST /r/app/hold HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    protocol.dataReceived(POST * 200)  # pipelined behind a call in flight
    assert transport.producerState == "paused"
    functions.release()
    assert transport.producerState == "producing"
    assert len(responses(transport.value())) == 201


def test_a_reply_cannot_inject_headers() -> None:
    raw = encode_reply(Reply(200, [(b"x-a", b"1\r\nSet-Cookie: x"), (b"bad name", b"v")], b"ok"),
                       b"DATE", head_only=False, close=False)
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b"X-A: 1  Set-Cookie: x" in head and not any(line.startswith(b"bad") for line in head)


def test_header_names_are_capitalised_as_twisted_does() -> None:
    assert canonical_name(b"content-type") == b"Content-Type"
    assert canonical_name(b"www-authenticate") == b"WWW-Authenticate"
    assert canonical_name(b"x y") is None and canonical_name(b"") is None


def raw_exchange(data: bytes) -> bytes:
    clock = Clock()
    protocol, transport = connect(build(True, Functions(), clock))
    protocol.dataReceived(data)
    return cast(bytes, transport.value())


def test_no_framing_or_daemon_header_comes_from_a_function_or_route() -> None:
    """One Content-Length, one Date, one Server, our Fn-Call-Id: a route or function
    setting them would split or confuse the response."""
    head = raw_exchange(b"GET /r/app/hostile HTTP/1.1\r\nHost: h\r\n\r\n").split(b"\r\n\r\n")[0].lower()
    lines = head.split(b"\r\n")
    for name in (b"content-length", b"date", b"server", b"fn-call-id", b"server-timing"):
        assert len([line for line in lines if line.startswith(name + b":")]) == 1, name
    assert b"transfer-encoding" not in head and b"forged" not in head
    assert b"content-length: 5" in lines and b"server: route" not in lines


def test_a_function_header_whose_name_is_no_token_is_dropped_by_both_servers() -> None:
    """twisted.web would refuse to write it and drop the connection with no reply."""
    data = b"GET /r/app/hostile HTTP/1.1\r\nHost: h\r\n\r\n"
    fast, _ = exchange(data)
    web, _ = exchange(data, fast=False)
    assert len(fast) == 1 and len(web) == 1
    assert fast[0][0] == web[0][0] == 200 and fast[0][2] == web[0][2] == b"hello"
    assert not any(name.lower().startswith("bad") for name in web[0][1])


def test_connection_close_then_keep_alive_still_closes() -> None:
    data = POST.replace(b"Host: h:1", b"Host: h:1\r\nConnection: close\r\nConnection: keep-alive")
    fast, _ = exchange(data + POST)
    web, _ = exchange(data + POST, fast=False)
    assert len(fast) == 1 and fast == web


def test_reading_resumes_for_the_last_bytes_of_a_largest_request() -> None:
    """A request of the largest size the channel frames, pipelined behind a call in
    flight, must not leave reading paused a few bytes short."""
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(True, functions, clock, max_request_size=100))
    protocol.dataReceived(b"POST /r/app/hold HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    head = b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\nX-Pad: "
    head += b"p" * (16 * 1024 - len(head)) + b"\r\n\r\n"  # its end at exactly MAX_HEAD
    assert len(head) == 16 * 1024 + 4
    protocol.dataReceived(head + b"b" * 97)  # all but the last 3 bytes of the body
    functions.release()
    assert transport.producerState == "producing"
    protocol.dataReceived(b"bbb")
    assert [a[0] for a in responses(transport.value())] == [200, 201]


def test_the_site_counts_its_open_connections_handed_over_or_not() -> None:
    site = build(True, Functions(), Clock())
    assert site.open_connections == 0
    lean, _ = connect(site)
    handed, _ = connect(site)
    handed.dataReceived(HANDED_OVER[0])
    assert handed._inner is not None and site.open_connections == 2
    handed.connectionLost(Failure(ConnectionDone()))
    assert site.open_connections == 1
    lean.connectionLost(Failure(ConnectionDone()))
    lean.connectionLost(Failure(ConnectionDone()))  # told twice: counted once
    assert site.open_connections == 0
