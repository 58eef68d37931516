"""Cancelling a running call through any node (SPEC §9, issue 14 item 3): two real
daemons on one Postgres and one Redis, the real Docker engine. Calls run on node A;
the DELETE goes to node B, as a round-robin balancer may send it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Iterator

import docker
import pytest

from ironfunctions.models import LABEL_CALL, LABEL_NODE
from tests.daemon import Daemon, DaemonFactory, Reply, RoutedDaemon
from tests.functional.test_async import make_fn, submit, wait_for
from tests.images import test_images  # noqa: F401 (session fixture)
from tests.servers import RedisServer


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture
def two_nodes(
    test_images: dict[str, str], daemon_factory: DaemonFactory, redis_server: RedisServer, postgres_db: str,
) -> tuple[RoutedDaemon, RoutedDaemon]:
    """Node A runs calls (sync and async); node B runs no async calls, so an async
    call runs on A."""
    shared = {"MQ_URL": redis_server.url(prefix=f"anynode-{uuid.uuid4().hex[:8]}"), "DB_URL": postgres_db}
    a = make_fn(daemon_factory, NODE_ID=f"node-a-{uuid.uuid4().hex[:6]}", **shared)
    b = make_fn(daemon_factory, NODE_ID=f"node-b-{uuid.uuid4().hex[:6]}", NUM_ASYNC=0, **shared)
    a.route("/sleep", "sleep", config={"SLEEP": "60"}, timeout=120)
    a.route("/sleep-async", "sleep", type="async", config={"SLEEP": "60"}, timeout=120)
    return a, b


def running_container_call(engine: docker.DockerClient, node: Daemon, timeout: float = 30) -> str:
    """The call id of the one container ``node`` runs, once it runs."""
    node_id = node.env["NODE_ID"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = engine.api.containers(filters={"label": f"{LABEL_NODE}={node_id}", "status": "running"})
        if found:
            assert len(found) == 1, found
            call_id: str = found[0]["Labels"][LABEL_CALL]
            return call_id
        time.sleep(0.02)
    raise AssertionError(f"no container started on {node_id} within {timeout}s")


def container_of(engine: docker.DockerClient, call_id: str) -> list[dict[str, Any]]:
    """The call's containers, in one engine request: ``containers.list`` inspects each
    one after listing them, and a container removed in between is a 404."""
    found: list[dict[str, Any]] = engine.api.containers(all=True, filters={"label": f"{LABEL_CALL}={call_id}"})
    return found


def assert_gone_within(engine: docker.DockerClient, call_id: str, since: float, seconds: float) -> None:
    """The call's container is stopped (gone, or exited and being removed) by ``since + seconds``."""
    while any(c["State"] == "running" for c in container_of(engine, call_id)):
        assert time.monotonic() - since < seconds, f"the container still runs {seconds}s after the cancel"
        time.sleep(0.02)
    while container_of(engine, call_id):  # removed soon after
        assert time.monotonic() - since < seconds + 10, "the container was not removed"
        time.sleep(0.05)


def in_background(request: Callable[[], Reply]) -> tuple[threading.Thread, list[Reply]]:
    out: list[Reply] = []
    thread = threading.Thread(target=lambda: out.append(request()), daemon=True)
    thread.start()
    return thread, out


def assert_cancelled_reply(thread: threading.Thread, out: list[Reply], call_id: str, within: float) -> None:
    """The sync client got what a cancel on its own node gives: 502 "Call cancelled"."""
    thread.join(within)
    assert out, f"the sync client still waits {within}s after the cancel"
    reply = out[0]
    assert reply.status == 502, (reply.status, reply.body)
    assert reply.json()["error"]["message"] == "Call cancelled"
    assert reply.header("fn-call-id") == call_id


def assert_final_record_cancelled(node: Daemon, call_id: str) -> None:
    # The final record comes from node A's recorder (batched off the request path).
    deadline = time.monotonic() + 15
    while True:
        record = wait_for(node, call_id)
        if record["completed_at"] is not None and record["status"] != "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (record["status"], record["reason"]) == ("cancelled", "client_request"), record


def test_a_short_sync_call_with_no_record_yet_is_cancelled_through_another_node(
    two_nodes: tuple[RoutedDaemon, RoutedDaemon], engine: docker.DockerClient,
) -> None:
    a, b = two_nodes
    thread, out = in_background(lambda: a.post("/r/myapp/sleep", b"", timeout=90))
    call_id = running_container_call(engine, a)
    assert b.get(f"/v1/apps/myapp/calls/{call_id}").status == 404  # no record yet (written after 1 s)
    started = time.monotonic()
    reply = b.request("DELETE", f"/v1/apps/myapp/calls/{call_id}")
    assert reply.status == 200, (reply.status, reply.body)
    record = reply.json()["call"]
    assert (record["id"], record["status"], record["reason"], record["path"]) == (
        call_id, "cancelled", "client_request", "/sleep")
    assert_cancelled_reply(thread, out, call_id, within=2)
    assert time.monotonic() - started < 2
    assert_gone_within(engine, call_id, started, 5)
    assert_final_record_cancelled(b, call_id)


def test_a_long_sync_call_with_a_running_record_is_cancelled_through_another_node(
    two_nodes: tuple[RoutedDaemon, RoutedDaemon], engine: docker.DockerClient,
) -> None:
    a, b = two_nodes
    thread, out = in_background(lambda: a.post("/r/myapp/sleep", b"", timeout=90))
    call_id = running_container_call(engine, a)
    wait_for(b, call_id, {"running"}, timeout=10)
    started = time.monotonic()
    reply = b.request("DELETE", f"/v1/apps/myapp/calls/{call_id}")
    assert reply.status == 200, (reply.status, reply.body)
    assert (reply.json()["call"]["status"], reply.json()["call"]["reason"]) == ("cancelled", "client_request")
    assert_cancelled_reply(thread, out, call_id, within=2)
    assert time.monotonic() - started < 2
    assert_final_record_cancelled(b, call_id)


def test_an_async_call_is_stopped_through_another_node_before_its_lease_check(
    two_nodes: tuple[RoutedDaemon, RoutedDaemon], engine: docker.DockerClient,
) -> None:
    a, b = two_nodes
    call_id = submit(b, "/sleep-async")
    assert running_container_call(engine, a) == call_id
    wait_for(b, call_id, {"running"}, timeout=10)
    started = time.monotonic()
    reply = b.request("DELETE", f"/v1/apps/myapp/calls/{call_id}")
    assert reply.status == 200, (reply.status, reply.body)
    # Without the bus, A's worker stops it at its next lease check, ~5 s after it started.
    assert_gone_within(engine, call_id, started, 2)
    record = b.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]
    assert (record["status"], record["reason"]) == ("cancelled", "client_request")


def test_a_cancel_of_an_unknown_call_is_404_at_once(two_nodes: tuple[RoutedDaemon, RoutedDaemon]) -> None:
    _, b = two_nodes
    started = time.monotonic()
    reply = b.request("DELETE", "/v1/apps/myapp/calls/01NOSUCHCALL0000000000000")
    assert reply.status == 404, (reply.status, reply.body)
    assert reply.json()["error"]["message"] == "Call not found"
    assert time.monotonic() - started < 1
