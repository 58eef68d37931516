"""The management API in-process (StubTreq, memory datastore: no sockets)."""

import json
from typing import Any

from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from ironfunctions.api import build_api
from ironfunctions.api.admin import HealthChecks
from ironfunctions.models import App
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.drivers.fake import FakeDriver
from ironfunctions.drivers.probe import SingleFlightProbe
from ironfunctions.metrics import PrometheusMetrics
from ironfunctions.routecache import RouteCache


def client(ds: MemoryDatastore | None = None, **kw: Any) -> StubTreq:
    ds = ds or MemoryDatastore()
    clock = Clock()
    return StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=1024, **kw))


def success_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "no result"
    return out[0]


def failure_of(d: Deferred[Any]) -> Failure:
    result = success_of(d)
    assert isinstance(result, Failure), result
    return result


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


async def up() -> None:
    return None


async def down() -> None:
    raise ConnectionError("no")


def request(treq: StubTreq, method: str, path: str) -> list[tuple[int, Headers, bytes]]:
    """Start a request; a list that gets ``(status, headers, body)`` when it is answered."""
    out: list[tuple[int, Headers, bytes]] = []
    d = treq.request(method, "http://node" + path)  # type: ignore[attr-defined]  # StubTreq sets its methods in __init__
    d.addCallback(lambda r: treq.content(r).addCallback(lambda c: out.append((r.code, r.headers, c))))  # type: ignore[attr-defined]
    treq.flush()
    return out


def test_health_is_ok_when_every_check_is_up() -> None:
    checks = HealthChecks(node={"docker": up}, shared={"datastore": up, "queue": up})
    assert call(client(health_checks=checks), "GET", "/health") == (200, {"status": "ok"})


def test_health_is_503_naming_the_node_part_that_is_down() -> None:
    checks = HealthChecks(node={"docker": down}, shared={"datastore": up, "queue": down})
    status, body = call(client(health_checks=checks), "GET", "/health")
    assert status == 503
    assert body["down"] == ["docker", "queue"] and body["error"] == {"message": "unavailable: docker"}


def test_health_is_200_degraded_when_only_a_shared_backend_is_down() -> None:
    """Every node sees a shared outage: the balancer must keep the nodes in (fail open)."""
    checks = HealthChecks(node={"docker": up}, shared={"datastore": up, "queue": down})
    assert call(client(health_checks=checks), "GET", "/health") == (200, {"status": "degraded", "down": ["queue"]})


def test_health_is_503_starting_until_the_node_has_started() -> None:
    """Until its datastore and queue have answered once, the node answers 503 to /v1
    and /r: the balancer must not send it traffic yet."""
    started: list[bool] = []
    checks = HealthChecks(node={"docker": up}, shared={"datastore": down}, started=lambda: bool(started))
    treq = client(health_checks=checks)
    status, body = call(treq, "GET", "/health")
    assert (status, body["down"], body["error"]) == (503, ["starting", "datastore"], {"message": "unavailable: starting"})
    started.append(True)
    assert call(treq, "GET", "/health") == (200, {"status": "degraded", "down": ["datastore"]})


def test_a_check_answering_false_is_down() -> None:
    async def no() -> bool:
        return False

    checks = HealthChecks(node={"docker": no})
    assert call(client(health_checks=checks), "GET", "/health")[0] == 503


def test_a_hung_check_is_down_after_two_seconds_and_is_cancelled() -> None:
    clock = Clock()
    cancelled: list[Deferred[None]] = []
    hung: Deferred[None] = Deferred(cancelled.append)
    checks = HealthChecks(node={"docker": lambda: hung}, shared={"datastore": up})
    ds = MemoryDatastore()
    treq = StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=1024, health_checks=checks))
    out = request(treq, "GET", "/health")
    clock.advance(1.9)
    treq.flush()
    assert out == []
    clock.advance(0.1)
    treq.flush()
    (status, _, body), = out
    assert status == 503 and json.loads(body)["down"] == ["docker"]
    assert cancelled == [hung]  # cancelled, not left waiting


