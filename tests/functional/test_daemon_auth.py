"""Multi-tenant safety against real daemons (issue 11, SPEC §2, §3 Auth, §8): the API
key on ``/tasks``, ``DELETE /tasks`` only by a live reservation, ``exp`` required,
tokens limited to some apps, and the safe listen defaults."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Collection, cast

import jwt

from tests.daemon import REPO, TWISTD, Daemon, DaemonFactory, Reply
from tests.images import image_tag

KEY = "functional-tests-api-key-32bytes"
UNAUTHORIZED = {"error": {"message": "Invalid API Authorization token."}}


def submit(daemon: Daemon, path: str, body: bytes = b"") -> str:
    reply = daemon.post(f"/r/myapp{path}", body)
    assert reply.status == 202, (reply.status, reply.body)
    return cast(str, reply.json()["call_id"])


def wait_for(daemon: Daemon, call_id: str, statuses: Collection[str] = ("success", "error", "timeout", "cancelled"),
             timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call = daemon.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]
        if call["status"] in statuses:
            return call
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} still {call['status']} after {timeout}s")


def bearer(key: str = KEY, **claims: Any) -> dict[str, str]:
    claims.setdefault("exp", int(time.time()) + 600)
    if claims["exp"] is None:
        del claims["exp"]
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="HS256")}


class KeyedDaemon(Daemon):
    """For the type checker only: a ``Daemon`` whose ``request`` sends an operator's
    token and whose ``anonymous`` is the plain request (set by ``keyed``)."""

    anonymous: Callable[..., Reply]


def keyed(daemon_factory: DaemonFactory, **env: object) -> KeyedDaemon:
    """A daemon with the API key whose helpers send an operator's token."""
    d = cast(KeyedDaemon, daemon_factory(env={"JWT_AUTH_KEY": KEY, "ASYNC_RETRY_DELAY": "100ms", **{k: str(v) for k, v in env.items()}}))
    plain = d.request
    d.request = lambda method, path, body=None, headers=None, **kw: plain(  # type: ignore[method-assign]  # adds the token
        method, path, body, {**bearer(), **(headers or {})}, **kw)
    d.anonymous = plain
    return d


def test_anonymous_tasks_is_401_with_a_key(daemon_factory: DaemonFactory) -> None:
    d = keyed(daemon_factory, NUM_ASYNC=0)
    d.add_route("myapp", "/echo", image_tag("cat"), type="async")
    submit(d, "/echo", b"secret payload")
    for method, body in (("GET", None), ("DELETE", {"id": "x", "app_name": "myapp"})):
        reply = d.anonymous(method, "/tasks", body)
        assert (reply.status, reply.json()) == (401, UNAUTHORIZED)
        assert b"secret" not in reply.body
    assert d.get("/tasks").json()["payload"] == "secret payload"  # an operator's token gets it


def test_deleting_an_unreserved_task_is_404_and_the_call_still_runs(daemon_factory: DaemonFactory) -> None:
    d = keyed(daemon_factory, NUM_ASYNC=0)
    d.add_route("myapp", "/echo", image_tag("cat"), type="async")
    call_id = submit(d, "/echo", b"run me")
    for task in ({"id": call_id, "app_name": "myapp"}, {"id": "0" * 32 + "." + call_id, "app_name": "myapp"}):
        reply = d.request("DELETE", "/tasks", task)
        assert reply.status == 404, reply.body
    assert d.get(f"/v1/apps/myapp/calls/{call_id}").json()["call"]["status"] == "queued"
    d.stop()
    d.env["NUM_ASYNC"] = "1"  # now this node's own workers take it: it runs, first attempt
    d.start()
    call = wait_for(d, call_id, {"running", "success"})
    assert call["attempt"] == 1 and call.get("reason") != "external_runner", call


def test_a_task_is_deleted_by_its_reservation_only_once(daemon_factory: DaemonFactory) -> None:
    d = keyed(daemon_factory, NUM_ASYNC=0)
    d.add_route("myapp", "/echo", image_tag("cat"), type="async")
    call_id = submit(d, "/echo")
    task = d.get("/tasks").json()
    assert task["call_id"] == call_id and task["id"] != call_id
    assert d.request("DELETE", "/tasks", task).status == 202
    assert d.request("DELETE", "/tasks", task).status == 404


