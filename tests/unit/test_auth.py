"""The API key and per-app tokens (SPEC §3 Auth, issue 11), in-process: StubTreq over
``build_api`` with memory stores and a ``Clock``; no sockets."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.api import build_api
from ironfunctions.api.auth import Access, access_of
from ironfunctions.api.tasks import TasksAPI
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.http.bearer import verify_jwt
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import App, Call, CallRequest, Route
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.routecache import RouteCache
from ironfunctions.runner.submit import AsyncSubmitter
from tests.sync import run

KEY = "an-api-key-of-at-least-32-bytes!"
ROUTE_KEY = "a-route-jwt-key-of-32-bytes-long"
UNAUTHORIZED = (401, {"error": {"message": "Invalid API Authorization token."}})
APP_NOT_FOUND = (404, {"error": {"message": "App not found"}})




def token(key: str = KEY, **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 600)
    if claims["exp"] is None:
        del claims["exp"]
    return jwt.encode(claims, key, algorithm="HS256")


class Node:
    """The whole API over memory stores, with two apps (``mine``, ``other``), each
    with a route and a queued async call."""

    def __init__(self, key: str = KEY) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.datastore = MemoryDatastore()
        self.calls = MemoryCallStore()
        self.queue = MemoryQueue(self.clock)
        routes = RouteCache(self.datastore, self.clock)
        submitter = AsyncSubmitter(self.queue, self.calls, self.clock, MemoryMetrics())
        for name in ("other", "mine"):
            run(self.datastore.insert_app(App(name)))
            route = Route(name, "/job", "img", type="async")
            run(self.datastore.insert_route(route))
            run(submitter.submit(Call(f"call-{name}", route, CallRequest("POST", f"http://x/r/{name}/job"))))
        tasks = TasksAPI(self.queue, self.calls, routes.lookup, routes.app_config, self.clock)
        self.treq = StubTreq(build_api(
            self.datastore, routes, calls=self.calls, clock=self.clock, host_memory_mb=1024, jwt_auth_key=key,
            stats=lambda: {"Queue": 2}, render_metrics=lambda: succeed(b"m 1\n"), tasks=tasks.resource_for,
        ))

    def call(self, method: str, path: str, body: Any = None, bearer: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        d = self.treq.request(method, "http://node" + path, data=data, headers=headers)  # type: ignore[attr-defined]
        out: list[tuple[int, Any]] = []
        d.addCallback(lambda r: self.treq.content(r).addCallback(  # type: ignore[attr-defined]
            lambda c: out.append((r.code, c))))
        self.treq.flush()
        assert out, "no response"
        code, content = out[0]
        try:
            return code, json.loads(content)
        except ValueError:
            return code, content


# -- the key


@pytest.mark.parametrize("path", ["/v1/apps", "/v1/routes", "/v1/version", "/tasks", "/metrics", "/stats"])
def test_the_key_guards_v1_tasks_metrics_and_stats(path: str) -> None:
    node = Node()
    assert node.call("GET", path) == UNAUTHORIZED
    assert node.call("GET", path, bearer="not-a-jwt") == UNAUTHORIZED
    assert node.call("GET", path, bearer=token(key="another-key-of-at-least-32-bytes")) == UNAUTHORIZED
    assert node.call("GET", path, bearer=token(exp=int(time.time()) - 60)) == UNAUTHORIZED
    assert node.call("GET", path, bearer=token())[0] in (200, 202)


@pytest.mark.parametrize("path", ["/v1/apps", "/tasks", "/metrics", "/stats"])
def test_a_token_without_exp_is_refused(path: str) -> None:
    """A token without ``exp`` would be good forever (issue 11)."""
    assert Node().call("GET", path, bearer=token(exp=None)) == UNAUTHORIZED


def test_a_route_token_without_exp_is_refused() -> None:
    """The same check guards a route's ``jwt_key`` on ``/r/``."""
    with pytest.raises(errors.Unauthorized) as e:
        verify_jwt(token(key=ROUTE_KEY, exp=None), ROUTE_KEY)
    assert "exp" in str(e.value)
    assert verify_jwt(token(key=ROUTE_KEY), ROUTE_KEY)["exp"] > time.time()


@pytest.mark.parametrize("path", ["/", "/version", "/health"])
def test_load_balancer_probes_stay_open(path: str) -> None:
    assert Node().call("GET", path)[0] == 200


def test_without_a_key_everything_is_open() -> None:
    node = Node(key="")
    for path in ("/v1/apps", "/metrics", "/stats"):
        assert node.call("GET", path)[0] == 200
    assert node.call("GET", "/tasks")[0] == 202
    # A token naming apps means nothing when there is no key to check it with.
    assert len(node.call("GET", "/v1/apps", bearer=token(apps=["mine"]))[1]["apps"]) == 2


# -- tokens limited to some apps


def mine() -> str:
    return token(apps=["mine"])


