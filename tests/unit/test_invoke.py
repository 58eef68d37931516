"""``/r/{app}/{path}`` with ``StubTreq`` over the invoke resource, a ``FakeDriver``
agent and a ``Clock``: no sockets, no reactor."""

from __future__ import annotations

import json
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ironfunctions.api.invoke import InvokeResource
from ironfunctions.runner.invoker import Invoker
from ironfunctions.errors import AppNotFound, RouteNotFound
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Route
from ironfunctions.runner.agent import Agent
from ironfunctions.runner.ids import CallIds

from tests.fake_images import fake_driver
from tests.images import image_tag

ROUTES = {
    ("myapp", "/cat"): Route(app_name="myapp", path="/cat", image=image_tag("cat")),
    ("myapp", "/env"): Route(app_name="myapp", path="/env", image=image_tag("echo-env"),
                             config={"route-key": "r"}),
    ("myapp", "/fail"): Route(app_name="myapp", path="/fail", image=image_tag("exit-code")),
    ("myapp", "/oom"): Route(app_name="myapp", path="/oom", image=image_tag("oom"), memory=16),
    ("myapp", "/slow"): Route(app_name="myapp", path="/slow", image=image_tag("sleep"), timeout=1),
    ("myapp", "/gone"): Route(app_name="myapp", path="/gone", image="iftest/nope:1"),
    ("myapp", "/json"): Route(app_name="myapp", path="/json", image=image_tag("cat"),
                              headers={"Content-Type": ["application/json"], "X-Multi": ["a", "b"]}),
}


async def lookup(app: str, path: str) -> Route:
    if app != "myapp":
        raise AppNotFound()
    try:
        return ROUTES[(app, path)]
    except KeyError:
        raise RouteNotFound() from None


async def app_config(app: str) -> dict[str, str]:
    return {"app-key": "a"}


class InvokeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.driver = fake_driver(self.clock)
        self.agent = Agent.cold(self.driver, self.clock, "node", MemoryMetrics(), max_concurrency=1,
                                wait_bound=1, max_waiting=0)
        self.agent.startService()
        root = Resource()
        root.putChild(b"r", InvokeResource(Invoker(lookup, app_config, self.agent.run_call, CallIds(self.clock.seconds))))
        self.treq = StubTreq(root)

    def request(self, method: str, url: str, advance: float = 0, **kw: Any) -> tuple[Any, bytes]:
        d = self.treq.request(method, "http://example.com" + url, **kw)  # type: ignore[attr-defined]  # StubTreq sets its methods in __init__
        if advance:
            self.clock.advance(advance)
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, body

    def error(self, body: bytes) -> str:
        assert body.endswith(b"\n")
        return cast(str, json.loads(body)["error"]["message"])

    def test_post_body_is_stdin_and_stdout_is_the_answer(self) -> None:
        response, body = self.request("POST", "/r/myapp/cat", data=b'{"name":"x"}')
        assert response.code == 200 and body == b'{"name":"x"}'
        assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
        call_id = response.headers.getRawHeaders("fn-call-id")[0]
        assert len(call_id) == 26
        timing = response.headers.getRawHeaders("server-timing")[0]
        assert timing.startswith("wait;dur=") and ", start;dur=" in timing and ", run;dur=" in timing

    def test_get_payload_parameter_is_stdin(self) -> None:
        response, body = self.request("GET", "/r/myapp/cat?payload=hello")
        assert (response.code, body) == (200, b"hello")

    def test_environment_reaches_the_function(self) -> None:
        response, body = self.request("PUT", "/r/myapp/env?x=1", headers={"X-Thing": ["1", "2"]})
        env = dict(line.split("=", 1) for line in body.decode().splitlines())
        call_id = response.headers.getRawHeaders("fn-call-id")[0]
        assert env["METHOD"] == "PUT" and env["ROUTE"] == "/env" and env["APP_NAME"] == "myapp"
        assert env["REQUEST_URL"] == "http://example.com/r/myapp/env?x=1"
        assert env["CALL_ID"] == call_id and env["FN_FORMAT"] == "default" and env["MEMORY_MB"] == "128"
        assert env["APP_KEY"] == "a" and env["ROUTE_KEY"] == "r"
        assert env["HEADER_X_THING"] == "1, 2"

    def test_route_headers_are_added_and_set_the_content_type(self) -> None:
        response, _ = self.request("POST", "/r/myapp/json", data=b"{}")
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        assert response.headers.getRawHeaders("x-multi") == ["a", "b"]

    def test_nonzero_exit_is_502_with_request_id(self) -> None:
        response, body = self.request("POST", "/r/myapp/fail")
        assert response.code == 502
        data = json.loads(body)
        assert data == {"request_id": response.headers.getRawHeaders("fn-call-id")[0],
                        "error": {"message": "exit code 3"}}

    def test_oom_is_502_out_of_memory(self) -> None:
        response, body = self.request("POST", "/r/myapp/oom")
        assert (response.code, self.error(body)) == (502, "out of memory")

    def test_timeout_is_504(self) -> None:
        response, body = self.request("POST", "/r/myapp/slow", advance=1.5)
        assert (response.code, self.error(body)) == (504, "Timed out")
        assert response.headers.getRawHeaders("server-timing")

    def test_missing_app_and_route_are_404(self) -> None:
        response, body = self.request("GET", "/r/nope/cat")
        assert (response.code, self.error(body)) == (404, "App not found")
        assert response.headers.getRawHeaders("fn-call-id")
        response, body = self.request("GET", "/r/myapp/nope")
        assert (response.code, self.error(body)) == (404, "Route not found on that application")

    def test_missing_image_is_502_image_not_found(self) -> None:
        response, body = self.request("GET", "/r/myapp/gone")
        assert (response.code, self.error(body)) == (502, "Image not found: iftest/nope:1")

    def test_overload_is_503_with_retry_after(self) -> None:
        busy = self.treq.request("POST", "http://example.com/r/myapp/slow")  # type: ignore[attr-defined]
        response, body = self.request("POST", "/r/myapp/cat")
        assert response.code == 503
        assert response.headers.getRawHeaders("retry-after") == ["1"]
        self.clock.advance(2)
        self.treq.flush()
        self.successResultOf(busy)