def test_tokens_without_exp_are_refused_on_v1_and_on_jwt_key_routes(daemon_factory: DaemonFactory) -> None:
    d = keyed(daemon_factory)
    route_key = "route-key-of-the-functional-test!"
    # The key check comes before the image is looked at: no container is needed.
    d.add_route("myapp", "/guarded", "iftest/no-such-image:1", jwt_key=route_key)
    reply = d.anonymous("GET", "/v1/apps", headers=bearer(exp=None))
    assert (reply.status, reply.json()) == (401, UNAUTHORIZED)
    reply = d.anonymous("POST", "/r/myapp/guarded", b"x", headers=bearer(route_key, exp=None))
    assert reply.status == 401 and "exp" in reply.json()["error"]["message"], reply.body
    assert reply.header("www-authenticate") == "Bearer"
    reply = d.anonymous("POST", "/r/myapp/guarded", b"x", headers=bearer(route_key))
    assert reply.status != 401, reply.body  # past the key: the missing image answers


def test_an_apps_token_cannot_see_another_app(daemon_factory: DaemonFactory) -> None:
    d = keyed(daemon_factory, NUM_ASYNC=0)
    for app in ("mine", "theirs"):
        d.add_route(app, "/echo", image_tag("cat"), type="async")
    theirs = d.post("/r/theirs/echo", b"private").json()["call_id"]
    mine = bearer(apps=["mine"])
    assert [a["name"] for a in d.get("/v1/apps", headers=mine).json()["apps"]] == ["mine"]
    assert [r["app_name"] for r in d.get("/v1/routes", headers=mine).json()["routes"]] == ["mine"]
    for path in ("/v1/apps/theirs", "/v1/apps/theirs/routes", "/v1/apps/theirs/routes/echo",
                 f"/v1/apps/theirs/calls/{theirs}", f"/v1/apps/theirs/calls/{theirs}/log"):
        reply = d.get(path, headers=mine)
        assert (reply.status, reply.json()["error"]["message"]) == (404, "App not found"), path
    assert d.get("/tasks", headers=mine).json() == {}  # their queued call is not handed out
    assert d.get("/stats", headers=mine).status == 403
    assert d.get("/tasks").json()["call_id"] == theirs  # untouched until an operator's runner asks


def _start_refused(tmp_path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    proc = subprocess.run([TWISTD, "-n", "--pidfile=", "ironfunctions"], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **env},
                          capture_output=True, timeout=60)
    return proc.returncode, proc.stderr.decode().strip().splitlines()


def test_an_all_interfaces_listen_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    for listen in ("tcp:18080", "tcp:18080:interface=0.0.0.0", "tcp6:18080:interface=\\:\\:"):
        code, err = _start_refused(tmp_path, {"LISTEN": listen})
        assert code == 2 and len(err) == 1, (listen, err)
        assert err[0].startswith("ironfunctions: configuration error: LISTEN:")
        assert "JWT_AUTH_KEY" in err[0] and "API_AUTH=none" in err[0]


def test_a_short_key_refuses_to_start(tmp_path: Path) -> None:
    code, err = _start_refused(tmp_path, {"JWT_AUTH_KEY": "s3cret-ab"})
    assert code == 2 and len(err) == 1 and "JWT_AUTH_KEY" in err[0] and "32" in err[0], err
    assert "s3cret" not in err[0]


def test_api_auth_none_serves_a_network_listen_and_warns_at_every_start(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(start=False, env={"API_AUTH": "none"})
    d.env["LISTEN"] = f"tcp:{d.port}:interface=0.0.0.0"
    d.start()
    assert d.get("/v1/apps").status == 200
    d.restart()
    d.stop()
    warnings = [line for line in d.log().splitlines() if "API_AUTH=none" in line]
    assert len(warnings) == 2 and all("level=warn" in line for line in warnings), warnings
