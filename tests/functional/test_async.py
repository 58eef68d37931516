"""Async calls and call records through real daemons, the real Docker engine, SQLite,
Redis and Postgres (SPEC §3 Calls, §4 Async)."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Collection, cast


from tests.daemon import Daemon, DaemonFactory, RoutedDaemon
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import RedisServer, start_redis_server, stop_redis_server

TERMINAL = {"success", "error", "timeout", "cancelled"}


def make_fn(daemon_factory: Callable[..., Daemon], **env: object) -> RoutedDaemon:
    settings = {"ASYNC_RETRY_DELAY": "100ms", "MAX_CONCURRENCY": "8"}
    settings.update({k: str(v) for k, v in env.items()})
    daemon = cast(RoutedDaemon, daemon_factory(env=settings))

    daemon.route = lambda path, image, **fields: daemon.add_route("myapp", path, image_tag(image), **fields)
    return daemon


def wait_for(daemon: Daemon, call_id: str, statuses: Collection[str] = TERMINAL, timeout: float = 60.0, app: str = "myapp") -> Any:
    """Poll the call record until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        reply = daemon.get(f"/v1/apps/{app}/calls/{call_id}")
        if reply.status == 200:
            last = reply.json()["call"]
            if last["status"] in statuses:
                return last
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} still {last and last['status']} after {timeout}s")


def submit(daemon: Daemon, path: str, body: bytes = b"", **kw: Any) -> str:
    reply = daemon.post(f"/r/myapp{path}", body, **kw)
    assert reply.status == 202, (reply.status, reply.body)
    call_id: str = reply.json()["call_id"]
    assert reply.header("fn-call-id") == call_id
    return call_id


def test_async_call_is_accepted_then_run_with_result_and_log(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory)
    fn.route("/cat", "stderr-chatter", type="async")
    fn.route("/echo", "cat", type="async")
    call_id = submit(fn, "/echo", b"hello async")
    record = wait_for(fn, call_id)
    assert record["status"] == "success", record
    assert record["body"] == "hello async"
    assert (record["type"], record["attempt"], record["exit_code"]) == ("async", 1, 0)
    for key in ("created_at", "started_at", "completed_at"):
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record[key]), record
    chatty = wait_for(fn, submit(fn, "/cat", b"x"))
    log = fn.get(f"/v1/apps/myapp/calls/{chatty['id']}/log")
    assert log.status == 200 and cast(str, log.header("content-type")).startswith("text/plain") and log.body


def test_failing_async_call_is_retried_then_listed_as_dead(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory, ASYNC_MAX_ATTEMPTS=3)
    fn.route("/fail", "exit-code", type="async", config={"EXIT_CODE": "3"})
    call_id = submit(fn, "/fail")
    record = wait_for(fn, call_id, {"error"})
    assert (record["attempt"], record["error"], record["exit_code"]) == (3, "exit code 3", 3)
    dead = fn.get("/v1/apps/myapp/calls?status=error").json()["calls"]
    assert [c["id"] for c in dead] == [call_id]


def test_sync_calls_are_recorded_off_the_request_path(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory)
    fn.route("/echo", "cat")
    reply = fn.post("/r/myapp/echo", b"sync")
    assert reply.status == 200
    record = wait_for(fn, cast(str, reply.header("fn-call-id")), timeout=10)
    assert (record["status"], record["type"], record["path"]) == ("success", "sync", "/echo")
    assert "body" not in record
    listed = fn.get("/v1/apps/myapp/calls?path=/echo").json()
    assert [c["id"] for c in listed["calls"]] == [record["id"]] and listed["next_cursor"] is None


def test_cancel_a_queued_call(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory, NUM_ASYNC=1)
    fn.route("/sleep", "sleep", type="async", config={"SLEEP": "2"})
    fn.route("/echo", "cat", type="async")
    busy = submit(fn, "/sleep")
    wait_for(fn, busy, {"running"})
    waiting = submit(fn, "/echo", b"never")
    reply = fn.request("DELETE", f"/v1/apps/myapp/calls/{waiting}")
    assert reply.status == 200 and reply.json()["call"]["status"] == "cancelled"
    assert wait_for(fn, busy)["status"] == "success"
    time.sleep(0.5)
    record = fn.get(f"/v1/apps/myapp/calls/{waiting}").json()["call"]
    assert (record["status"], record["reason"], record["started_at"]) == ("cancelled", "client_request", None)
    assert fn.request("DELETE", f"/v1/apps/myapp/calls/{busy}").status == 409


def test_cancel_a_running_call_stops_its_container(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory, NUM_ASYNC=1)
    fn.route("/sleep", "sleep", type="async", config={"SLEEP": "60"}, timeout=120)
    call_id = submit(fn, "/sleep")
    wait_for(fn, call_id, {"running"})
    time.sleep(0.5)
    assert fn.request("DELETE", f"/v1/apps/myapp/calls/{call_id}").status == 200
    started = time.monotonic()
    # The worker notices within a lease-renewal tick and frees itself for the next call.
    fn.route("/echo", "cat", type="async")
    assert wait_for(fn, submit(fn, "/echo", b"next"), timeout=30)["status"] == "success"
    assert time.monotonic() - started < 30
    assert fn.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]["status"] == "cancelled"


