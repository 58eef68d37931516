"""SPEC §4 for cold sync calls, through a real daemon (``twistd -n ironfunctions``) and
the real Docker engine, with the test images built locally FROM scratch."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from ironfunctions.models import LABEL_CALL, LABEL_NODE
from tests.daemon import DaemonFactory, Reply, RoutedDaemon
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)


@pytest.fixture
def fn(test_images: dict[str, str], daemon_factory: DaemonFactory) -> RoutedDaemon:  # noqa: F811
    """A daemon with Docker and the test images; ``fn.route(path, image, **fields)``."""
    daemon = cast(RoutedDaemon, daemon_factory(env={"NODE_ID": f"fn-test-node-{os.getpid()}", "MAX_CONCURRENCY": "8"}))

    daemon.route = lambda path, image, **fields: daemon.add_route("myapp", path, image_tag(image), **fields)
    return daemon


def containers(*labels: str) -> list[str]:
    args = ["docker", "ps", "-aq"] + [f"--filter=label={label}" for label in labels]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def error_of(reply: Reply) -> str:
    assert reply.body.endswith(b"\n")
    data = reply.json()
    assert data["request_id"] == reply.header("fn-call-id")
    return cast(str, data["error"]["message"])


def test_hello_example_answers_with_the_name_or_world(fn: RoutedDaemon) -> None:
    reply = fn.post("/v1/apps/myapp/routes", {"route": {"path": "/hello", "image": "iron/hello:latest"}})
    assert reply.status == 200
    reply = fn.post("/r/myapp/hello", {"name": "Johnny"})
    assert (reply.status, reply.body) == (200, b"Hello Johnny!\n")
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert fn.get("/r/myapp/hello").body == b"Hello World!\n"


def test_every_response_has_a_call_id_and_server_timing(fn: RoutedDaemon) -> None:
    fn.route("/cat", "cat")
    ids: list[str] = []
    for _ in range(3):
        reply = fn.post("/r/myapp/cat", "x")
        ids.append(cast(str, reply.header("fn-call-id")))
        timing = cast(str, reply.header("server-timing"))
        parts = dict(cast("tuple[str, str]", p.strip().split(";dur=")) for p in timing.split(","))
        assert set(parts) == {"wait", "start", "run"} and all(v.isdigit() for v in parts.values())
    assert ids == sorted(ids) and len(set(ids)) == 3 and all(len(i) == 26 for i in ids)
    reply = fn.get("/r/myapp/nope")
    assert reply.header("fn-call-id") and reply.header("server-timing")


def test_body_of_any_method_and_get_payload_go_to_stdin(fn: RoutedDaemon) -> None:
    fn.route("/cat", "cat")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        reply = fn.request(method, "/r/myapp/cat", "body-" + method)
        assert (reply.status, reply.body) == (200, ("body-" + method).encode())
    reply = fn.get("/r/myapp/cat?payload=from-query")
    assert reply.body == b"from-query"


def test_environment_of_the_container(fn: RoutedDaemon) -> None:
    fn.post("/v1/apps", {"app": {"name": "myapp", "config": {"app-key": "A", "shared": "app"}}})
    fn.route("/env", "echo-env", config={"route-key": "R", "shared": "route"}, memory=64)
    reply = fn.request("PUT", "/r/myapp/env?q=1", "", headers={"X-Thing": "v", "Host": "example.org:9"})
    env = dict(line.split("=", 1) for line in reply.body.decode().splitlines())
    assert env["METHOD"] == "PUT"
    assert env["ROUTE"] == "/env"
    assert env["REQUEST_URL"] == "http://example.org:9/r/myapp/env?q=1"
    assert env["APP_NAME"] == "myapp"
    assert env["CALL_ID"] == reply.header("fn-call-id")
    assert env["FN_FORMAT"] == "default" and env["MEMORY_MB"] == "64"
    assert (env["APP_KEY"], env["ROUTE_KEY"], env["SHARED"]) == ("A", "R", "route")
    assert env["HEADER_X_THING"] == "v"


def test_route_headers_and_content_type(fn: RoutedDaemon) -> None:
    fn.route("/json", "cat", headers={"Content-Type": ["application/json"], "X-Multi": ["a", "b"]})
    reply = fn.post("/r/myapp/json", "{}")
    assert reply.header("content-type") == "application/json"
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fn.port, timeout=30)
    conn.request("POST", "/r/myapp/json", body=b"{}")
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.msg.get_all("x-multi") == ["a", "b"]  # every value, as separate lines


def test_nonzero_exit_is_502_exit_code(fn: RoutedDaemon) -> None:
    fn.route("/fail", "exit-code", config={"EXIT_CODE": "7"})
    reply = fn.post("/r/myapp/fail")
    assert (reply.status, error_of(reply)) == (502, "exit code 7")


def test_memory_limit_oom_is_502_out_of_memory(fn: RoutedDaemon) -> None:
    fn.route("/oom", "oom", memory=16, config={"OOM_MB": "64"})
    reply = fn.post("/r/myapp/oom")
    assert (reply.status, error_of(reply)) == (502, "out of memory")


def test_timeout_is_504_and_the_container_is_gone_when_it_arrives(fn: RoutedDaemon) -> None:
    fn.route("/slow", "sleep", timeout=1, config={"SLEEP": "30"})
    began = time.monotonic()
    reply = fn.post("/r/myapp/slow")
    elapsed = time.monotonic() - began
    assert (reply.status, error_of(reply)) == (504, "Timed out")
    assert elapsed < 5
    assert containers(f"{LABEL_CALL}={reply.header('fn-call-id')}") == []


def test_missing_image_is_502_quickly(fn: RoutedDaemon) -> None:
    fn.post("/v1/apps/myapp/routes", {"route": {"path": "/gone", "image": "iftest/not-here:1"}})
    began = time.monotonic()
    reply = fn.post("/r/myapp/gone")
    assert (reply.status, error_of(reply)) == (502, "Image not found: iftest/not-here:1")
    assert time.monotonic() - began < 15


def test_missing_app_and_route_are_404(fn: RoutedDaemon) -> None:
    reply = fn.get("/r/nope/x")
    assert (reply.status, error_of(reply)) == (404, "App not found")
    fn.route("/cat", "cat")
    reply = fn.get("/r/myapp/nope")
    assert (reply.status, error_of(reply)) == (404, "Route not found on that application")


def test_oversized_response_is_502(fn_small_response: RoutedDaemon) -> None:
    fn_small_response.route("/big", "big-output", config={"BYTES": "200000"})
    reply = fn_small_response.post("/r/myapp/big")
    assert (reply.status, error_of(reply)) == (502, "Function response too large")


@pytest.fixture
def fn_small_response(test_images: dict[str, str], daemon_factory: DaemonFactory) -> RoutedDaemon:  # noqa: F811
    daemon = cast(RoutedDaemon, daemon_factory(env={"MAX_RESPONSE_SIZE": "100000"}))

    daemon.route = lambda path, image, **fields: daemon.add_route("myapp", path, image_tag(image), **fields)
    return daemon


def test_stderr_is_logged_with_the_call_id(fn: RoutedDaemon) -> None:
    fn.route("/chatter", "stderr-chatter")
    reply = fn.post("/r/myapp/chatter")
    assert reply.body == b"ok\n"
    call_id = reply.header("fn-call-id")
    deadline = time.monotonic() + 5
    while "chatter line 3" not in fn.log():
        assert time.monotonic() < deadline, fn.log()
        time.sleep(0.05)
    lines = [line for line in fn.log().splitlines() if "chatter line" in line]
    assert len(lines) == 3 and all(f"call_id={call_id}" in line for line in lines)


def test_metrics_lines_per_call(fn: RoutedDaemon) -> None:
    fn.route("/cat", "cat")
    reply = fn.post("/r/myapp/cat", "x")
    call_id = reply.header("fn-call-id")
    deadline = time.monotonic() + 5
    wanted = ["run.requests", "run.myapp.requests", "run.succeeded", "run.myapp.succeeded",
              "run.wait_time", "run.start_time", "run.exec_time", "run.myapp.exec_time"]
    while True:
        lines = [line for line in fn.log().splitlines() if f"call_id={call_id}" in line]
        if all(any(f"metric={m} " in line for line in lines) for m in wanted):
            break
        assert time.monotonic() < deadline, "\n".join(lines)
        time.sleep(0.05)


def test_concurrent_calls_all_succeed_and_stats_count_them(fn: RoutedDaemon) -> None:
    fn.route("/cat", "cat")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: fn.post("/r/myapp/cat", str(i)), range(16)))
    assert [r.body for r in replies] == [str(i).encode() for i in range(16)]
    stats = fn.get("/stats").json()
    assert stats["Complete"] >= 16 and stats["Running"] == 0 and stats["Queue"] == 0


def test_leftover_containers_of_this_node_are_removed_at_start_and_at_stop(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    def leftover(node: str) -> str:
        return subprocess.run(
            ["docker", "create", "--label", f"{LABEL_NODE}={node}", image_tag("cat")],
            capture_output=True, text=True, check=True).stdout.strip()

    mine, other = leftover("crash-node"), leftover("someone-else")
    try:
        daemon = daemon_factory(env={"NODE_ID": "crash-node"})
        deadline = time.monotonic() + 10
        while containers(f"{LABEL_NODE}=crash-node"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert containers(f"{LABEL_NODE}=someone-else") == [other[:12]]
        daemon.post("/v1/apps/myapp/routes", {"route": {"path": "/slow", "image": image_tag("sleep"),
                                                          "timeout": 3, "config": {"SLEEP": "30"}}})
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(daemon.post, "/r/myapp/slow")
            while not containers(f"{LABEL_NODE}=crash-node"):
                time.sleep(0.05)
            daemon.kill()  # crash: the container stays behind
            pending.exception()
        assert containers(f"{LABEL_NODE}=crash-node")
        daemon.start()
        deadline = time.monotonic() + 10
        while containers(f"{LABEL_NODE}=crash-node"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # At stop (SIGTERM) the node removes its own containers: run one, stop mid-call.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(daemon.post, "/r/myapp/slow")
            while not containers(f"{LABEL_NODE}=crash-node"):
                time.sleep(0.05)
            daemon.stop()
            pending.exception()
        assert containers(f"{LABEL_NODE}=crash-node") == []
    finally:
        subprocess.run(["docker", "rm", "-f", mine, other], capture_output=True)


def test_metrics_also_go_to_statsd_over_udp(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    """STATSD_URL: each call's figures arrive as statsd datagrams (overall and per app)."""
    import socket

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(10)
    port = sink.getsockname()[1]
    try:
        d = daemon_factory(env={"STATSD_URL": f"udp://127.0.0.1:{port}"})
        d.post("/v1/apps/statsapp/routes", {"route": {"path": "/cat", "image": image_tag("cat")}})
        assert d.post("/r/statsapp/cat", "x").status == 200
        lines: list[str] = []
        deadline = time.monotonic() + 10
        while "run.statsapp.exec_time" not in "".join(lines) and time.monotonic() < deadline:
            lines.extend(sink.recv(65536).decode().splitlines())
        assert "run.requests:1|c" in lines and "run.statsapp.requests:1|c" in lines
        assert any(line.startswith("run.exec_time:") and line.endswith("|ms") for line in lines)
    finally:
        sink.close()


