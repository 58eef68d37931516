"""The calls API in-process over a memory datastore with preloaded call records."""

import json
from typing import Any, Callable

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from ironfunctions.api import build_api
from ironfunctions.api.calls import parse_time
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.errors import ValidationError
from ironfunctions.models import App, CallStatus
from ironfunctions.routecache import RouteCache
from tests.sync import run




def setup() -> StubTreq:
    ds, store = MemoryDatastore(), MemoryCallStore()
    run(ds.insert_app(App("a")))
    calls = [CallRecord(id=f"c{n}", app_name="a", path="/p" if n % 2 else "/q", type="async" if n == 3 else "sync",
                  status=CallStatus.ERROR if n in (2, 4) else CallStatus.SUCCESS, created_at=1_700_000_000_000 + n * 1000,
                  body=b"out" if n == 3 else None) for n in range(1, 6)]
    calls.append(CallRecord(id="queued1", app_name="a", path="/p", type="async", status=CallStatus.QUEUED, created_at=1))
    run(store.put_calls(calls))
    run(store.put_log("a", "c1", b"stderr line\n"))
    clock = Clock()
    clock.advance(1_800_000_000)
    return StubTreq(build_api(ds, RouteCache(ds, clock), calls=store, clock=clock, host_memory_mb=1024))


def call(treq: StubTreq, method: str, path: str) -> tuple[int, Headers, bytes]:
    d = treq.request(method, "http://node" + path)  # type: ignore[attr-defined]  # StubTreq sets its methods in __init__
    out: list[tuple[int, Headers, bytes]] = []
    d.addCallback(lambda r: treq.content(r).addCallback(lambda c: out.append((r.code, r.headers, c))))  # type: ignore[attr-defined]
    treq.flush()
    return out[0]


def jcall(treq: StubTreq, method: str, path: str) -> tuple[int, Any]:
    code, _, body = call(treq, method, path)
    return code, json.loads(body)


def test_list_newest_first_with_cursor_pages() -> None:
    treq = setup()
    code, body = jcall(treq, "GET", "/v1/apps/a/calls?per_page=4")
    assert code == 200 and body["message"] == "Successfully listed calls"
    assert [c["id"] for c in body["calls"]] == ["c5", "c4", "c3", "c2"]
    code, body = jcall(treq, "GET", "/v1/apps/a/calls?per_page=4&cursor=" + body["next_cursor"])
    assert [c["id"] for c in body["calls"]] == ["c1", "queued1"] and body["next_cursor"] is None


def test_filters() -> None:
    treq = setup()
    ids: Callable[[str], list[str]] = lambda q: [c["id"] for c in jcall(treq, "GET", "/v1/apps/a/calls?" + q)[1]["calls"]]  # noqa: E731
    assert ids("status=error") == ["c4", "c2"]
    assert ids("path=/q") == ["c4", "c2"]
    assert ids("path=/p/&status=success") == ["c5", "c3", "c1"]
    assert ids("from=2023-11-14T22:13:22Z&to=1700000004") == ["c4", "c3", "c2"]


@pytest.mark.parametrize("query", ["status=weird", "per_page=0", "per_page=x", "per_page=101", "cursor=%%%",
                                   "from=yesterday", "path=/%zz", "to=2026-13-01T00:00:00Z"])
def test_bad_queries_are_400(query: str) -> None:
    code, body = jcall(setup(), "GET", "/v1/apps/a/calls?" + query)
    assert code == 400 and body["error"]["message"]


def test_get_call_fields_and_async_body() -> None:
    treq = setup()
    code, body = jcall(treq, "GET", "/v1/apps/a/calls/c3")
    assert code == 200 and body["message"] == "Successfully loaded call"
    call_ = body["call"]
    assert list(call_)[:3] == ["id", "app_name", "path"]
    assert call_["created_at"] == "2023-11-14T22:13:23.000Z"
    assert call_["body"] == "out"
    assert "body" not in jcall(treq, "GET", "/v1/apps/a/calls/c1")[1]["call"]
    assert jcall(treq, "GET", "/v1/apps/a/calls/nope") == (404, {"error": {"message": "Call not found"}})
    assert jcall(treq, "GET", "/v1/apps/ghost/calls")[0] == 404


def test_log_is_plain_text() -> None:
    code, headers, body = call(setup(), "GET", "/v1/apps/a/calls/c1/log")
    assert (code, body) == (200, b"stderr line\n")
    assert headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]


def test_cancel_queued_call_and_refuse_finished_one() -> None:
    treq = setup()
    code, body = jcall(treq, "DELETE", "/v1/apps/a/calls/queued1")
    assert code == 200
    assert (body["call"]["status"], body["call"]["reason"]) == ("cancelled", "client_request")
    code, body = jcall(treq, "DELETE", "/v1/apps/a/calls/c1")
    assert code == 409
    assert jcall(treq, "DELETE", "/v1/apps/a/calls/nope")[0] == 404


def test_parse_time_forms() -> None:
    assert parse_time("from", "1700000000") == 1_700_000_000_000
    assert parse_time("from", "2023-11-14T22:13:20.250Z") == 1_700_000_000_250
    assert parse_time("from", "2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValidationError):
        parse_time("from", "2023-02-30T00:00:00Z")


def test_an_absurd_epoch_is_400_not_500() -> None:
    code, body = jcall(setup(), "GET", "/v1/apps/a/calls?from=" + "9" * 400)
    assert code == 400 and "epoch" in body["error"]["message"]
