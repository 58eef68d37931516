"""Real daemons (``twistd -n ironfunctions``) on a real Postgres (issue 4).

Outages: Postgres stopped under a running daemon makes management requests fail fast
with 503 ``datastore unavailable`` (never a 500, a hang or an empty reply), and the
daemon serves again by itself when Postgres is back; a daemon started while Postgres is
down answers 503 until it comes up. These tests stop and start a cluster of this
module's own, never the session's shared one.

Several daemons on one Postgres: whatever one node changes, the others see; on ``/r/``
within the route cache's documented bound (entries live 1 s, see
``ironfunctions/routecache.py`` and docs/operating/databases.md).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest

from tests.daemon import Daemon, DaemonFactory, Reply
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import PostgresCluster, start_postgres_cluster, stop_postgres_cluster

UNAVAILABLE = {"error": {"message": "datastore unavailable"}}
# How long one request may take while Postgres is down. Connections to a stopped
# server are refused at once, so a request fails in milliseconds; the bound leaves room
# for a loaded test machine but catches the 5 s query deadline or a hang.
FAIL_FAST_S = 2.0
# How long a node may keep serving a route another node deleted (or keep answering
# 404 for one another node created): the route cache's 1 s TTL plus slack.
CACHE_BOUND_S = 2.0

ROUTE = {"path": "/hello", "image": "iron/hello", "memory": 64, "config": {"K": "v"},
         "headers": {"X-A": ["1"]}, "timeout": 10}


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


def timed(request: Callable[[], Reply]) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = request()
    return reply, time.monotonic() - started


def answers(daemon: Daemon, path: str, status: int) -> Reply | None:
    """The reply to GET ``path`` if it has ``status``, else None (also if no answer)."""
    try:
        reply = daemon.get(path, timeout=5)
    except OSError:
        return None
    return reply if reply.status == status else None


def error_of(reply: Reply) -> str:
    return str(reply.json()["error"]["message"])


# -- Outages


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A Postgres cluster of this module's own, which tests may stop and start."""
    cluster = start_postgres_cluster()
    yield cluster
    stop_postgres_cluster(cluster)



