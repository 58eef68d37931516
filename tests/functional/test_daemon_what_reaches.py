"""What of a request reaches a function, through a real daemon and real Docker (issue
11 items 6 and 8): header names with ``_`` never do; a forged ``Host`` changes neither
a hot function's request line nor ``REQUEST_URL``; the Authorization a route's
``jwt_key`` consumed is neither in the function's environment nor stored with an async
call (bad names: ``test_daemon_bad_names.py``).

Each request goes once through the lean ``/r/`` channel (HTTP/1.1) and once through
twisted.web (the same request as HTTP/1.0, which the lean channel hands over)."""

from __future__ import annotations

import os
import socket
import time

import jwt
import pytest

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)

KEY = "functional-test-route-key-of-32-bytes!"
FORGED_HOST = "evil.example/r/app/admin?"


def raw_request(daemon: Daemon, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                version: str = "HTTP/1.1") -> tuple[int, bytes]:
    """Send one request as given (Host included), read the answer to the end: the
    connection closes after it."""
    lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close"]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), content


VERSIONS = ["HTTP/1.1", "HTTP/1.0"]  # the lean channel, twisted.web


@pytest.fixture
def node(test_images: dict[str, str], daemon_factory: DaemonFactory) -> Daemon:  # noqa: F811
    return daemon_factory(env={"NUM_ASYNC": "0"})


def env_of(body: bytes) -> dict[str, str]:
    """echo-env's output: one VAR=value a line."""
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


@pytest.mark.parametrize("version", VERSIONS)
def test_an_underscore_header_never_reaches_the_function_while_a_dash_one_does(node: Daemon, version: str) -> None:
    node.add_route("app", "/env", image_tag("echo-env"))
    node.add_route("app", "/hot", image_tag("hot-head"), format="http")
    headers = {"Host": "h", "X-User": "alice", "X_User": "mallory"}  # X_User last: it used to win
    status, body = raw_request(node, "GET", "/r/app/env", headers, version=version)
    assert status == 200, body
    assert env_of(body)["HEADER_X_USER"] == "alice" and b"mallory" not in body
    status, body = raw_request(node, "GET", "/r/app/hot", headers, version=version)
    assert status == 200, body
    assert b"Header_x_user: alice" in body.splitlines() and b"mallory" not in body


@pytest.mark.parametrize("version", VERSIONS)
def test_a_forged_host_changes_neither_the_hot_request_line_nor_request_url(node: Daemon, version: str) -> None:
    node.add_route("app", "/env", image_tag("echo-env"))
    node.add_route("app", "/hot", image_tag("hot-head"), format="http")
    local = f"http://127.0.0.1:{node.port}"
    status, body = raw_request(node, "POST", "/r/app/hot?x=1", {"Host": FORGED_HOST}, b"in", version)
    assert status == 200, body
    lines = body.splitlines()
    assert lines[0] == b"POST /r/app/hot?x=1 HTTP/1.1"
    assert f"Request_url: {local}/r/app/hot?x=1".encode() in lines
    status, body = raw_request(node, "POST", "/r/app/env?x=1", {"Host": FORGED_HOST}, b"in", version)
    assert status == 200, body
    assert env_of(body)["REQUEST_URL"] == f"{local}/r/app/env?x=1"
    # A plain host[:port] is the client's to choose, as before.
    status, body = raw_request(node, "GET", "/r/app/env", {"Host": "fn.example:8080"}, version=version)
    assert env_of(body)["REQUEST_URL"] == "http://fn.example:8080/r/app/env"


def test_a_jwt_routes_authorization_is_neither_in_the_env_nor_stored_with_an_async_call(node: Daemon) -> None:
    token = jwt.encode({"exp": int(time.time()) + 600}, KEY, algorithm="HS256")
    node.add_route("app", "/env", image_tag("echo-env"), jwt_key=KEY)
    node.add_route("app", "/job", image_tag("echo-env"), jwt_key=KEY, type="async")
    auth = {"Authorization": f"Bearer {token}", "X-Other": "kept"}
    for version in VERSIONS:
        status, body = raw_request(node, "POST", "/r/app/env", {"Host": "h", **auth}, b"in", version)
        assert status == 200, body
        env = env_of(body)
        assert "HEADER_AUTHORIZATION" not in env and token.encode() not in body
        assert env["HEADER_X_OTHER"] == "kept"
    assert raw_request(node, "POST", "/r/app/env", {"Host": "h"}, b"in")[0] == 401  # still checked
    reply = node.post("/r/app/job", "payload", headers=auth)
    assert reply.status == 202, reply.body
    # NUM_ASYNC=0: the call waits in the queue; an external runner sees what was stored.
    task = node.get("/tasks").json()
    assert task["call_id"] == reply.json()["call_id"]
    assert "HEADER_AUTHORIZATION" not in task["env_vars"] and task["env_vars"]["HEADER_X_OTHER"] == "kept"
    data = os.path.join(node.workdir, "data")
    for name in os.listdir(data):
        path = os.path.join(data, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert token.encode() not in f.read(), name
