"""Clients are bounded (SPEC §8, issue 13): deadlines for heads, bodies and idle
connections, bare-LF heads, the shared body budget and the connection cap, on the lean
``/r/`` channel and on twisted.web's (a ``StringTransport``, a ``Clock``, no sockets).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from ironfunctions.api.invoke import InvokeResource
from ironfunctions.http.budget import BodyBudget
from ironfunctions.http.deadlines import ClientLimits
from ironfunctions.http.refusal import HEALTH_ROOM, MAX_REFUSING, BeyondCap
from ironfunctions.http.site import make_site
from ironfunctions.http.webchannel import BoundedHTTPChannel, pending_line
from ironfunctions.metrics.memory import MemoryMetrics
from ironfunctions.models import Call, CallResult, CallStatus, Route
from ironfunctions.runner.invoker import Invoker

LIMITS = ClientLimits(header_timeout=20, idle_timeout=60, body_min_rate=1024)
ROUTE = Route(app_name="app", path="/echo", image="img")


class Functions:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def lookup(self, app: str, path: str) -> Route:
        return ROUTE

    async def app_config(self, app: str) -> dict[str, str]:
        return {}

    async def run_call(self, call: Call) -> CallResult:
        self.bodies.append(call.request.body)
        return CallResult(call.id, CallStatus.SUCCESS, body=b"ok", status_code=200)


class Health(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"healthy"


def ids() -> Any:
    n = iter(range(1, 10**6))
    return lambda: "%026d" % next(n)


def build(clock: Clock, fast: bool = True, budget: BodyBudget | None = None, cap: int | None = None,
          metrics: MemoryMetrics | None = None, functions: Functions | None = None) -> Any:
    functions = functions or Functions()
    invoker = Invoker(functions.lookup, functions.app_config, functions.run_call, ids(), clock=clock)
    root = Resource()
    root.putChild(b"r", InvokeResource(invoker))
    root.putChild(b"health", Health())
    if not fast:
        return make_site(root, 6 * 1024 * 1024, clock=clock, limits=LIMITS, budget=budget)
    return make_site(root, 6 * 1024 * 1024, invoker=invoker, clock=clock, limits=LIMITS, budget=budget,
                     max_connections=cap, metrics=metrics)


def connect(site: Any) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def tick(clock: Clock, seconds: int) -> None:
    """Let ``seconds`` pass a second at a time, as a reactor would."""
    clock.pump([1.0] * seconds)


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


def error(transport: StringTransport) -> str:
    message: str = json.loads(transport.value().split(b"\r\n\r\n", 1)[1])["error"]["message"]
    return message


HEAD = b"POST /r/app/echo HTTP/1.1\r\nHost: h\r\n"
WEB_HEAD = b"POST /r/app/echo HTTP/1.0\r\nHost: h\r\n"  # HTTP/1.0: twisted.web frames it


@pytest.mark.parametrize("head", [HEAD, WEB_HEAD], ids=["lean", "twisted.web"])
def test_a_head_trickling_in_gets_408_within_the_header_timeout(head: bytes) -> None:
    clock = Clock()
    protocol, transport = connect(build(clock))
    protocol.dataReceived(head)
    for n in range(19):  # a header line every second: the idle timer of old never fired
        tick(clock, 1)
        protocol.dataReceived(b"X-%d: y\r\n" % n)
    assert transport.value() == b""
    tick(clock, 2)
    assert status(transport) == 408 and b"connection: close" in transport.value().lower()
    assert error(transport) == "Request head not received in time"
    assert transport.disconnecting


@pytest.mark.parametrize("head", [HEAD, WEB_HEAD], ids=["lean", "twisted.web"])
def test_a_body_slower_than_the_minimum_rate_gets_408(head: bytes) -> None:
    clock = Clock()
    protocol, transport = connect(build(clock))
    protocol.dataReceived(head + b"Content-Length: 100000\r\n\r\n")
    for _ in range(12):  # 500 B/s, half the minimum
        tick(clock, 1)
        protocol.dataReceived(b"x" * 500)
    assert status(transport) == 408 and error(transport) == "Request body too slow"
    assert transport.disconnecting


@pytest.mark.parametrize("head", [HEAD, WEB_HEAD], ids=["lean", "twisted.web"])
def test_a_body_at_the_minimum_rate_is_not_cut(head: bytes) -> None:
    clock = Clock()
    functions = Functions()
    protocol, transport = connect(build(clock, functions=functions))
    protocol.dataReceived(head + b"Content-Length: 30000\r\n\r\n")
    for _ in range(24):  # 1200 B/s for 24 s: above the minimum over each 10 s window
        tick(clock, 1)
        protocol.dataReceived(b"x" * 1200)
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(b"x" * 1200)
    assert status(transport) == 200 and functions.bodies == [b"x" * 30000]


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "twisted.web"])
def test_an_idle_connection_closes_after_the_idle_timeout_and_is_aborted_if_it_reads_nothing(fast: bool) -> None:
    clock = Clock()
    protocol, transport = connect(build(clock, fast=fast))
    protocol.dataReceived(b"GET /r/app/echo HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status(transport) == 200
    tick(clock, 59)
    assert not transport.disconnecting  # answered a minute ago: still open
    tick(clock, 2)
    assert transport.disconnecting and not transport.disconnected
    tick(clock, 16)
    assert transport.disconnected  # as twisted.web does: an abort after 15 s


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "twisted.web"])
def test_a_connection_that_sends_nothing_closes_after_the_header_timeout_without_a_word(fast: bool) -> None:
    clock = Clock()
    protocol, transport = connect(build(clock, fast=fast))
    tick(clock, 21)
    assert transport.disconnecting and transport.value() == b""


BARE_LF = [
    b"GET /r/app/echo HTTP/1.1\nHost: h\n\n",
    b"GET /r/app/echo HTTP/1.1\r\nHost: h\n\n",
    b"GET /health HTTP/1.1\nHost: h\n\n",
    b"GET /r/app/echo HTTP/1.1\nHost: h\n",  # not even complete
]


@pytest.mark.parametrize("data", BARE_LF)
@pytest.mark.parametrize("fast", [True, False], ids=["lean", "twisted.web"])
def test_a_bare_lf_head_gets_400_at_once(fast: bool, data: bytes) -> None:
    clock = Clock()
    protocol, transport = connect(build(clock, fast=fast))
    protocol.dataReceived(data)
    assert status(transport) == 400 and "bare LF" in error(transport)
    assert transport.disconnecting


def test_the_line_receivers_pending_line_is_where_we_read_it() -> None:
    """``pending_line`` reads twisted's private ``LineReceiver._buffer``: if it moves,
    this fails (and bare-LF heads would meet silence again)."""
    channel = BoundedHTTPChannel()  # type: ignore[no-untyped-call]
    channel.site = build(Clock(), fast=False)
    channel.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h")
    assert pending_line(channel) == b"Host: h"


def test_a_body_over_the_memory_budget_is_spooled_by_twisted_web_and_reaches_the_function() -> None:
    clock = Clock()
    budget = BodyBudget(max_buffered=1000, max_spooled=10**6)
    functions = Functions()
    site = build(clock, budget=budget, functions=functions)
    stalled, _ = connect(site)
    stalled.dataReceived(HEAD + b"Content-Length: 800\r\n\r\n" + b"s" * 100)
    assert budget.in_memory == 800 and stalled._inner is None
    spooled, transport = connect(site)
    body = bytes(range(256)) * 20
    spooled.dataReceived(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
    assert spooled._inner is not None  # did not fit in memory: twisted.web spools it
    assert budget.in_memory == 800 and budget.on_disk == len(body)
    request = spooled._inner.requests[0]
    assert not hasattr(request.content, "getvalue")  # a temporary file, not a BytesIO
    spooled.dataReceived(body[1000:])
    assert status(transport) == 200 and functions.bodies == [body]
    assert budget.on_disk == 0  # given back when answered
    stalled.connectionLost(Failure(ConnectionDone()))
    assert budget.in_memory == 0


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "twisted.web"])
def test_beyond_the_spool_budget_a_new_body_gets_503(fast: bool) -> None:
    clock = Clock()
    budget = BodyBudget(max_buffered=0, max_spooled=1000)
    site = build(clock, fast=fast, budget=budget)
    first, _ = connect(site)
    first.dataReceived(HEAD + b"Content-Length: 900\r\n\r\n")
    second, transport = connect(site)
    second.dataReceived(HEAD + b"Content-Length: 200\r\n\r\n" + b"x" * 200)
    assert status(transport) == 503 and b"retry-after: 5" in transport.value().lower()
    assert budget.on_disk == 900


def test_beyond_the_cap_connections_get_503_and_the_oldest_unchecked_one_without_being_read() -> None:
    clock = Clock()
    metrics = MemoryMetrics()
    site = build(clock, cap=2, metrics=metrics)
    served = [connect(site) for _ in range(2)]
    checked = [connect(site) for _ in range(HEALTH_ROOM)]  # read for a health check first
    assert all(isinstance(p, BeyondCap) for p, _ in checked)
    assert all(t.value() == b"" for _, t in checked)
    newest = connect(site)  # takes the place of the oldest being checked
    value = checked[0][1].value()
    assert int(value.split(b" ", 2)[1]) == 503 and b"retry-after: 5" in value.lower()
    assert b"Too many connections" in value
    assert checked[0][1].disconnecting  # half closed: it reads the answer, not a reset
    checked[1][0].dataReceived(b"POST /r/app/echo HTTP/1.1\r\n")  # not a health check
    assert status(checked[1][1]) == 503
    tick(clock, 5)  # no request line within 2 s: refused; the linger ends 2 s later
    everyone = checked + [newest]
    assert all(t.disconnected for _, t in everyone)
    for protocol, _ in everyone:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert site.refusing == 0 and not site.triage
    assert metrics.total("connections.refused") == HEALTH_ROOM + 1
    assert site.open_connections == len(served)


def test_a_health_check_beyond_the_cap_is_answered() -> None:
    clock = Clock()
    site = build(clock, cap=1)
    connect(site)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status(transport) == 200 and transport.value().endswith(b"healthy")


def test_a_flood_beyond_the_cap_is_aborted_once_the_refusals_pile_up() -> None:
    clock = Clock()
    site = build(clock, cap=0)
    flood = [connect(site) for _ in range(HEALTH_ROOM + MAX_REFUSING)]
    assert all(status(t) == 503 for _, t in flood[:MAX_REFUSING])
    connect(site)
    _, transport = flood[MAX_REFUSING]
    assert transport.value() == b"" and transport.disconnected  # aborted: its descriptor is back at once


def test_a_silent_flood_beyond_the_cap_does_not_keep_a_health_check_out() -> None:
    clock = Clock()
    site = build(clock, cap=1)
    connect(site)
    for _ in range(HEALTH_ROOM * 3):
        connect(site)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status(transport) == 200
