"""Per-app async bounds on a real daemon with a real Redis (issue 13 item 6, SPEC §8
"Apps share fairly"). ``NUM_ASYNC=0``: nothing drains the queue, so every accepted call
stays waiting and counts."""

from __future__ import annotations

from typing import Any

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import RedisServer

MIB = 1024 * 1024


def start(daemon_factory: DaemonFactory, redis_server: RedisServer, prefix: str, **env: str) -> Daemon:
    redis_server.flush()
    daemon = daemon_factory(env={"MQ_URL": redis_server.url(prefix=prefix), "NUM_ASYNC": "0", **env})
    for app in ("flood", "other"):
        daemon.add_route(app, "/job", image_tag("cat"), type="async")
    return daemon


def listed(daemon: Daemon, app: str) -> list[str]:
    reply = daemon.get(f"/v1/apps/{app}/calls")
    assert reply.status == 200, reply.body
    return sorted(c["id"] for c in reply.json()["calls"])


def refused(reply: Any, bound: str) -> str:
    """Check ``reply`` is the 429 of SPEC §8 naming ``bound``; return its call id."""
    assert reply.status == 429, (reply.status, reply.body)
    assert reply.header("retry-after") == "5"
    assert reply.header("content-type") == "application/json"
    body = reply.json()
    assert f"({bound}=" in body["error"]["message"], body
    call_id: str = body["request_id"]
    assert reply.header("fn-call-id") == call_id
    return call_id


def test_the_sixth_submit_past_ASYNC_MAX_QUEUED_5_is_429_and_another_app_still_gets_in(
    test_images: dict[str, str], daemon_factory: DaemonFactory, redis_server: RedisServer,
) -> None:
    daemon = start(daemon_factory, redis_server, "quota-calls", ASYNC_MAX_QUEUED="5")
    accepted = []
    for _ in range(5):
        reply = daemon.post("/r/flood/job", b"{}")
        assert reply.status == 202, reply.body
        accepted.append(reply.json()["call_id"])
    refused_id = refused(daemon.post("/r/flood/job", b"{}"), "ASYNC_MAX_QUEUED")
    assert listed(daemon, "flood") == sorted(accepted)  # nothing stored of the refused call
    assert daemon.get(f"/v1/apps/flood/calls/{refused_id}").status == 404
    assert daemon.post("/r/other/job", b"{}").status == 202


def test_1MiB_posts_past_ASYNC_MAX_QUEUED_BYTES_are_429(
    test_images: dict[str, str], daemon_factory: DaemonFactory, redis_server: RedisServer,
) -> None:
    """A queued item is its JSON, the body in base64: a 1 MiB post takes ~1.4 MB, so
    3 MiB holds two of them."""
    daemon = start(daemon_factory, redis_server, "quota-bytes", ASYNC_MAX_QUEUED_BYTES="3MiB")
    body = b"x" * MIB
    assert [daemon.post("/r/flood/job", body).status for _ in range(2)] == [202, 202]
    for _ in range(3):
        refused(daemon.post("/r/flood/job", body), "ASYNC_MAX_QUEUED_BYTES")
    assert len(listed(daemon, "flood")) == 2
    assert daemon.post("/r/flood/job", b"small").status == 202  # what fits still goes in
    assert daemon.post("/r/other/job", body).status == 202
