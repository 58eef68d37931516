"""Clients are bounded (SPEC §8, issue 13), against a real daemon over raw sockets:
a slow head gets 408 although it trickles in, a slow body gets 408, an idle keep-alive
connection closes, bare-LF heads are answered at once, the connection cap answers 503
(and ``/health`` still answers at the cap), and stalled uploads do not grow the daemon
while a large body sent after them reaches the function intact."""

from __future__ import annotations

import os
import re
import resource
import socket
import time
from typing import Iterator

import pytest

from bench.common import rss_kb
from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)

MIB = 1024 * 1024


def connect(daemon: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything until the daemon closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


@pytest.fixture
def quick(daemon_factory: DaemonFactory) -> Daemon:
    return daemon_factory(env={"HEADER_TIMEOUT": "2s", "IDLE_TIMEOUT": "2s"})


def keep_alive_exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    if length is None:  # chunked
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
        return head
    while len(body) < int(length.group(1)):
        body += sock.recv(65536)
    return head


@pytest.mark.parametrize("channel", ["lean", "twisted.web"])
def test_a_head_sent_a_line_a_second_gets_408_within_the_header_timeout(quick: Daemon, channel: str) -> None:
    sock = connect(quick)
    if channel == "twisted.web":  # a request twisted.web frames: the connection is its for good
        keep_alive_exchange(sock, b"GET /version HTTP/1.1\r\nHost: h\r\n\r\n")
    started = time.monotonic()
    sock.sendall(b"POST /r/app/path HTTP/1.1\r\nHost: h\r\n")
    sock.settimeout(0.5)
    answer = b""
    for n in range(20):
        try:
            sock.sendall(b"X-Slow-%d: y\r\n" % n)
            answer = sock.recv(65536)
            if answer:
                break
        except socket.timeout:
            continue
        except OSError:
            break
    answer += read_answer(sock, 5)
    elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer
    assert b"connection: close" in answer.lower() and b"Request head not received in time" in answer
    assert 1.5 <= elapsed <= 5.0


def test_a_body_slower_than_the_minimum_rate_gets_408(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(env={"BODY_MIN_RATE": "10KiB/s"})
    sock = connect(daemon)
    sock.sendall(b"POST /r/app/path HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
    sock.settimeout(0.5)
    started = time.monotonic()
    answer = b""
    while time.monotonic() - started < 20 and not answer:
        try:
            sock.sendall(b"x" * 1000)  # 2 KB/s
            answer = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
    answer += read_answer(sock, 5)
    assert status_of(answer) == 408 and b"Request body too slow" in answer
    assert 9 <= time.monotonic() - started <= 15


def test_an_idle_keep_alive_connection_closes_after_the_idle_timeout(quick: Daemon) -> None:
    sock = connect(quick)
    keep_alive_exchange(sock, b"GET /r/app/path HTTP/1.1\r\nHost: h\r\n\r\n")
    started = time.monotonic()
    assert read_answer(sock, 10) == b""  # closed, without a word
    assert 1.5 <= time.monotonic() - started <= 5.0


@pytest.mark.parametrize("channel", ["lean", "twisted.web"])
@pytest.mark.parametrize("request_bytes", [b"GET /r/app/path HTTP/1.1\nHost: h\n\n", b"GET /health HTTP/1.1\nHost: h\n\n"])
def test_a_bare_lf_head_is_answered_at_once(daemon: Daemon, channel: str, request_bytes: bytes) -> None:
    sock = connect(daemon)
    if channel == "twisted.web":
        keep_alive_exchange(sock, b"GET /version HTTP/1.1\r\nHost: h\r\n\r\n")
    sock.sendall(request_bytes)
    answer = read_answer(sock, 5)
    assert status_of(answer) == 400 and b"bare LF" in answer


def limit_files(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def test_beyond_the_connection_cap_503_and_health_still_answers(daemon_factory: DaemonFactory) -> None:
    # One process: the cap's formula and its one warning (a node of workers shares the
    # cap out: tests/functional/test_worker_lifecycle.py).
    daemon = daemon_factory(env={"MAX_CONCURRENCY": "4", "WORKERS": "1"}, start=False)
    daemon.preexec = lambda: limit_files(256)
    daemon.start()
    cap = int(re.search(r"connection_cap=(\d+)", daemon.log()).group(1))  # type: ignore[union-attr]
    assert cap == 256 - (64 + 4 * 4)
    held = []
    try:
        for _ in range(cap + 20):  # more than it serves: the rest are refused or checked
            held.append(connect(daemon))
        time.sleep(0.5)
        sock = connect(daemon)
        sock.sendall(b"GET /r/app/path HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = read_answer(sock, 10)
        assert status_of(answer) == 503 and b"retry-after: 5" in answer.lower()
        assert b'{"error":{"message":"Too many connections' in answer
        started = time.monotonic()
        assert daemon.get("/health", timeout=5).status == 200
        assert time.monotonic() - started < 0.5
        assert daemon.log().count("Connection cap reached (") == 1  # one warning, not one per refusal
    finally:
        for sock in held:
            sock.close()
    assert daemon.get("/health").status == 200


@pytest.fixture
def cat_daemon(test_images: dict[str, str], daemon_factory: DaemonFactory) -> Iterator[Daemon]:  # noqa: F811
    daemon = daemon_factory(env={"MAX_BUFFERED": "16MiB"})
    daemon.add_route("app", "/cat", image_tag("cat"))
    yield daemon


def test_stalled_uploads_do_not_grow_the_daemon_and_a_large_body_still_arrives_intact(cat_daemon: Daemon) -> None:
    daemon = cat_daemon
    assert daemon.post("/r/app/cat", b"warm").body == b"warm"  # the image's first start is not measured
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = rss_kb(pid)
    length = 6_000_000
    stalled = []
    chunk = b"s" * (length - 1000)
    try:
        for _ in range(30):
            sock = connect(daemon)
            sock.sendall(b"POST /r/app/cat HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length + chunk)
            stalled.append(sock)
        time.sleep(2)
        growth_mib = (rss_kb(pid) - before) / 1024
        assert growth_mib <= 40, f"RSS grew {growth_mib:.0f} MiB under 30 stalled uploads"
        assert daemon.get("/version").status == 200
        body = os.urandom(length)
        reply = daemon.post("/r/app/cat", body, timeout=60)
        assert reply.status == 200 and reply.body == body
    finally:
        for sock in stalled:
            sock.close()
