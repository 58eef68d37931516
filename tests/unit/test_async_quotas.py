"""Per-app async bounds through the API (issue 13 item 6, SPEC §8 "Apps share fairly"):
past ``ASYNC_MAX_QUEUED`` calls or ``ASYNC_MAX_QUEUED_BYTES`` bytes waiting, a submit
is 429 with ``Retry-After`` and the JSON error of SPEC §4, and nothing of it is stored.
In-process: StubTreq over ``build_api`` and ``memory_node``; no sockets."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.api import build_api
from ironfunctions.api.invoke import InvokeResource
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.models import App, Call, CallRequest, CallResult, CallStatus, Route
from ironfunctions.mq import QueueLimits
from ironfunctions.routecache import RouteCache
from ironfunctions.runner.invoker import Invoker
from ironfunctions.runner.submit import AsyncSubmitter
from ironfunctions.testing import MemoryNode, memory_node
from tests.sync import run


class Node:
    """The API of one node on memory backends, async route ``/job`` in apps a and b."""

    def __init__(self, limits: QueueLimits) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backends: MemoryNode = memory_node(self.clock)
        ids = itertools.count(1)
        routes = RouteCache(self.backends.datastore, self.clock)
        submitter = AsyncSubmitter(self.backends.queue, self.backends.calls, self.clock, self.backends.metrics, limits)

        async def run_call(call: Any) -> CallResult:
            return CallResult(call.id, CallStatus.SUCCESS)

        invoker = Invoker(routes.lookup, routes.app_config, run_call, lambda: f"call{next(ids):03d}",
                          submit=submitter.submit, clock=self.clock)
        for name in ("a", "b"):
            run(self.backends.datastore.insert_app(App(name)))
            run(self.backends.datastore.insert_route(Route(name, "/job", "img", type="async")))
        self.treq = StubTreq(build_api(
            self.backends.datastore, routes, calls=self.backends.calls, clock=self.clock, host_memory_mb=1024,
            invoke=InvokeResource(invoker),
        ))

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, list[str]], Any]:
        out: list[Any] = []
        d = self.treq.request(method, "http://node" + path, data=body)  # type: ignore[attr-defined]
        d.addCallback(lambda r: self.treq.content(r).addCallback(  # type: ignore[attr-defined]
            lambda c: out.append((r.code, dict(r.headers.getAllRawHeaders()), c))))
        self.treq.flush()
        assert out, (method, path)
        code, raw_headers, content = out[0]
        headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in raw_headers.items()}
        return code, headers, json.loads(content)

    def call_ids(self, app: str) -> list[str]:
        code, _, body = self.request("GET", f"/v1/apps/{app}/calls")
        assert code == 200
        return sorted(c["id"] for c in body["calls"])


def test_the_submit_past_ASYNC_MAX_QUEUED_is_429_with_Retry_After_and_stores_nothing() -> None:
    node = Node(QueueLimits(max_calls=2, max_bytes=10**9))
    assert [node.request("POST", "/r/a/job", b"{}")[0] for _ in range(2)] == [202, 202]
    code, headers, body = node.request("POST", "/r/a/job", b"{}")
    assert code == 429
    assert headers["retry-after"] == ["5"]
    assert headers["content-type"] == ["application/json"]
    assert headers["fn-call-id"] == ["call003"]
    assert body == {"request_id": "call003", "error": {"message": (
        "App 'a' has too many async calls waiting in the queue (ASYNC_MAX_QUEUED=2); retry later")}}
    assert node.call_ids("a") == ["call001", "call002"]  # no record of call003
    assert run(node.backends.queue.depth()) == 2  # nor a queue entry
    assert node.request("POST", "/r/b/job", b"{}")[0] == 202  # another app still gets in
    assert node.backends.metrics.total("async.refused") == 1


def test_the_submit_past_ASYNC_MAX_QUEUED_BYTES_is_429_naming_the_byte_bound() -> None:
    node = Node(QueueLimits(max_calls=100, max_bytes=10_000))
    assert node.request("POST", "/r/a/job", b"x" * 4000)[0] == 202  # about 5.4 KB queued (base64 in JSON)
    code, headers, body = node.request("POST", "/r/a/job", b"x" * 4000)
    assert (code, headers["retry-after"]) == (429, ["5"])
    assert "ASYNC_MAX_QUEUED_BYTES=10000" in body["error"]["message"]
    assert node.call_ids("a") == ["call001"]
    assert node.request("POST", "/r/a/job", b"small")[0] == 202  # what fits still goes in


def test_a_running_call_does_not_count_toward_the_bound() -> None:
    node = Node(QueueLimits(max_calls=1, max_bytes=10**9))
    assert node.request("POST", "/r/a/job", b"{}")[0] == 202
    assert node.request("POST", "/r/a/job", b"{}")[0] == 429
    assert run(node.backends.queue.reserve(60)) is not None  # a worker runs call001
    assert node.request("POST", "/r/a/job", b"{}")[0] == 202


class UndeletableCalls(MemoryCallStore):
    async def delete_call(self, app_name: str, call_id: str) -> bool:
        raise errors.DatastoreUnavailable()


def test_a_refused_call_whose_record_cannot_be_deleted_is_marked_error_not_left_queued() -> None:
    """A ``queued`` record with no queue entry would be re-enqueued by the reconciler:
    it would run although the client was told 429."""
    clock = Clock()
    node = memory_node(clock)
    calls = UndeletableCalls()
    submitter = AsyncSubmitter(node.queue, calls, clock, node.metrics, QueueLimits(max_calls=1, max_bytes=10**9))
    route = Route("a", "/job", "img", type="async")
    run(submitter.submit(Call("c1", route, CallRequest("POST", "http://x/r/a/job"))))
    with pytest.raises(errors.QueueFull):
        run(submitter.submit(Call("c2", route, CallRequest("POST", "http://x/r/a/job"))))
    record = run(calls.get_call("a", "c2"))
    assert (record.status, record.reason) == (CallStatus.ERROR, "queue_full")
