"""What of a request reaches a function (issue 11 item 6), through the ``Invoker``
whichever server parsed the request: the URL and hot request line from the request's
own target, no ``_`` header names, no Authorization a route's ``jwt_key`` consumed,
neither in the environment nor in what an async call stores."""

from __future__ import annotations

from typing import Any

import jwt
from twisted.internet.defer import Deferred

from ironfunctions.http.hosts import authority, valid_host
from ironfunctions.models import Call, CallResult, CallStatus, Route
from ironfunctions.runner.invoker import Invocation, Invoker, Reply
from ironfunctions.runner.plan import call_env
from ironfunctions.runner.protocol import RequestEncoder
from ironfunctions.runner.records import request_payload

KEY = "k" * 32
TOKEN = jwt.encode({"exp": 2**40}, KEY, algorithm="HS256")
HOT = Route(app_name="app", path="/hot", image="img", format="http")
SECRET_ASYNC = Route(app_name="app", path="/job", image="img", type="async", jwt_key=KEY)
SECRET_SYNC = Route(app_name="app", path="/sync", image="img", jwt_key=KEY)
ROUTES = {r.path: r for r in (HOT, SECRET_ASYNC, SECRET_SYNC)}


class Functions:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.submitted: list[Call] = []

    async def lookup(self, app: str, path: str) -> Route:
        return ROUTES[path]

    async def app_config(self, app: str) -> dict[str, str]:
        return {}

    async def run_call(self, call: Call) -> CallResult:
        self.calls.append(call)
        return CallResult(call.id, CallStatus.SUCCESS, body=b"ok")

    async def submit(self, call: Call) -> None:
        self.submitted.append(call)


def invoke(functions: Functions, target: bytes, headers: dict[str, list[str]], host: str | None = "h",
           method: str = "POST") -> Reply:
    invoker = Invoker(functions.lookup, functions.app_config, functions.run_call, lambda: "CID",
                      submit=functions.submit)
    invocation = Invocation(method, target.partition(b"?")[0], target, headers, b"in", host, "127.0.0.1:8080")
    replies: list[Reply] = []
    Deferred.fromCoroutine(invoker.invoke(invocation)).addCallback(replies.append)
    [reply] = replies
    return reply


def test_a_forged_host_changes_neither_the_hot_request_line_nor_request_url() -> None:
    functions = Functions()
    assert invoke(functions, b"/r/app/hot", {}, host="evil.example/r/app/admin?").code == 200
    [call] = functions.calls
    head = RequestEncoder(HOT, {}).encode(call).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /r/app/hot HTTP/1.1"
    assert b"Request_url: http://127.0.0.1:8080/r/app/hot" in head
    assert call_env(call)["REQUEST_URL"] == "http://127.0.0.1:8080/r/app/hot"


def test_no_host_header_is_the_local_address() -> None:
    functions = Functions()
    invoke(functions, b"/r/app/hot?x=1", {}, host=None)
    assert functions.calls[0].request.url == "http://127.0.0.1:8080/r/app/hot?x=1"


def test_a_jwt_routes_authorization_is_neither_in_the_environment_nor_stored() -> None:
    functions = Functions()
    headers = {"Authorization": ["Bearer " + TOKEN], "X-A": ["1"]}
    assert invoke(functions, b"/r/app/sync", headers).code == 200
    assert "HEADER_AUTHORIZATION" not in call_env(functions.calls[0])
    assert call_env(functions.calls[0])["HEADER_X_A"] == "1"
    assert invoke(functions, b"/r/app/job", headers).code == 202
    [call] = functions.submitted
    assert request_payload(call.request)["headers"] == {"X-A": ["1"]}


def test_a_header_named_with_an_underscore_is_dropped_before_the_call() -> None:
    functions = Functions()
    invoke(functions, b"/r/app/hot", {"X-User": ["alice"], "X_User": ["mallory"]})
    assert dict(functions.calls[0].request.headers) == {"X-User": ["alice"]}


def test_valid_hosts() -> None:
    for host in ["h", "h:1", "a.b.c", "a-b.c.", "10.0.0.1:65535", "[::1]", "[::ffff:1.2.3.4]:80", "x_y"]:
        assert valid_host(host), host
    for host in ["", "h/", "h?", "h#", "u@h", "h:", "h:1:2", "[::1", "::1", "h h", "-h", "a..b", "h:123456",
                 "é", "a" * 300, "h\r\n", "[]"]:
        assert not valid_host(host), host


def test_authority_brackets_ipv6_and_names_a_socket_localhost() -> None:
    class Address:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    assert authority(Address(host="10.0.0.1", port=80)) == "10.0.0.1:80"  # type: ignore[arg-type]
    assert authority(Address(host="::1", port=80)) == "[::1]:80"  # type: ignore[arg-type]
    assert authority(Address(name=b"/tmp/s")) == "localhost"  # type: ignore[arg-type]
    assert authority(None) == "localhost"