def test_an_apps_claim_filters_the_app_and_route_lists() -> None:
    node = Node()
    assert [a["name"] for a in node.call("GET", "/v1/apps", bearer=mine())[1]["apps"]] == ["mine"]
    assert [r["app_name"] for r in node.call("GET", "/v1/routes", bearer=mine())[1]["routes"]] == ["mine"]
    assert [a["name"] for a in node.call("GET", "/v1/apps", bearer=token())[1]["apps"]] == ["mine", "other"]
    assert len(node.call("GET", "/v1/routes", bearer=token())[1]["routes"]) == 2
    assert node.call("GET", "/v1/apps", bearer=token(apps=[]))[1]["apps"] == []


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/apps/other", None),
    ("PATCH", "/v1/apps/other", {"app": {"config": {"A": "1"}}}),
    ("DELETE", "/v1/apps/other", None),
    ("GET", "/v1/apps/other/routes", None),
    ("POST", "/v1/apps/other/routes", {"route": {"path": "/new", "image": "img"}}),
    ("GET", "/v1/apps/other/routes/job", None),
    ("PATCH", "/v1/apps/other/routes/job", {"route": {"image": "evil"}}),
    ("PUT", "/v1/apps/other/routes/job", {"route": {"image": "evil"}}),
    ("DELETE", "/v1/apps/other/routes/job", None),
    ("GET", "/v1/apps/other/calls", None),
    ("GET", "/v1/apps/other/calls/call-other", None),
    ("GET", "/v1/apps/other/calls/call-other/log", None),
    ("DELETE", "/v1/apps/other/calls/call-other", None),
    ("GET", "/v1/apps/%6Fther", None),  # percent-encoded, the same app
    ("GET", "/v1/apps/%6Fther/routes/job", None),
])
def test_other_apps_are_not_found_for_an_apps_token(method: str, path: str, body: Any) -> None:
    node = Node()
    before = node.call("GET", "/v1/apps/other/routes/job", bearer=token())
    assert node.call(method, path, body, bearer=mine()) == APP_NOT_FOUND
    assert node.call("GET", "/v1/apps/other/routes/job", bearer=token()) == before  # untouched
    assert node.call("GET", "/v1/apps/other/calls/call-other", bearer=token())[1]["call"]["status"] == "queued"


def test_an_apps_token_cannot_create_other_apps() -> None:
    """Creating an app outside the claim is 404 like every other app outside it, so the
    answer never tells whether the name is taken."""
    node = Node()
    assert node.call("POST", "/v1/apps", {"app": {"name": "new"}}, bearer=mine()) == APP_NOT_FOUND
    assert node.call("POST", "/v1/apps", {"app": {"name": "other"}}, bearer=mine()) == APP_NOT_FOUND
    assert node.call("POST", "/v1/apps/new/routes", {"route": {"path": "/x", "image": "i"}}, bearer=mine()) == APP_NOT_FOUND
    assert [a["name"] for a in node.call("GET", "/v1/apps", bearer=token())[1]["apps"]] == ["mine", "other"]
    ok = token(apps=["mine", "new"])
    assert node.call("POST", "/v1/apps", {"app": {"name": "new"}}, bearer=ok)[0] == 200


def test_an_apps_token_manages_its_own_apps() -> None:
    node = Node()
    assert node.call("GET", "/v1/apps/mine", bearer=mine())[0] == 200
    assert node.call("PATCH", "/v1/apps/mine", {"app": {"config": {"A": "1"}}}, bearer=mine())[0] == 200
    assert node.call("POST", "/v1/apps/mine/routes", {"route": {"path": "/x", "image": "i"}}, bearer=mine())[0] == 200
    assert node.call("GET", "/v1/apps/mine/calls/call-mine", bearer=mine())[0] == 200


def test_an_apps_token_gets_only_its_apps_tasks() -> None:
    node = Node()
    code, task = node.call("GET", "/tasks", bearer=mine())
    assert (code, task["call_id"]) == (202, "call-mine")
    assert node.call("GET", "/tasks", bearer=mine()) == (202, {})
    code, task = node.call("GET", "/tasks", bearer=token())
    assert (task["call_id"], task["attempt"]) == ("call-other", 1)  # never reserved before


def test_node_wide_figures_need_an_operators_token() -> None:
    """``/metrics`` and ``/stats`` describe every app on the node: 403 for an apps token."""
    node = Node()
    for path in ("/metrics", "/stats"):
        code, body = node.call("GET", path, bearer=mine())
        assert code == 403 and "limited to some apps" in body["error"]["message"]
    assert node.call("GET", "/stats", bearer=token()) == (200, {"Queue": 2, "Running": 0, "Complete": 0})
    assert node.call("GET", "/metrics", bearer=token()) == (200, b"m 1\n")


@pytest.mark.parametrize("claim", ["mine", {"mine": True}, [1], None])
def test_a_malformed_apps_claim_invalidates_the_token(claim: Any) -> None:
    """Never read a claim we do not understand as "every app"."""
    assert Node().call("GET", "/v1/apps", bearer=token(apps=claim)) == UNAUTHORIZED
    with pytest.raises(errors.Unauthorized):
        access_of({"apps": claim})


def test_access_checks_the_name_as_given_and_percent_decoded() -> None:
    access = Access(frozenset({"mine"}))
    access.check("mine")
    for name in ("other", "%6Dine", "mine%00"):
        with pytest.raises(errors.AppNotFound):
            access.check(name)
    with pytest.raises(errors.AppNotFound):  # a claim naming "%6Fther" does not grant "other"
        Access(frozenset({"%6Fther"})).check("%6Fther")
    Access().check("anything")