def test_invocation_path_is_normalised_like_the_stored_route(fn: RoutedDaemon) -> None:
    """/r/ looks routes up in the form the management API stores them: percent-escapes
    canonical, %2F kept inside its segment, trailing and repeated '/' ignored."""
    fn.route("/a%2Fb", "cat")
    fn.route("/hello world", "cat")
    assert fn.post("/r/myapp/a%2Fb", "1").body == b"1"
    assert fn.post("/r/myapp/a%2fb/", "2").body == b"2"
    assert fn.post("/r/myapp/a/b", "3").status == 404
    assert fn.post("/r/myapp//hello%20world", "4").body == b"4"
    reply = fn.post("/r/myapp/%zz", "5")
    assert (reply.status, error_of(reply)) == (404, "Route not found on that application")


def test_a_long_sync_call_is_listed_running_and_can_be_cancelled(fn: RoutedDaemon) -> None:
    """A sync call running over a second gets a 'running' record; DELETE on it removes
    its container, the caller gets 502 'Call cancelled', the record says cancelled."""
    fn.route("/sleep", "sleep", config={"SLEEP": "60"}, timeout=120)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fn.post, "/r/myapp/sleep", "", timeout=60)
        deadline = time.monotonic() + 10
        running: list[Any] = []
        while not running and time.monotonic() < deadline:
            running = fn.get("/v1/apps/myapp/calls?status=running").json()["calls"]
            time.sleep(0.1)
        assert running, "the running sync call was never listed"
        call_id = running[0]["id"]
        began = time.monotonic()
        reply = fn.request("DELETE", f"/v1/apps/myapp/calls/{call_id}")
        assert reply.status == 200 and reply.json()["call"]["status"] == "cancelled"
        answer = pending.result(timeout=30)
    assert time.monotonic() - began < 15
    assert (answer.status, error_of(answer)) == (502, "Call cancelled")
    assert containers(f"{LABEL_CALL}={call_id}") == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        record = fn.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]
        if record["status"] == "cancelled" and record["completed_at"]:
            break
        time.sleep(0.1)
    assert (record["status"], record["reason"]) == ("cancelled", "client_request")
    assert fn.request("DELETE", f"/v1/apps/myapp/calls/{call_id}").status == 409
