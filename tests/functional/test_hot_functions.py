"""Hot functions (SPEC §4, format ``http``) through a real daemon and the real engine:
the static C function ``iftest/hotfn:1`` (``tests/hotfn/hotfn.c``) and the busybox
shell function ``iftest/hot-sh:1``."""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, cast

import pytest

from ironfunctions.models import LABEL_KIND, LABEL_NODE, LABEL_PATH
from tests.daemon import Daemon, DaemonFactory, Reply, RoutedDaemon
from tests.images import bridge_binary, image_tag, test_images  # noqa: F401 (session fixtures)

# Per test run: a daemon removes the containers its NODE_ID left behind, so two runs
# sharing one Docker engine (developers, CI) must not share it.
NODE = f"hot-test-node-{os.getpid()}"


class HotDaemon(RoutedDaemon):
    """For the type checker only: the ``hot`` fixture's daemon, which also knows its transport."""

    transport: str


@pytest.fixture(params=["attach", "socket"])
def hot(request: pytest.FixtureRequest, test_images: dict[str, str], bridge_binary: str, daemon_factory: DaemonFactory) -> HotDaemon:  # noqa: F811
    """A daemon with the test images, once per ``HOT_TRANSPORT``;
    ``hot.route(path, image="hotfn", **fields)``."""
    daemon = cast(HotDaemon, daemon_factory(env={"NODE_ID": NODE, "MAX_CONCURRENCY": "8", "MAX_RESPONSE_SIZE": "1MiB",
                                 "HOT_TRANSPORT": request.param}))
    daemon.transport = request.param

    daemon.route = lambda path, image="hotfn", **fields: daemon.add_route(
        "hotapp", path, image_tag(image), format="http", **fields)
    return daemon


def hot_containers(path: str | None = None) -> list[str]:
    labels = [f"{LABEL_NODE}={NODE}", f"{LABEL_KIND}=hot"] + ([f"{LABEL_PATH}={path}"] if path else [])
    args = ["docker", "ps", "-aq"] + [f"--filter=label={label}" for label in labels]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def socket_files(daemon: Daemon) -> list[str]:
    """The daemon's hot-container socket files (``HOT_TRANSPORT=socket``): in
    ``hot-sockets/<container>/s``, or ``hot-sockets/w<worker>/<container>/s`` with
    worker processes."""
    root = os.path.join(daemon.workdir, "data", "hot-sockets")
    return sorted(glob.glob(os.path.join(root, "*", "s")) + glob.glob(os.path.join(root, "w*", "*", "s")))


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def error_of(reply: Reply) -> str:
    return cast(str, reply.json()["error"]["message"])


def test_one_container_serves_many_calls_in_order(hot: HotDaemon) -> None:
    hot.route("/echo")
    replies = [hot.post("/r/hotapp/echo", f"body {i}") for i in range(30)]
    assert [r.status for r in replies] == [200] * 30
    assert [r.body for r in replies] == [f"body {i}".encode() for i in range(30)]
    assert [int(cast(str, r.header("x-call-count"))) for r in replies] == list(range(1, 31))
    assert len({r.header("x-container") for r in replies}) == 1
    assert len(hot_containers("/echo")) == 1
    timing = cast(str, replies[-1].header("server-timing"))
    assert timing.startswith("wait;dur=0, start;dur=0, run;dur=")


def test_function_status_and_headers_are_honoured_with_route_headers_added(hot: HotDaemon) -> None:
    hot.route("/status", headers={"X-Route": ["r1"]})
    reply = hot.post("/r/hotapp/status", "x", headers={"X-Mode": "status", "X-Status": "201"})
    assert reply.status == 201
    assert reply.header("x-custom") == "yes"
    assert reply.header("x-route") == "r1"
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert reply.header("fn-call-id") and reply.body == b"x"


def test_concurrent_calls_never_exceed_max_concurrency_containers(hot: HotDaemon) -> None:
    hot.route("/slow", max_concurrency=2)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(hot_containers("/slow")))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        began = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(
                lambda i: hot.post("/r/hotapp/slow", str(i), headers={"X-Mode": "sleep", "X-Sleep": "1"}),
                range(6),
            ))
        elapsed = time.monotonic() - began
    finally:
        done.set()
        watcher.join()
    assert [r.status for r in replies] == [200] * 6
    assert sorted(r.body for r in replies) == [str(i).encode() for i in range(6)]
    assert len({r.header("x-container") for r in replies}) == 2
    assert max(seen) <= 2
    assert elapsed >= 2.9  # 6 one-second calls, two at a time
    waits = [int(cast(str, r.header("server-timing")).split(",")[0].split("=")[1]) for r in replies]
    assert max(waits) >= 900  # calls that waited their turn report it as wait time


