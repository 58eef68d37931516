"""Bad names (issue 11 item 8, SPEC §8): NUL bytes or invalid UTF-8 in app names, route
paths and call ids are 400/404 at the edge, on every endpoint, and never reach a store.

The stores here behave as Postgres does (``Strict``: text holding NUL or a lone
surrogate raises ValueError, as psycopg2 does), so a name that slipped past the edge
would be a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from ironfunctions.api import build_api
from ironfunctions.api.invoke import InvokeResource
from ironfunctions.api.tasks import TasksAPI
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.errors import ValidationError
from ironfunctions.models import CallResult, CallStatus
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.names import check_storable, storable, text_from_url
from ironfunctions.routecache import RouteCache
from ironfunctions.runner.invoker import Invoker


class Strict:
    """Wraps a store: any text argument it could not hold raises ValueError, as psycopg2
    raises for NUL; the store's other behaviour is unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def strict(*args: Any, **kw: Any) -> Any:
            for value in [*args, *kw.values()]:
                if isinstance(value, str) and not storable(value):
                    raise ValueError("A string literal cannot contain NUL (0x00) characters.")
            return attr(*args, **kw)

        return strict


def client() -> StubTreq:
    clock = Clock()
    ds = MemoryDatastore()
    calls = MemoryCallStore()
    queue = MemoryQueue(clock)
    strict_ds, strict_calls = Strict(ds), Strict(calls)
    routes = RouteCache(strict_ds, clock)  # type: ignore[arg-type]

    async def run_call(call: Any) -> CallResult:
        return CallResult(call.id, CallStatus.SUCCESS, body=b"ok")

    invoker = Invoker(routes.lookup, lambda app: routes.app_config(app), run_call, lambda: "CID")
    tasks = TasksAPI(Strict(queue), strict_calls, routes.lookup, routes.app_config, clock)  # type: ignore[arg-type]
    api = build_api(strict_ds, routes, calls=strict_calls, clock=clock, host_memory_mb=1024,  # type: ignore[arg-type]
                    invoke=InvokeResource(invoker), tasks=tasks.resource_for)
    treq = StubTreq(api)
    request(treq, "POST", "/v1/apps/a/routes", {"route": {"path": "/x", "image": "img"}})
    return treq


def request(treq: StubTreq, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    out: list[Any] = []
    d = treq.request(method, "http://node" + path, data=data)  # type: ignore[attr-defined]  # set in StubTreq.__init__
    content_of = treq.content  # type: ignore[attr-defined]  # set in StubTreq.__init__
    d.addCallback(lambda r: content_of(r).addCallback(lambda c: out.append((r.code, c))))
    treq.flush()
    assert out, (method, path)
    status, content = out[0]
    return status, json.loads(content) if status != 200 or content.startswith(b"{") else content


BAD = ["a%00b", "a%ffb", "a%c3", "%00"]
ENDPOINTS = [
    ("GET", "/v1/apps/{}"), ("PATCH", "/v1/apps/{}"), ("DELETE", "/v1/apps/{}"),
    ("GET", "/v1/apps/{}/routes"), ("POST", "/v1/apps/{}/routes"),
    ("GET", "/v1/apps/{}/routes/x"), ("PATCH", "/v1/apps/{}/routes/x"), ("PUT", "/v1/apps/{}/routes/x"),
    ("DELETE", "/v1/apps/{}/routes/x"),
    ("GET", "/v1/apps/a/routes/{}"), ("DELETE", "/v1/apps/a/routes/{}"), ("PUT", "/v1/apps/a/routes/{}"),
    ("GET", "/v1/apps/{}/calls"), ("GET", "/v1/apps/a/calls/{}"), ("GET", "/v1/apps/a/calls/{}/log"),
    ("DELETE", "/v1/apps/a/calls/{}"), ("GET", "/v1/apps/{}/calls/x"),
    ("GET", "/r/{}/x"), ("POST", "/r/{}/x"), ("GET", "/r/a/{}"),
]
BODIES = {"PATCH": {"app": {"config": {}}, "route": {}}, "POST": {"route": {"path": "/x", "image": "i"}},
          "PUT": {"route": {"image": "i"}}}


@pytest.mark.parametrize("method, template", ENDPOINTS)
@pytest.mark.parametrize("bad", BAD)
def test_a_bad_name_in_a_url_is_400_or_404_json(method: str, template: str, bad: str) -> None:
    status, body = request(client(), method, template.format(bad), BODIES.get(method))
    assert status in (400, 404), (status, body)
    assert body["error"]["message"]


@pytest.mark.parametrize("method, template", [e for e in ENDPOINTS if e[1].startswith("/v1/apps/{}")])
def test_an_app_name_is_decoded_once(method: str, template: str) -> None:
    """``%2500`` is the text ``%00`` (no app's name), not a NUL: decoded a second time it
    reached the datastore as one."""
    status, body = request(client(), method, template.format("a%2500b"), BODIES.get(method))
    assert status in (400, 404), (status, body)


@pytest.mark.parametrize("task", [{"id": "c\u0000", "app_name": "a"}, {"id": "c", "app_name": "a\u0000"},
                                  {"id": "c\udc80", "app_name": "a"}])
def test_a_bad_name_in_a_task_deletion_is_400(task: dict[str, str]) -> None:
    status, body = request(client(), "DELETE", "/tasks", json.dumps(task).encode())
    assert status == 400 and "NUL" in body["error"]["message"]


def test_good_names_still_work() -> None:
    treq = client()
    assert request(treq, "GET", "/v1/apps/a/routes/x")[0] == 200
    assert request(treq, "GET", "/r/a/x")[0] == 200
    assert request(treq, "GET", "/v1/apps/%61")[0] == 200  # percent-encoded, decoded once
    assert request(treq, "GET", "/v1/apps/a%2541/routes")[0] == 404  # ...and only once


def test_the_one_rule() -> None:
    assert storable("żółw ☃") and storable("") and not storable("a\0") and not storable("a\udc80")
    assert text_from_url(b"a%20%C5%BC") == "a ż" and text_from_url(b"a%2500") == "a%00"
    for raw in [b"a%00", b"\0", b"a%ff", b"\xff", b"%c3", b"%ed%b2%80"]:  # the last: an encoded surrogate
        with pytest.raises(ValidationError):
            text_from_url(raw)
    assert check_storable("a") == "a"
    with pytest.raises(ValidationError):
        check_storable("a\0")