def test_checks_run_at_once_so_two_hung_checks_take_two_seconds_not_four() -> None:
    clock = Clock()
    checks = HealthChecks(node={"docker": Deferred}, shared={"queue": Deferred})
    ds = MemoryDatastore()
    treq = StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=1024, health_checks=checks))
    out = request(treq, "GET", "/health")
    clock.advance(2)
    treq.flush()
    (status, _, body), = out
    assert (status, json.loads(body)["down"]) == (503, ["docker", "queue"])


def test_docker_down_on_the_fake_driver_is_503_and_up_again_is_200() -> None:
    clock = Clock()
    driver = FakeDriver(clock)
    checks = HealthChecks(node={"docker": driver.probe}, shared={"datastore": up})
    ds = MemoryDatastore()
    treq = StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=1024, health_checks=checks))
    driver.down = True
    assert call(treq, "GET", "/health")[0] == 503
    driver.down = False
    assert call(treq, "GET", "/health") == (200, {"status": "ok"})


def test_concurrent_health_requests_against_a_hung_engine_make_one_engine_call() -> None:
    clock = Clock()
    driver = FakeDriver(clock)
    driver.hung = True
    checks = HealthChecks(node={"docker": driver.probe})
    ds = MemoryDatastore()
    treq = StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=1024, health_checks=checks))
    answers = [request(treq, "GET", "/health") for _ in range(3)]
    clock.advance(2)
    treq.flush()
    assert [out[0][0] for out in answers] == [503, 503, 503]
    assert driver.pings == 1
    driver.hung = False  # the engine recovers: the next probe sees it
    assert call(treq, "GET", "/health") == (200, {"status": "ok"})
    assert driver.pings == 2


def test_single_flight_probe_shares_one_check_and_answers_false_on_its_timeout() -> None:
    clock = Clock()
    started: list[Deferred[None]] = []

    def check() -> Deferred[None]:
        started.append(Deferred())
        return started[-1]

    probe = SingleFlightProbe(check, clock, timeout=2)
    first = probe.probe()
    clock.advance(1)
    second = probe.probe()
    assert len(started) == 1
    clock.advance(1)
    assert success_of(first) is False  # its own 2 s are up
    third = probe.probe()  # the hung check is still in flight: no second one
    assert len(started) == 1 and probe.in_flight
    clock.advance(1)
    assert success_of(second) is False
    started[0].callback(None)  # the engine call returns at last (its socket timeout)
    assert success_of(third) is True and not probe.in_flight
    fourth = probe.probe()
    assert len(started) == 2
    started[1].errback(ConnectionError("refused"))
    assert success_of(fourth) is False


def test_cancelling_one_probe_leaves_the_others_waiting() -> None:
    clock = Clock()
    check: Deferred[None] = Deferred()
    probe = SingleFlightProbe(lambda: check, clock, timeout=2)
    first, second = probe.probe(), probe.probe()
    first.cancel()
    failure_of(first)
    check.callback(None)
    assert success_of(second) is True


def test_metrics_serves_the_prometheus_text() -> None:
    metrics = PrometheusMetrics()
    metrics.many([("time", "run.wait_time", 3)], app="a", path="/p")
    out = request(client(render_metrics=metrics.scrape), "GET", "/metrics")
    (status, headers, body), = out
    assert status == 200
    assert headers.getRawHeaders("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    assert b'ironfunctions_run_wait_time_seconds_bucket{app="a",le="0.005",path="/p"} 1.0' in body


def test_stats_shape() -> None:
    status, body = call(client(stats=lambda: {"Running": 2}), "GET", "/stats")
    assert body == {"Queue": 0, "Running": 2, "Complete": 0}


def test_stats_may_come_later_in_the_same_shape() -> None:
    """A worker of a node asks its parent for the node's figures (workers/views.py)."""
    status, body = call(client(stats=lambda: succeed({"Running": 3, "Complete": 9})), "GET", "/stats")
    assert (status, body) == (200, {"Queue": 0, "Running": 3, "Complete": 9})


def test_deeply_nested_json_is_400_not_500() -> None:
    status, body = call(client(), "POST", "/v1/apps", b"[" * 200_000)
    assert (status, body) == (400, {"error": {"message": "Invalid JSON"}})