def test_queue_down_means_503_never_202(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    redis = start_redis_server()
    try:
        fn = make_fn(daemon_factory, MQ_URL=redis.url())
        fn.route("/echo", "cat", type="async")
        assert wait_for(fn, submit(fn, "/echo", b"up"))["status"] == "success"
        redis.stop()
        reply = fn.post("/r/myapp/echo", b"down")
        assert reply.status == 503, reply.body
        assert "queue unavailable" in reply.json()["error"]["message"]
        assert reply.header("retry-after")
    finally:
        stop_redis_server(redis)


def test_tasks_protocol_for_external_runners(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    fn = make_fn(daemon_factory, NUM_ASYNC=0)
    fn.route("/echo", "cat", type="async", timeout=5)
    assert fn.get("/tasks").json() == {}
    call_id = submit(fn, "/echo", b"for the runner")
    reply = fn.get("/tasks")
    assert reply.status == 202
    task = reply.json()
    assert (task["call_id"], task["app_name"], task["path"], task["payload"]) == (call_id, "myapp", "/echo", "for the runner")
    assert task["id"].endswith("." + call_id)  # the reservation, which the runner sends back
    assert task["image"] == image_tag("cat") and task["env_vars"]["CALL_ID"] == call_id
    assert fn.get("/tasks").json() == {}  # reserved: nobody else gets it
    assert wait_for(fn, call_id, {"running"})["status"] == "running"
    reply = fn.request("DELETE", "/tasks", json.dumps(task))
    assert reply.status == 202
    record = fn.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]
    assert (record["status"], record["reason"]) == ("success", "external_runner")
    assert fn.request("DELETE", "/tasks", json.dumps(task)).status == 404  # the reservation is over
    assert fn.request("DELETE", "/tasks", b"{}").status == 400
    assert fn.request("DELETE", "/tasks", b"not json").status == 400


def test_kill_9_mid_calls_loses_nothing(test_images: dict[str, str], daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """Every accepted call reaches a terminal state after a crash and restart; a call
    that ran twice says so (attempt 2)."""
    workdir = str(tmp_path / "crashy")
    env = {"NUM_ASYNC": "2", "NODE_ID": "crashy-node"}
    fn = make_fn(lambda env=None, **kw: daemon_factory(env=env, workdir=workdir, **kw), **env)
    fn.route("/sleep", "sleep", type="async", config={"SLEEP": "1"}, timeout=3)
    ids = [submit(fn, "/sleep") for _ in range(8)]
    wait_for(fn, ids[0], {"running", "success"})
    fn.kill()
    fn.start()
    records = [wait_for(fn, call_id, timeout=90) for call_id in ids]
    assert all(r["status"] == "success" for r in records), records
    assert all(r["attempt"] in (1, 2) for r in records)


def test_redis_restart_during_submits_loses_nothing_accepted(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:
    redis = start_redis_server(persistent=True)
    try:
        fn = make_fn(daemon_factory, MQ_URL=redis.url(), NUM_ASYNC=4)
        fn.route("/echo", "cat", type="async")
        accepted, refused = [], 0
        stop_at = time.monotonic() + 4
        restarted = threading.Event()

        def restart() -> None:
            time.sleep(1)
            redis.stop()
            time.sleep(1)
            redis.start()
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()
        while time.monotonic() < stop_at or not restarted.is_set():
            reply = fn.post("/r/myapp/echo", b"x", timeout=10)
            if reply.status == 202:
                accepted.append(reply.json()["call_id"])
            else:
                assert reply.status == 503, (reply.status, reply.body)
                refused += 1
            time.sleep(0.02)
        assert accepted and refused, (len(accepted), refused)
        for call_id in accepted:
            assert wait_for(fn, call_id, timeout=120)["status"] == "success"
    finally:
        stop_redis_server(redis)


def test_two_daemons_on_one_redis_and_postgres_run_each_call_once(
    test_images: dict[str, str], daemon_factory: DaemonFactory, redis_server: RedisServer, postgres_db: str
) -> None:
    env = {"MQ_URL": redis_server.url(prefix="twonodes"), "DB_URL": postgres_db, "NUM_ASYNC": "4"}
    a = make_fn(daemon_factory, NODE_ID="node-a", **env)
    b = make_fn(daemon_factory, NODE_ID="node-b", **env)
    a.route("/echo", "cat", type="async")
    targets = [a, b]
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: submit(targets[n % 2], "/echo", b"n%d" % n), range(200)))
    records = [wait_for(a, call_id, timeout=240) for call_id in ids]
    assert all(r["status"] == "success" and r["attempt"] == 1 for r in records)
    assert sorted(r["body"] for r in records) == sorted("n%d" % n for n in range(200))
    a.stop()
    b.stop()
    # Each call ran once: exactly one run.requests metric line per call id across both nodes.
    runs = re.findall(r"metric=run\.requests value=1 type=count .*?call_id=(\w+)", a.log() + b.log())
    assert sorted(runs) == sorted(ids)
