"""``TRUSTED_PROXIES`` through a real daemon and real Docker (SPEC §9, issue 14 item 4):
from a trusted peer, ``X-Forwarded-Proto``/``-Host`` set ``REQUEST_URL`` and the
forwarding headers reach the function; from anyone else none of them does, and the URL
is the request's own.

Each request goes once through the lean ``/r/`` channel (``Content-Length`` body) and
once through twisted.web (a chunked body, which the lean channel hands over), to a cold
function (``echo-env``), a hot one (``hot-head``: the request head it got) and an async
route (``NUM_ASYNC=0``: the call waits in the queue and ``/tasks`` shows what was stored)."""

from __future__ import annotations

import socket

import pytest

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)

FORWARDING = {"X-Forwarded-Proto": "https", "x-forwarded-host": "fn.example.com",
              "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9;proto=https",
              "X-Real-IP": "203.0.113.9"}
SENT = {"Host": "fn.local:8080", "X-Other": "kept", **FORWARDING}
CHUNKED = [False, True]  # the lean channel, twisted.web


def send(daemon: Daemon, path: str, chunked: bool, body: bytes = b"in") -> tuple[int, bytes]:
    """POST ``body`` to ``path`` with the headers of ``SENT``, framed by Content-Length
    or chunked; read the answer to the end (the connection closes after it)."""
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in SENT.items()), "Connection: close"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        lines.append(f"Content-Length: {len(body)}")
        framed = body
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + framed)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        content = _dechunk(content)
    return int(head.split(b" ")[1]), content


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2:]
    return out


def env_of(body: bytes) -> dict[str, str]:
    """echo-env's output: one VAR=value a line."""
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


def add_routes(node: Daemon) -> None:
    node.add_route("app", "/env", image_tag("echo-env"))
    node.add_route("app", "/hot", image_tag("hot-head"), format="http")
    node.add_route("app", "/job", image_tag("echo-env"), type="async")


def stored_env(node: Daemon, chunked: bool) -> dict[str, str]:
    """The environment an async call was stored with (an external runner's view)."""
    status, body = send(node, "/r/app/job?x=1", chunked)
    assert status == 202, body
    task = node.get("/tasks").json()
    env: dict[str, str] = task["env_vars"]
    return env


@pytest.fixture
def trusting(test_images: dict[str, str], daemon_factory: DaemonFactory) -> Daemon:  # noqa: F811
    node = daemon_factory(env={"NUM_ASYNC": "0", "TRUSTED_PROXIES": "127.0.0.1/32"})
    add_routes(node)
    return node


@pytest.fixture(params=["", "10.0.0.0/8"], ids=["none", "other-net"])
def distrusting(request: pytest.FixtureRequest, test_images: dict[str, str],  # noqa: F811
                daemon_factory: DaemonFactory) -> Daemon:
    node = daemon_factory(env={"NUM_ASYNC": "0", "TRUSTED_PROXIES": request.param})
    add_routes(node)
    return node


def test_a_trusted_proxy_sets_request_url_and_its_headers_reach_the_function(trusting: Daemon) -> None:
    url = "https://fn.example.com/r/app/{}?x=1"
    for chunked in CHUNKED:
        status, body = send(trusting, "/r/app/env?x=1", chunked)
        assert status == 200, body
        env = env_of(body)
        assert env["REQUEST_URL"] == url.format("env"), chunked
        assert env["HEADER_X_FORWARDED_PROTO"] == "https" and env["HEADER_X_FORWARDED_HOST"] == "fn.example.com"
        assert env["HEADER_X_FORWARDED_FOR"] == "203.0.113.9" and env["HEADER_X_REAL_IP"] == "203.0.113.9"
        assert env["HEADER_FORWARDED"] == "for=203.0.113.9;proto=https"
        status, body = send(trusting, "/r/app/hot?x=1", chunked)
        assert status == 200, body
        lines = body.splitlines()
        assert lines[0] == b"POST /r/app/hot?x=1 HTTP/1.1"
        assert f"Request_url: {url.format('hot')}".encode() in lines, body
        assert b"Header_x_forwarded_for: 203.0.113.9" in lines and b"Header_x_forwarded_proto: https" in lines
        env = stored_env(trusting, chunked)
        assert env["REQUEST_URL"] == url.format("job") and env["HEADER_X_FORWARDED_FOR"] == "203.0.113.9"


def test_from_an_untrusted_peer_no_forwarding_header_reaches_the_function(distrusting: Daemon) -> None:
    url = "http://fn.local:8080/r/app/{}?x=1"  # the Host header, as without a proxy
    for chunked in CHUNKED:
        status, body = send(distrusting, "/r/app/env?x=1", chunked)
        assert status == 200, body
        env = env_of(body)
        assert env["REQUEST_URL"] == url.format("env"), chunked
        assert env["HEADER_X_OTHER"] == "kept"
        assert not [k for k in env if "FORWARDED" in k or "REAL_IP" in k], env
        assert b"203.0.113.9" not in body and b"fn.example.com" not in body
        status, body = send(distrusting, "/r/app/hot?x=1", chunked)
        assert status == 200, body
        assert f"Request_url: {url.format('hot')}".encode() in body.splitlines(), body
        assert b"Header_x_other: kept" in body.splitlines()
        assert b"orwarded" not in body.lower() and b"203.0.113.9" not in body and b"fn.example.com" not in body
        env = stored_env(distrusting, chunked)
        assert env["REQUEST_URL"] == url.format("job") and env["HEADER_X_OTHER"] == "kept"
        assert not [k for k in env if "FORWARDED" in k or "REAL_IP" in k], env
