"""``/tasks`` (IronFunctions' external-runner protocol) over a memory queue, a memory
call store and a ``Clock``, through ``StubTreq``: the HTTP side (``api/tasks.py``) and
the runner's (``runner/external.py``) together."""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.task import Clock

from ironfunctions import errors
from ironfunctions.api.auth import Access
from ironfunctions.api.tasks import TasksAPI
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallStatus, Route
from ironfunctions.mq.memory import MemoryQueue
from ironfunctions.runner.async_worker import LEASE_MARGIN_S
from ironfunctions.runner.submit import AsyncSubmitter
from tests.sync import run

ROUTE = Route("a", "/job", "img", type="async", timeout=10, config={"route-key": "r"})




class Node:
    """A queue and call store with the ``/tasks`` resource over them."""

    def __init__(self, access: Access = Access()) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.queue = MemoryQueue(self.clock)
        self.calls = MemoryCallStore()
        self.routes = {("a", "/job"): ROUTE, ("b", "/job"): attrs.evolve(ROUTE, app_name="b")}
        self.submitter = AsyncSubmitter(self.queue, self.calls, self.clock, MemoryMetrics())
        api = TasksAPI(self.queue, self.calls, self.lookup, self.app_config, self.clock)
        self.treq = StubTreq(api.resource_for(access))

    async def lookup(self, app: str, path: str) -> Route:
        try:
            return self.routes[(app, path)]
        except KeyError:
            raise errors.RouteNotFound() from None

    async def app_config(self, app: str) -> dict[str, str]:
        return {"app-key": "v"}

    def submit(self, call_id: str = "c1", body: bytes = b"in", path: str = "/job", app: str = "a") -> None:
        route = self.routes[(app, path)]
        run(self.submitter.submit(Call(call_id, route, CallRequest("POST", f"http://x/r/{app}{path}", body=body))))

    def record(self, call_id: str = "c1", app: str = "a") -> CallRecord:
        record: CallRecord = run(self.calls.get_call(app, call_id))
        return record

    def request(self, method: str, body: bytes = b"") -> tuple[int, Any]:
        d = self.treq.request(method, "http://node/", data=body)  # type: ignore[attr-defined]
        out: list[tuple[int, Any]] = []
        d.addCallback(lambda r: self.treq.content(r).addCallback(  # type: ignore[attr-defined]
            lambda c: out.append((r.code, json.loads(c)))))
        self.treq.flush()
        return out[0]

    def delete(self, task: dict[str, Any]) -> tuple[int, Any]:
        return self.request("DELETE", json.dumps(task).encode())


def test_no_task_waiting_is_an_empty_202() -> None:
    assert Node().request("GET") == (202, {})


def test_a_task_handed_out_is_running_with_its_environment() -> None:
    node = Node()
    node.submit(body=b"payload")
    code, task = node.request("GET")
    assert code == 202
    assert {k: task[k] for k in ("call_id", "app_name", "path", "image", "payload", "timeout", "status", "attempt")} == {
        "call_id": "c1", "app_name": "a", "path": "/job", "image": "img", "payload": "payload", "timeout": 10,
        "status": "running", "attempt": 1}
    assert task["env_vars"]["CALL_ID"] == "c1" and task["env_vars"]["APP_KEY"] == "v"
    assert task["env_vars"]["ROUTE_KEY"] == "r" and task["env_vars"]["METHOD"] == "POST"
    assert node.record().status == CallStatus.RUNNING and node.record().attempt == 1


def test_a_task_is_leased_for_its_route_timeout_then_delivered_again() -> None:
    node = Node()
    node.submit()
    node.request("GET")
    node.clock.advance(ROUTE.timeout + LEASE_MARGIN_S - 1)
    assert node.request("GET") == (202, {})
    node.clock.advance(2)
    code, again = node.request("GET")
    # The runner that never came back lost its lease: counted apart from attempts (SPEC §10).
    assert again["call_id"] == "c1" and again["attempt"] == 1 and node.record().lost == 1


NOT_RESERVED = (404, {"error": {"message": "Task not found: it is not reserved through /tasks now"}})


def test_a_task_id_names_its_reservation() -> None:
    """The id the original runner sends back in its DELETE is the queue lease."""
    node = Node()
    node.submit()
    _, task = node.request("GET")
    assert task["id"].endswith(".c1") and len(task["id"]) > len("x.c1") + 16


