"""``TRUSTED_PROXIES`` through both servers (the lean ``/r/`` channel and twisted.web)
into what a function gets: ``REQUEST_URL``, its ``HEADER_*`` environment, a hot
function's request and what an async call stores (SPEC §9)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from ironfunctions.api.invoke import InvokeResource
from ironfunctions.http.proxies import TrustedProxies
from ironfunctions.http.site import make_site
from ironfunctions.models import Call, CallResult, CallStatus, Route
from ironfunctions.runner.invoker import Invoker
from ironfunctions.runner.plan import call_env
from ironfunctions.runner.protocol import RequestEncoder
from ironfunctions.runner.records import request_payload

HOT = Route(app_name="app", path="/hot", image="img", format="http")
JOB = Route(app_name="app", path="/job", image="img", type="async")
ROUTES = {r.path: r for r in (HOT, JOB)}
FORWARDING = (b"X-Forwarded-Proto: https\r\nx-forwarded-HOST: fn.example.com\r\nX-Forwarded-For: 6.6.6.6\r\n"
              b"FORWARDED: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Other: kept\r\n")
SPOOFED = {"X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-For", "Forwarded", "X-Real-Ip"}


class Functions:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def lookup(self, app: str, path: str) -> Route:
        return ROUTES[path]

    async def app_config(self, app: str) -> dict[str, str]:
        return {}

    async def run_call(self, call: Call) -> CallResult:
        self.calls.append(call)
        return CallResult(call.id, CallStatus.SUCCESS, body=b"ok")

    async def submit(self, call: Call) -> None:
        self.calls.append(call)


def request(path: bytes, chunked: bool = False) -> bytes:
    if chunked:  # the lean channel hands a chunked body to twisted.web
        return (b"POST " + path + b"?x=1 HTTP/1.1\r\nHost: h:1\r\n" + FORWARDING
                + b"Transfer-Encoding: chunked\r\n\r\n2\r\nin\r\n0\r\n\r\n")
    return b"POST " + path + b"?x=1 HTTP/1.1\r\nHost: h:1\r\n" + FORWARDING + b"Content-Length: 2\r\n\r\nin"


def call_from(peer: IAddress, data: bytes, trusted: str = "10.0.0.0/8", fast: bool = True) -> Call:
    """The call a request from ``peer`` makes; ``fast=False``: a plain twisted.web site."""
    functions = Functions()
    invoker = Invoker(functions.lookup, functions.app_config, functions.run_call, lambda: "CID",
                      submit=functions.submit, trusted_proxies=TrustedProxies([trusted] if trusted else []))
    root = Resource()
    root.putChild(b"r", InvokeResource(invoker))
    clock = Clock()
    site: Any = make_site(root, 1000, invoker=invoker, clock=clock) if fast else make_site(root, 1000, clock=clock)
    protocol = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    assert b" 20" in transport.value().split(b"\r\n")[0], transport.value()
    [call] = functions.calls
    return call


TRUSTED = IPv4Address("TCP", "10.1.2.3", 40000)
UNTRUSTED = IPv4Address("TCP", "11.1.2.3", 40000)
SERVERS = [pytest.param({"fast": True}, id="lean"), pytest.param({"fast": False}, id="twisted.web"),
           pytest.param({"chunked": True}, id="lean-chunked")]


def _call(peer: IAddress, path: bytes, server: dict[str, bool], trusted: str = "10.0.0.0/8") -> Call:
    return call_from(peer, request(path, server.get("chunked", False)), trusted, server.get("fast", True))


@pytest.mark.parametrize("server", SERVERS)
def test_a_trusted_proxy_sets_request_url_and_its_headers_reach_a_hot_function(server: dict[str, bool]) -> None:
    call = _call(TRUSTED, b"/r/app/hot", server)
    assert call.request.url == "https://fn.example.com/r/app/hot?x=1"
    env = call_env(call)
    assert env["REQUEST_URL"] == "https://fn.example.com/r/app/hot?x=1"
    assert env["HEADER_X_FORWARDED_FOR"] == "6.6.6.6" and env["HEADER_FORWARDED"] == "for=6.6.6.6"
    head = RequestEncoder(HOT, {}).encode(call).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /r/app/hot?x=1 HTTP/1.1"
    assert b"Request_url: https://fn.example.com/r/app/hot?x=1" in head
    assert b"Header_x_forwarded_proto: https" in head and b"Header_x_real_ip: 6.6.6.6" in head


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("peer", [UNTRUSTED, IPv6Address("TCP", "::1", 4000), UNIXAddress(None)],
                         ids=["ipv4", "ipv6", "unix"])
def test_an_untrusted_peers_forwarding_headers_never_reach_a_function(server: dict[str, bool], peer: IAddress) -> None:
    call = _call(peer, b"/r/app/hot", server)
    assert call.request.url == "http://h:1/r/app/hot?x=1"
    assert not SPOOFED & set(call.request.headers) and call.request.headers["X-Other"] == ["kept"]
    assert not [k for k in call_env(call) if "FORWARDED" in k or "REAL_IP" in k]
    encoded = RequestEncoder(HOT, {}).encode(call)
    assert b"orwarded" not in encoded and b"6.6.6.6" not in encoded and b"Request_url: http://h:1/" in encoded


@pytest.mark.parametrize("server", SERVERS)
def test_an_async_call_stores_the_filtered_request_as_computed_at_submit(server: dict[str, bool]) -> None:
    stored = request_payload(_call(TRUSTED, b"/r/app/job", server).request)
    assert stored["url"] == "https://fn.example.com/r/app/job?x=1" and "X-Forwarded-For" in stored["headers"]
    stored = request_payload(_call(UNTRUSTED, b"/r/app/job", server).request)
    assert stored["url"] == "http://h:1/r/app/job?x=1"
    assert not SPOOFED & set(stored["headers"]) and stored["headers"]["X-Other"] == ["kept"]


def test_ipv6_and_ipv4_mapped_peers() -> None:
    call = _call(IPv6Address("TCP", "2001:db8::5", 4000), b"/r/app/hot", {}, trusted="2001:db8::/64")
    assert call.request.url.startswith("https://fn.example.com/")
    call = _call(IPv6Address("TCP", "::ffff:10.9.8.7", 4000), b"/r/app/hot", {})
    assert call.request.url.startswith("https://fn.example.com/")


def test_with_no_trusted_proxies_even_loopback_is_not_believed() -> None:
    call = _call(IPv4Address("TCP", "127.0.0.1", 4000), b"/r/app/hot", {}, trusted="")
    assert call.request.url == "http://h:1/r/app/hot?x=1" and not SPOOFED & set(call.request.headers)