@pytest.fixture
def own_db(own_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database on the module's cluster; the cluster runs again when the test ends."""
    url = own_cluster.create_database()
    yield url
    if not own_cluster.accepts_connections():
        own_cluster.start()
    own_cluster.drop_database(url)


def test_outage_answers_503_fast_and_the_daemon_recovers_by_itself(own_cluster: PostgresCluster, own_db: str, daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(env={"DB_URL": own_db})
    assert daemon.post("/v1/apps", {"app": {"name": "kept", "config": {"A": "1"}}}).status == 200
    created = daemon.post("/v1/apps/kept/routes", {"route": ROUTE})
    assert created.status == 200, created.body

    own_cluster.stop()
    requests = [
        lambda: daemon.get("/v1/apps", timeout=10),
        lambda: daemon.post("/v1/apps", {"app": {"name": "during"}}, timeout=10),
        lambda: daemon.get("/v1/apps/kept/routes/hello", timeout=10),
        lambda: daemon.get("/v1/routes", timeout=10),
    ]
    for _ in range(2):  # right after the stop, and again once reconnecting has begun
        for request in requests:
            reply, seconds = timed(request)
            assert (reply.status, reply.json()) == (503, UNAVAILABLE), reply.body
            assert reply.header("content-type") == "application/json"
            assert seconds < FAIL_FAST_S, f"a request took {seconds:.2f}s during the outage"
        # The invocation path's route lookup (not cached yet) fails the same way.
        reply, seconds = timed(lambda: daemon.post("/r/kept/hello", "x", timeout=10))
        assert (reply.status, error_of(reply)) == (503, "datastore unavailable"), reply.body
        assert seconds < FAIL_FAST_S

    mark = daemon.log_mark()
    own_cluster.start()
    # Reconnection backs off to at most every 5 s (docs/operating/databases.md), in
    # each worker process on its own: wait until every worker has a connection back.
    wait_for(lambda: answers(daemon, "/v1/apps", 200), 10, "daemon serving again")
    wait_for(lambda: daemon.each_process_logged("Postgres connection re-established", mark), 10,
             "every worker reconnected")
    # Every request gets a live connection, not one still reconnecting.
    for _ in range(8):
        assert daemon.get("/v1/apps").status == 200
    apps = daemon.get("/v1/apps").json()["apps"]
    assert apps == [{"name": "kept", "config": {"A": "1"}}]
    assert daemon.get("/v1/apps/kept/routes/hello").json()["route"] == created.json()["route"]
    assert daemon.post("/v1/apps", {"app": {"name": "after"}}).status == 200


def test_daemon_started_while_postgres_is_down_answers_503_then_becomes_ready(
    own_cluster: PostgresCluster, own_db: str, daemon_factory: DaemonFactory
) -> None:
    own_cluster.stop()
    daemon = daemon_factory(env={"DB_URL": own_db}, start=False)
    daemon.start(wait=False)
    # It comes up (the listener answers) although its database is down...
    reply = wait_for(lambda: answers(daemon, "/v1/apps", 503), 20, "daemon answering 503")
    assert error_of(reply)
    assert reply.header("content-type") == "application/json"
    reply = daemon.post("/r/someapp/somepath", "x", timeout=10)
    assert reply.status == 503
    # ...and keeps answering at once while it retries.
    for _ in range(3):
        reply, seconds = timed(lambda: daemon.get("/v1/apps", timeout=10))
        assert reply.status == 503 and seconds < FAIL_FAST_S
    assert daemon.proc is not None and daemon.proc.poll() is None

    own_cluster.start()
    daemon.wait_ready(timeout=15)
    assert daemon.post("/v1/apps", {"app": {"name": "first"}}).status == 200
    assert [a["name"] for a in daemon.get("/v1/apps").json()["apps"]] == ["first"]


# -- Several daemons on one Postgres


@pytest.fixture
def two_daemons(postgres_db: str, daemon_factory: DaemonFactory) -> tuple[Daemon, Daemon]:
    """Two daemons sharing one fresh database (on the session's cluster)."""
    a = daemon_factory(env={"DB_URL": postgres_db, "NODE_ID": "pg-node-a"}, start=False)
    b = daemon_factory(env={"DB_URL": postgres_db, "NODE_ID": "pg-node-b"}, start=False)
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()
    return a, b


def test_routes_created_on_one_daemon_are_listed_and_loaded_on_the_other(two_daemons: tuple[Daemon, Daemon]) -> None:
    a, b = two_daemons
    created = a.post("/v1/apps/shared/routes", {"route": ROUTE})
    assert created.status == 200, created.body
    assert b.get("/v1/apps/shared").json()["app"] == {"name": "shared", "config": {}}
    assert b.get("/v1/apps/shared/routes/hello").json()["route"] == created.json()["route"]
    assert b.get("/v1/apps/shared/routes").json()["routes"] == [created.json()["route"]]
    assert b.get("/v1/routes").json()["routes"] == [created.json()["route"]]
    # A change through the other node is seen by the first, and duplicates collide.
    assert b.request("PATCH", "/v1/apps/shared/routes/hello", {"route": {"memory": 256}}).status == 200
    assert a.get("/v1/apps/shared/routes/hello").json()["route"]["memory"] == 256
    reply = b.post("/v1/apps/shared/routes", {"route": ROUTE})
    assert (reply.status, error_of(reply)) == (409, "Route already exists")


def test_app_and_route_deleted_on_one_daemon_are_gone_on_the_other(two_daemons: tuple[Daemon, Daemon]) -> None:
    a, b = two_daemons
    assert a.post("/v1/apps/gone/routes", {"route": ROUTE}).status == 200
    assert b.get("/v1/apps/gone/routes/hello").status == 200
    # The foreign key refuses to delete an app with routes, whichever node asks.
    reply = b.request("DELETE", "/v1/apps/gone")
    assert (reply.status, error_of(reply)) == (400, "Cannot remove apps with routes")

    assert a.request("DELETE", "/v1/apps/gone/routes/hello").status == 200
    reply = b.get("/v1/apps/gone/routes/hello")
    assert (reply.status, error_of(reply)) == (404, "Route not found")
    assert b.get("/v1/apps/gone/routes").json()["routes"] == []
    assert b.request("DELETE", "/v1/apps/gone/routes/hello").status == 404

    assert a.request("DELETE", "/v1/apps/gone").status == 200
    reply = b.get("/v1/apps/gone")
    assert (reply.status, error_of(reply)) == (404, "App not found")
    assert b.get("/v1/apps").json()["apps"] == []


def _poll_invoke(daemon: Daemon, path: str, want: int, timeout: float) -> list[tuple[float, int]]:
    """POST ``path`` until it answers ``want``; return (start time, status) of each try."""
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        status = daemon.post(path, "ping", timeout=30).status
        seen.append((started, status))
        if status == want:
            return seen
        if started > deadline:
            raise AssertionError(f"{path}: no {want} within {timeout}s: {seen}")
        time.sleep(0.05)


def _stale_after_bound(seen: list[tuple[float, int]], since: float, fresh: int) -> list[float]:
    """Start times (relative to ``since``) of stale answers given to requests that began
    after the bound: there must be none. A request that began in time may take long
    (a container run), so only the start counts."""
    return [t - since for t, status in seen if status != fresh and t - since > CACHE_BOUND_S]


def test_route_created_on_one_daemon_is_invocable_on_the_other_and_deletion_stops_it(
    test_images: dict[str, str], two_daemons: tuple[Daemon, Daemon]  # noqa: F811
) -> None:
    """Both directions of the cache bound: a 404 cached on B gives way to the route A
    created, and a route A deleted stops being served by B, each within ~1 s."""
    a, b = two_daemons
    assert a.post("/v1/apps", {"app": {"name": "inv"}}).status == 200
    reply = b.post("/r/inv/cat", "ping")  # B now caches "not found" for this route
    assert (reply.status, error_of(reply)) == (404, "Route not found on that application")

    route = {"path": "/cat", "image": image_tag("cat"), "timeout": 10}
    assert a.post("/v1/apps/inv/routes", {"route": route}).status == 200
    created_at = time.monotonic()
    seen = _poll_invoke(b, "/r/inv/cat", 200, 10)
    assert {status for _, status in seen} <= {200, 404}, seen
    assert not _stale_after_bound(seen, created_at, 200), seen
    # Each of B's worker processes caches for at most the bound: past it, all serve it.
    time.sleep(max(0.0, created_at + 1.2 - time.monotonic()))
    reply = b.post("/r/inv/cat", "through B")
    assert (reply.status, reply.body) == (200, b"through B")

    assert a.request("DELETE", "/v1/apps/inv/routes/cat").status == 200
    deleted_at = time.monotonic()
    seen = _poll_invoke(b, "/r/inv/cat", 404, 10)
    assert {status for _, status in seen} <= {200, 404}, seen
    assert not _stale_after_bound(seen, deleted_at, 404), seen
    # Each of B's worker processes caches for at most the bound: past it, none serves it.
    time.sleep(max(0.0, deleted_at + 1.2 - time.monotonic()))
    reply = b.post("/r/inv/cat", "ping")
    assert (reply.status, error_of(reply)) == (404, "Route not found on that application")