def test_deleting_a_reserved_task_records_success_by_an_external_runner() -> None:
    node = Node()
    node.submit()
    _, task = node.request("GET")
    assert node.delete(task) == (202, {"message": "Task deleted", "id": task["id"], "call_id": "c1"})
    record = node.record()
    assert record.status == CallStatus.SUCCESS and record.reason == "external_runner"
    assert node.request("GET") == (202, {})  # acknowledged: not delivered again
    assert node.delete(task) == NOT_RESERVED  # the reservation is over


def test_a_delete_without_a_known_call_is_refused() -> None:
    node = Node()
    assert node.delete({"app_name": "a"}) == (400, {"error": {"message": "Missing task id"}})
    assert node.delete({"id": "c1"}) == (400, {"error": {"message": "Missing task app_name"}})
    assert node.delete({"id": "nope", "app_name": "a"}) == NOT_RESERVED
    assert node.delete({"id": "0123.nope", "app_name": "a"}) == NOT_RESERVED


def test_a_task_nobody_reserved_is_never_marked_done() -> None:
    """SPEC §3: a DELETE acknowledges only a call reserved through /tasks now, else 404."""
    node = Node()
    node.submit()
    assert node.delete({"id": "c1", "app_name": "a"}) == NOT_RESERVED
    assert node.delete({"id": "0" * 32 + ".c1", "app_name": "a"}) == NOT_RESERVED
    assert node.record().status == "queued"
    assert node.request("GET")[1]["attempt"] == 1  # still queued, untouched


def test_a_task_whose_lease_expired_cannot_be_deleted() -> None:
    node = Node()
    node.submit()
    _, task = node.request("GET")
    node.clock.advance(ROUTE.timeout + LEASE_MARGIN_S + 1)
    assert node.delete(task) == NOT_RESERVED
    assert node.record().status == "running"  # delivered again, to whoever reserves it next
    _, again = node.request("GET")
    assert again["attempt"] == 1 and node.record().lost == 1 and again["id"] != task["id"]
    assert node.delete(task) == NOT_RESERVED  # the first runner's id is dead for good
    assert node.delete(again)[0] == 202


def test_a_delete_naming_another_app_changes_nothing() -> None:
    node = Node()
    node.submit()
    _, task = node.request("GET")
    assert node.delete({**task, "app_name": "b"}) == NOT_RESERVED
    assert node.record().status == "running"
    assert node.delete(task)[0] == 202


def test_a_cancelled_task_cannot_be_deleted() -> None:
    node = Node()
    node.submit()
    _, task = node.request("GET")
    assert run(node.queue.remove("c1"))  # what cancelling a call does to its queue item
    assert node.delete(task) == NOT_RESERVED


def test_a_token_limited_to_some_apps_reserves_only_their_calls() -> None:
    node = Node(Access(frozenset({"b"})))
    node.submit("for-a", app="a")
    node.submit("for-b", app="b")
    _, task = node.request("GET")
    assert (task["call_id"], task["app_name"]) == ("for-b", "b")
    assert node.request("GET") == (202, {})
    assert node.record("for-a").status == "queued"
    held = run(node.queue.reserve(30))
    assert (held.call_id, held.attempt) == ("for-a", 1)  # never reserved by the limited runner


def test_a_token_limited_to_some_apps_deletes_only_their_tasks() -> None:
    everyone, limited = Node(), None
    everyone.submit()
    _, task = everyone.request("GET")
    limited = StubTreq(TasksAPI(everyone.queue, everyone.calls, everyone.lookup, everyone.app_config,
                                everyone.clock).resource_for(Access(frozenset({"b"}))))
    d = limited.request("DELETE", "http://node/", data=json.dumps(task).encode())  # type: ignore[attr-defined]
    codes: list[int] = []
    d.addCallback(lambda r: codes.append(r.code))
    limited.flush()
    assert codes == [404]
    assert everyone.record().status == "running"
    assert everyone.delete(task)[0] == 202


def test_stale_deliveries_are_acked_and_skipped() -> None:
    node = Node()
    node.routes[("a", "/gone")] = attrs.evolve(ROUTE, path="/gone")
    node.submit("cancelled")
    node.submit("gone", path="/gone")
    node.submit("live")
    run(node.calls.put_calls([attrs.evolve(node.record("cancelled"), status=CallStatus.CANCELLED, reason="client_request")]))
    del node.routes[("a", "/gone")]
    code, task = node.request("GET")
    assert task["call_id"] == "live"
    assert run(node.queue.depth()) == 0  # the stale ones were acknowledged
    gone = node.record("gone")  # a route deleted since: the call ends (SPEC §10)
    assert (gone.status, gone.reason) == ("cancelled", "route_deleted")
