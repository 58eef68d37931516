"""The management API in-process (StubTreq, memory datastore: no sockets)."""

import json
from typing import Any, NoReturn

from treq.testing import StubTreq
from twisted.internet.task import Clock

from ironfunctions.api import build_api
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.models import App
from ironfunctions.routecache import RouteCache


def client(ds: MemoryDatastore | None = None, **kw: Any) -> StubTreq:
    ds = ds or MemoryDatastore()
    clock = Clock()
    return StubTreq(build_api(ds, RouteCache(ds, clock), clock=clock, host_memory_mb=1024, **kw))


def call(treq: StubTreq, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    d = treq.request(method, "http://node" + path, data=data)  # type: ignore[attr-defined]  # StubTreq sets its methods in __init__
    out: list[tuple[int, bytes]] = []
    d.addCallback(lambda r: treq.content(r).addCallback(lambda c: out.append((r.code, c))))  # type: ignore[attr-defined]
    treq.flush()
    assert out, "no response"
    return out[0][0], json.loads(out[0][1])


def test_v1_and_r_answer_503_until_ready() -> None:
    treq = client(ready=lambda: False)
    assert call(treq, "GET", "/v1/apps") == (503, {"error": {"message": "service unavailable"}})
    assert call(treq, "GET", "/")[0] == 200


def test_memory_over_host_memory_is_rejected() -> None:
    status, body = call(client(), "POST", "/v1/apps/a/routes", {"route": {"path": "/x", "image": "i", "memory": 2048}})
    assert status == 400 and "between 8 and 1024" in body["error"]["message"]


class BrokenDatastore(MemoryDatastore):
    async def get_apps(self) -> list[App]:
        raise RuntimeError("secret internals")


def test_unexpected_error_is_500_json_without_traceback() -> None:
    status, body = call(client(BrokenDatastore()), "GET", "/v1/apps")
    assert (status, body) == (500, {"error": {"message": "Internal Server Error"}})


def test_health_names_what_is_down() -> None:
    async def down() -> NoReturn:
        raise ConnectionError("no")

    async def up() -> None:
        return None

    status, body = call(client(health_checks={"datastore": up, "docker": down}), "GET", "/health")
    assert status == 503 and body["down"] == ["docker"]


def test_stats_shape() -> None:
    status, body = call(client(stats=lambda: {"Running": 2}), "GET", "/stats")
    assert body == {"Queue": 0, "Running": 2, "Complete": 0}


def test_deeply_nested_json_is_400_not_500() -> None:
    status, body = call(client(), "POST", "/v1/apps", b"[" * 200_000)
    assert (status, body) == (400, {"error": {"message": "Invalid JSON"}})
