"""Backend outages under a real daemon on a real Postgres and a real Redis (SPEC §10,
§3 ``/health``, issue 12).

- Postgres down: sync calls to routes the node knows keep working (the route cache
  serves them stale, up to ``ROUTE_CACHE_STALE``), their records wait in the recorder
  and appear in ``/v1/apps/{app}/calls`` once Postgres is back; unknown routes are 503.
- ``/health`` stays 200 ``degraded`` naming the shared backend that is down (every node
  sees the same outage: a 503 would take every node out of the balancer), and is ``ok``
  again once both are back; ``ironfunctions_<backend>_up`` says the same on /metrics.
- Redis down: async submits are 503 with ``Retry-After`` and a JSON error, and nothing
  half-stored shows as queued; sync calls go on.

The Postgres cluster and the Redis server are this module's own: tests stop and start
them, never the session's shared ones.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterator

import pytest

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import (
    PostgresCluster, RedisServer, start_postgres_cluster, start_redis_server, stop_postgres_cluster,
    stop_redis_server,
)

APP = "outage"
# How long calls go on while Postgres is down: several route-cache TTLs (1 s), so a
# call that works is served from a stale entry, not a fresh one.
OUTAGE_S = 4.0
# Postgres reconnection backs off to at most every 5 s (docs/operating/databases.md);
# the recorder retries every 0.2 s after that.
RECOVERY_S = 15.0


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except OSError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    cluster = start_postgres_cluster()
    yield cluster
    stop_postgres_cluster(cluster)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = start_redis_server()
    yield server
    stop_redis_server(server)



@pytest.fixture
def node(cluster: PostgresCluster, redis: RedisServer, test_images: dict[str, str],  # noqa: F811
         daemon_factory: DaemonFactory) -> Iterator[Daemon]:
    """A daemon on a fresh database of the module's Postgres and on its Redis, with a hot
    route ``/hot`` and a cold route ``/cold`` (both echo), each called once. Postgres and
    Redis run again when the test ends."""
    db = cluster.create_database()
    redis.flush()
    daemon = daemon_factory(env={"DB_URL": db, "MQ_URL": redis.url(), "NODE_ID": "outage-node"})
    daemon.add_route(APP, "/hot", image_tag("hotfn"), format="http", timeout=10)
    daemon.add_route(APP, "/cold", image_tag("cat"), timeout=10)
    daemon.add_route(APP, "/job", image_tag("cat"), type="async", timeout=10)
    for path in ("/hot", "/cold"):
        reply = daemon.post(f"/r/{APP}{path}", "before")
        assert (reply.status, reply.body) == (200, b"before"), reply.body
    yield daemon
    if not cluster.accepts_connections():
        cluster.start()
    if redis.process is None:
        redis.start()
    daemon.stop()
    cluster.drop_database(db)


def health(daemon: Daemon) -> tuple[int, Any]:
    reply = daemon.get("/health", timeout=10)
    return reply.status, reply.json()


def listed_call_ids(daemon: Daemon) -> set[str]:
    """Every call id ``GET /v1/apps/{APP}/calls`` lists (all pages); empty if it fails."""
    ids: set[str] = set()
    cursor = ""
    while True:
        reply = daemon.get(f"/v1/apps/{APP}/calls?per_page=100" + (f"&cursor={cursor}" if cursor else ""))
        if reply.status != 200:
            return set()
        page = reply.json()
        ids.update(call["id"] for call in page["calls"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return ids


def metric(daemon: Daemon, name: str, labels: str = "") -> float | None:
    """The value of one series on ``/metrics`` (``labels`` as written there), or None."""
    text = daemon.get("/metrics").body.decode()
    found = re.search(r"^" + re.escape(name + labels) + r" (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_sync_calls_keep_working_through_a_postgres_outage_and_their_records_arrive_after(
    node: Daemon, cluster: PostgresCluster
) -> None:
    cluster.stop()
    during: list[str] = []
    failed: list[tuple[int, bytes]] = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < OUTAGE_S:
        n += 1
        reply = node.post(f"/r/{APP}/hot", f"during {n}", timeout=10)
        if (reply.status, reply.body) == (200, f"during {n}".encode()):
            during.append(reply.header("fn-call-id") or "")
        else:
            failed.append((reply.status, reply.body))
        time.sleep(0.05)
    assert failed == [] and len(during) >= 10, (failed, len(during))
    cold = node.post(f"/r/{APP}/cold", "cold during", timeout=30)
    assert (cold.status, cold.body) == (200, b"cold during"), cold.body
    during.append(cold.header("fn-call-id") or "")

    # The shared datastore is down: the node stays in the balancer, saying so.
    assert health(node) == (200, {"status": "degraded", "down": ["datastore"]})
    assert (metric(node, "ironfunctions_routes_stale_served_total", f'{{app="{APP}",path="/hot"}}') or 0) >= 10
    wait_for(lambda: metric(node, "ironfunctions_datastore_up") == 0, 10, "datastore_up 0")
    # A route this node never looked up cannot be served: 503, fast.
    unknown = node.post(f"/r/{APP}/never-seen", "x", timeout=10)
    assert unknown.status == 503 and unknown.json()["error"]["message"] == "datastore unavailable"

    cluster.start()
    wait_for(lambda: health(node) == (200, {"status": "ok"}), RECOVERY_S, "/health ok again")
    listed = wait_for(lambda: (ids := listed_call_ids(node)) >= set(during) and ids, RECOVERY_S,
                      "the records of the calls made during the outage listed")
    assert set(during) <= listed
    assert node.post(f"/r/{APP}/hot", "after").body == b"after"
    wait_for(lambda: metric(node, "ironfunctions_datastore_up") == 1, 10, "datastore_up 1")


def test_with_route_cache_stale_0_sync_calls_fail_once_the_cache_entry_expires(
    cluster: PostgresCluster, test_images: dict[str, str], daemon_factory: DaemonFactory  # noqa: F811
) -> None:
    """ROUTE_CACHE_STALE=0 turns stale serving off: the contrast to the test above."""
    db = cluster.create_database()
    daemon = daemon_factory(env={"DB_URL": db, "ROUTE_CACHE_STALE": "0", "NODE_ID": "outage-node-0"})
    try:
        daemon.add_route(APP, "/cold", image_tag("cat"), timeout=10)
        assert daemon.post(f"/r/{APP}/cold", "before").status == 200
        cluster.stop()
        time.sleep(1.5)  # past the 1 s TTL
        reply = daemon.post(f"/r/{APP}/cold", "during", timeout=10)
        assert (reply.status, reply.json()["error"]["message"]) == (503, "datastore unavailable")
    finally:
        if not cluster.accepts_connections():
            cluster.start()
        daemon.stop()
        cluster.drop_database(db)


def test_health_is_degraded_naming_each_shared_backend_down_and_ok_when_both_are_back(
    node: Daemon, cluster: PostgresCluster, redis: RedisServer
) -> None:
    assert health(node) == (200, {"status": "ok"})
    redis.stop()
    assert health(node) == (200, {"status": "degraded", "down": ["queue"]})
    wait_for(lambda: metric(node, "ironfunctions_queue_up") == 0, 10, "queue_up 0")
    cluster.stop()
    assert health(node) == (200, {"status": "degraded", "down": ["datastore", "queue"]})
    # Sync calls to a known route go on with both down.
    assert node.post(f"/r/{APP}/hot", "both down", timeout=10).body == b"both down"
    redis.start()
    wait_for(lambda: health(node) == (200, {"status": "degraded", "down": ["datastore"]}), RECOVERY_S,
             "queue back")
    cluster.start()
    wait_for(lambda: health(node) == (200, {"status": "ok"}), RECOVERY_S, "/health ok again")
    wait_for(lambda: metric(node, "ironfunctions_queue_up") == 1, 10, "queue_up 1")


def test_async_submits_during_a_redis_outage_are_503_with_retry_after_and_nothing_shows_queued(
    node: Daemon, redis: RedisServer
) -> None:
    redis.stop()
    for n in range(3):
        reply = node.post(f"/r/{APP}/job", f"job {n}", timeout=10)
        assert reply.status == 503, reply.body
        assert reply.header("retry-after") and int(reply.header("retry-after") or "") >= 1
        assert reply.header("content-type") == "application/json"
        assert reply.json()["error"]["message"]
    # Sync calls do not need the queue.
    assert node.post(f"/r/{APP}/hot", "sync", timeout=10).body == b"sync"
    calls = node.get(f"/v1/apps/{APP}/calls?path=/job").json()["calls"]
    assert [c for c in calls if c["status"] in ("queued", "running")] == []
    redis.start()
    accepted = wait_for(lambda: (r := node.post(f"/r/{APP}/job", "after")).status == 202 and r,
                        RECOVERY_S, "async submits accepted again")
    call_id = accepted.json()["call_id"]
    wait_for(lambda: node.get(f"/v1/apps/{APP}/calls/{call_id}").json()["call"]["status"] == "success",
             30, "the call accepted after the outage ran")