def test_concurrent_calls_each_get_their_own_body(hot: HotDaemon) -> None:
    hot.route("/mix", max_concurrency=3)
    bodies = [f"call-{i}-" * (1 + i % 7) for i in range(90)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda b: hot.post("/r/hotapp/mix", b), bodies))
    assert [r.status for r in replies] == [200] * 90
    assert [r.body.decode() for r in replies] == bodies
    # Never more than 3 at once (test_concurrent_calls_never_exceed_max_concurrency_containers);
    # with worker processes a container may move between workers once (evened out), so
    # count those left, not the ids seen.
    wait_for(lambda: len(hot_containers("/mix")) <= 3)  # one given back may still be going


def test_idle_container_is_stopped_and_removed(hot: HotDaemon) -> None:
    hot.route("/idle", idle_timeout=1)
    first = hot.post("/r/hotapp/idle", "a")
    assert first.status == 200 and len(hot_containers("/idle")) == 1
    wait_for(lambda: not hot_containers("/idle"), timeout=6)
    wait_for(lambda: not socket_files(hot))
    again = hot.post("/r/hotapp/idle", "b")
    assert again.status == 200 and again.header("x-call-count") == "1"
    assert again.header("x-container") != first.header("x-container")


@pytest.mark.parametrize(
    "mode, message",
    [
        ("die", "Function exited unexpectedly"),
        ("garbage", "Invalid function response: output is not an HTTP response"),
        ("nolength", "Invalid function response: response without Content-Length"),
        ("extra", "Invalid function response: more than one response to a request"),
    ],
)
def test_broken_container_gets_502_and_is_replaced(hot: HotDaemon, mode: str, message: str) -> None:
    hot.route("/broken")
    before = hot.post("/r/hotapp/broken", "warm")
    assert before.status == 200
    reply = hot.post("/r/hotapp/broken", "x", headers={"X-Mode": mode})
    assert reply.status == 502 and error_of(reply) == message
    assert reply.json()["request_id"] == reply.header("fn-call-id")
    after = hot.post("/r/hotapp/broken", "next")
    assert (after.status, after.body, after.header("x-call-count")) == (200, b"next", "1")
    assert after.header("x-container") != before.header("x-container")
    wait_for(lambda: len(hot_containers("/broken")) == 1)
    if hot.transport == "socket":  # the broken container's socket went with it
        wait_for(lambda: len(socket_files(hot)) == 1)


def test_call_overrunning_its_timeout_gets_504_after_its_container_is_killed(hot: HotDaemon) -> None:
    # The timeout also bounds the wait for the replacement container: 3 s, not 1, so a
    # start slowed by a busy machine is not a 503.
    hot.route("/sleepy", timeout=3)
    before = hot.post("/r/hotapp/sleepy", "warm")
    reply = hot.post("/r/hotapp/sleepy", "x", headers={"X-Mode": "sleep", "X-Sleep": "30"})
    assert reply.status == 504 and error_of(reply) == "Timed out"
    assert hot_containers("/sleepy") == []  # killed and removed before the 504
    after = hot.post("/r/hotapp/sleepy", "next")
    assert (after.status, after.body, after.header("x-call-count")) == (200, b"next", "1")
    assert after.header("x-container") != before.header("x-container")


def test_response_over_max_response_size_is_502_and_the_container_replaced(hot: HotDaemon) -> None:
    hot.route("/big")
    ok = hot.post("/r/hotapp/big", "", headers={"X-Mode": "big", "X-Size": "1000"})
    assert ok.status == 200 and ok.body == b"x" * 1000
    reply = hot.post("/r/hotapp/big", "", headers={"X-Mode": "big", "X-Size": str(2 * 1024 * 1024)})
    assert reply.status == 502 and error_of(reply) == "Function response too large"
    after = hot.post("/r/hotapp/big", "next")
    assert (after.status, after.body, after.header("x-call-count")) == (200, b"next", "1")


def test_route_update_and_delete_retire_the_containers(hot: HotDaemon) -> None:
    hot.route("/upd")
    first = hot.post("/r/hotapp/upd", "a")
    assert len(hot_containers("/upd")) == 1
    reply = hot.request("PATCH", "/v1/apps/hotapp/routes/upd", {"route": {"config": {"k": "v"}}})
    assert reply.status == 200
    wait_for(lambda: cast(str, first.header("x-container")) not in " ".join(hot_containers("/upd")), timeout=5)
    second = hot.post("/r/hotapp/upd", "b")
    assert second.status == 200 and second.header("x-container") != first.header("x-container")
    assert hot.request("DELETE", "/v1/apps/hotapp/routes/upd").status == 200
    wait_for(lambda: not hot_containers("/upd"), timeout=5)


def test_stderr_is_logged_with_the_call_id_and_metrics_are_per_call(hot: HotDaemon) -> None:
    hot.route("/log")
    reply = hot.post("/r/hotapp/log", "x", headers={"X-Mode": "stderr"})
    call_id = reply.header("fn-call-id")
    assert reply.status == 200
    wait_for(lambda: f"log {call_id}" in hot.log())
    # Metric lines are coalesced: they follow within 50 ms.
    wait_for(lambda: f"metric=run.succeeded value=1 type=count app=hotapp path=/log call_id={call_id}" in hot.log())
    lines = hot.log().splitlines()
    assert any(f"log {call_id}" in line and f"call_id={call_id}" in line for line in lines)
    assert any("metric=run.requests " in line and f"call_id={call_id}" in line for line in lines)
    assert any("metric=run.succeeded " in line and f"call_id={call_id}" in line for line in lines)
    # The node gauges report hot containers per route every 5 s.
    wait_for(lambda: any("metric=hot.containers value=1 type=gauge" in line and "path=/log" in line
                         for line in hot.log().splitlines()), timeout=8)


