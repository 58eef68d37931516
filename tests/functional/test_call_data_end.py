"""SPEC §8 "Data has an end", through a real daemon (SQLite, the embedded default) and
the real Docker engine: CALL_RETENTION's sweep, and deleting an app."""

from __future__ import annotations

import time
from typing import Any

from tests.daemon import Daemon, DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)


def listed(daemon: Daemon, app: str) -> dict[str, Any]:
    reply = daemon.get(f"/v1/apps/{app}/calls")
    assert reply.status == 200, reply
    return {c["id"]: c for c in reply.json()["calls"]}


def until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_finished_calls_expire_after_CALL_RETENTION(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"CALL_RETENTION": "2s", "RETENTION_INTERVAL": "1s"})
    daemon.add_route("app", "/echo", image_tag("cat"))
    reply = daemon.post("/r/app/echo", "hi")
    assert reply.status == 200
    call_id = reply.header("fn-call-id")
    until(lambda: call_id in listed(daemon, "app"))  # recorded (off the request path)
    until(lambda: call_id not in listed(daemon, "app"), timeout=10)
    assert daemon.get(f"/v1/apps/app/calls/{call_id}/log").status == 404
    assert "Deleted 1 call records" in daemon.log()


def test_a_deleted_apps_calls_do_not_come_back_under_a_new_app_of_the_same_name(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    """Finished calls are deleted; a queued async call (NUM_ASYNC=0: nothing runs it
    here) is cancelled, reason route_deleted, and says so."""
    daemon = daemon_factory(env={"NUM_ASYNC": "0"})
    daemon.add_route("app", "/echo", image_tag("cat"))
    daemon.add_route("app", "/later", image_tag("cat"), type="async")
    ids = [daemon.post("/r/app/echo", f"n{n}").header("fn-call-id") for n in range(3)]
    queued = daemon.post("/r/app/later", "x").json()["call_id"]
    until(lambda: set(ids) <= set(listed(daemon, "app")))
    for path in ("/echo", "/later"):  # an app with routes cannot be deleted
        assert daemon.request("DELETE", f"/v1/apps/app/routes{path}").status == 200
    assert daemon.request("DELETE", "/v1/apps/app").status == 200
    assert daemon.post("/v1/apps", {"app": {"name": "app"}}).status == 200
    now = listed(daemon, "app")
    assert list(now) == [queued], now
    assert (now[queued]["status"], now[queued]["reason"]) == ("cancelled", "route_deleted")