def test_busybox_shell_function_in_the_ironfunctions_style(hot: HotDaemon) -> None:
    hot.route("/sh", image="hot-sh")
    for i in range(3):
        reply = hot.request("PUT", "/r/hotapp/sh", f"n{i}")
        assert (reply.status, reply.body) == (200, f"hello n{i} from PUT".encode())
    assert len(hot_containers("/sh")) == 1


def test_daemon_stop_removes_the_hot_containers(hot: HotDaemon) -> None:
    hot.route("/a")
    hot.route("/b", image="hot-sh")
    assert hot.post("/r/hotapp/a", "x").status == 200
    assert hot.post("/r/hotapp/b", "x").status == 200
    assert len(hot_containers()) == 2
    assert len(socket_files(hot)) == (2 if hot.transport == "socket" else 0)
    began = time.monotonic()
    hot.stop()
    assert time.monotonic() - began < 15
    assert hot_containers() == []
    assert socket_files(hot) == []


def test_a_crashed_daemons_hot_containers_and_sockets_are_cleaned_at_restart(hot: HotDaemon) -> None:
    hot.route("/crash")
    assert hot.post("/r/hotapp/crash", "x").status == 200
    hot.kill()
    assert len(hot_containers("/crash")) == 1
    assert len(socket_files(hot)) == (1 if hot.transport == "socket" else 0)
    hot.restart()
    wait_for(lambda: not hot_containers("/crash"))
    assert socket_files(hot) == []
    reply = hot.post("/r/hotapp/crash", "again")
    assert (reply.status, reply.body, reply.header("x-call-count")) == (200, b"again", "1")


def test_cancelling_a_running_hot_call_kills_its_container_only(hot: HotDaemon) -> None:
    from concurrent.futures import ThreadPoolExecutor

    hot.route("/slow", timeout=60)
    assert hot.post("/r/hotapp/slow", "warm").status == 200
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hot.post, "/r/hotapp/slow", "x", headers={"X-Mode": "sleep", "X-Sleep": "50"}, timeout=60)
        call_id = None
        deadline = time.monotonic() + 10
        while call_id is None and time.monotonic() < deadline:
            running = hot.get("/v1/apps/hotapp/calls?status=running").json()["calls"]
            call_id = running[0]["id"] if running else None
            time.sleep(0.1)
        assert call_id, "the running hot call was never listed"
        assert hot.request("DELETE", f"/v1/apps/hotapp/calls/{call_id}").status == 200
        answer = pending.result(timeout=20)
    assert (answer.status, error_of(answer)) == (502, "Call cancelled")
    # The next call gets a fresh container.
    reply = hot.post("/r/hotapp/slow", "again")
    assert (reply.status, reply.body) == (200, b"again")


def test_a_function_that_exits_at_once_is_a_quick_502_not_a_restart_loop(hot: HotDaemon) -> None:
    """A hot route whose program exits immediately: the call gets 502 'Function exited
    unexpectedly' at once, not a 503 after restarting containers until the timeout."""
    hot.route("/quits", image="exit-code", timeout=20, config={"EXIT_CODE": "0"})
    began = time.monotonic()
    reply = hot.post("/r/hotapp/quits", "x")
    # It also prints a line first, which may arrive before the exit is noticed.
    assert reply.status == 502
    assert error_of(reply) in ("Function exited unexpectedly",
                               "Invalid function response: output is not an HTTP response")
    assert time.monotonic() - began < 10


def test_an_idle_hot_container_gives_its_slot_to_a_cold_call(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    """With one container slot on the node, an idle hot container (idle_timeout 300 s)
    must not keep a cold call out: the cold call stops it and runs."""
    daemon = daemon_factory(env={"NODE_ID": NODE, "MAX_CONCURRENCY": "1"})
    daemon.add_route("hotapp", "/hot", image_tag("hotfn"), format="http", idle_timeout=300)
    daemon.add_route("hotapp", "/cold", image_tag("cat"))
    assert daemon.post("/r/hotapp/hot", "warm").status == 200
    assert len(hot_containers("/hot")) == 1
    began = time.monotonic()
    reply = daemon.post("/r/hotapp/cold", "cold body")
    assert reply.status == 200 and reply.body == b"cold body"
    assert time.monotonic() - began < 5  # not the 10 s admission bound, nor the idle timeout
    wait_for(lambda: not hot_containers("/hot"))
    assert daemon.post("/r/hotapp/hot", "again").status == 200  # and the route still works
