"""Unit tests of the runner: call ids, container planning, admission and the agent,
with ``FakeDriver`` and a ``Clock`` (no sockets, no reactor)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import ImageNotFound, NotReady, Overloaded
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import LABEL_CALL, LABEL_NODE, Call, CallRequest, CallResult, ContainerResult, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.agent import Agent, cold_outcome
from ironfunctions.runner.ids import CallIds
from ironfunctions.runner.plan import call_env, container_spec

from tests.fake_images import fake_driver
from tests.images import image_tag


def make_call(image: str = "cat", call_id: str = "01CALL", **route_kw: Any) -> Call:
    route = Route(app_name="myapp", path="/hello", image=image_tag(image), **route_kw)
    request = CallRequest(method="POST", url="http://h/r/myapp/hello?x=1", body=b"in")
    return Call(call_id, route, request)


class CallIdsTests(SynchronousTestCase):
    def test_ids_are_26_url_safe_chars_and_sort_by_time(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        ids = CallIds(clock.seconds)
        made = []
        for _ in range(50):
            made.append(ids())
            clock.advance(0.0004)
        assert all(len(i) == 26 and i.isalnum() for i in made)
        assert made == sorted(made)
        assert len(set(made)) == len(made)

    def test_ids_in_the_same_millisecond_still_increase(self) -> None:
        ids = CallIds(lambda: 1_700_000_000.0, random_bytes=lambda n: b"\xff" * (n - 1) + b"\x00")
        first, second = ids(), ids()
        assert second > first

    def test_ids_are_the_ulid_encoding_of_time_and_random_bits(self) -> None:
        """Time in ms as 10 Crockford base32 chars, then the 80 random bits as 16."""
        import base64
        import random

        crockford = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")

        def reference(ms: int, rand: bytes) -> str:
            time_part = base64.b32encode(ms.to_bytes(10, "big")).translate(crockford).decode()[-10:]
            return time_part + base64.b32encode(rand).translate(crockford).decode()

        rng = random.Random(7)
        for ms in [0, 1, 1_700_000_000_123, 2**48 - 1, *(rng.randrange(2**48) for _ in range(50))]:
            rand = rng.randbytes(10) if ms > 1 else bytes([0xFF * ms] * 10)
            ids = CallIds(lambda: ms / 1000 + 0.0001, random_bytes=lambda n: rand)
            assert ids() == reference(ms, rand)


class PlanTests(SynchronousTestCase):
    def test_environment_has_call_variables_config_headers_and_params(self) -> None:
        route = Route(app_name="a", path="/p", image="img", memory=64, format="default",
                      config={"route-key": "r", "shared": "route"})
        request = CallRequest(method="GET", url="http://h:8080/r/a/p?q=1",
                              headers={"Content-Type": ["text/plain"], "X-Many": ["1", "2"]},
                              params={"id": "42"})
        env = call_env(Call("CID", route, request, app_config={"app-key": "a", "SHARED": "app"}))
        assert env == {
            "METHOD": "GET", "ROUTE": "/p", "REQUEST_URL": "http://h:8080/r/a/p?q=1",
            "APP_NAME": "a", "CALL_ID": "CID", "FN_FORMAT": "default", "MEMORY_MB": "64",
            "APP_KEY": "a", "ROUTE_KEY": "r", "SHARED": "route",
            "HEADER_CONTENT_TYPE": "text/plain", "HEADER_X_MANY": "1, 2", "PARAM_ID": "42",
        }

    def test_a_header_named_with_an_underscore_is_not_in_the_environment(self) -> None:
        """Defence in depth behind the invoker: ``X_User`` must not pose as ``X-User``."""
        request = CallRequest(method="GET", url="http://h/r/a/p",
                              headers={"X-User": ["alice"], "X_User": ["mallory"]})
        env = call_env(Call("CID", Route(app_name="a", path="/p", image="img"), request))
        assert env["HEADER_X_USER"] == "alice"

    def test_a_jwt_routes_authorization_is_not_in_the_environment(self) -> None:
        """Defence in depth behind the invoker (a call queued before it dropped it)."""
        request = CallRequest(method="GET", url="http://h/r/a/p", headers={"Authorization": ["Bearer t"]})
        secret = Route(app_name="a", path="/p", image="img", jwt_key="k" * 32)
        assert "HEADER_AUTHORIZATION" not in call_env(Call("CID", secret, request))
        open_route = Route(app_name="a", path="/p", image="img")
        assert call_env(Call("CID", open_route, request))["HEADER_AUTHORIZATION"] == "Bearer t"

    def test_spec_carries_limits_labels_and_stdin(self) -> None:
        call = make_call(memory=256, timeout=7)
        spec = container_spec(call, "node-1", network_mode="none", max_response_size=1000)
        assert (spec.image, spec.memory_mb, spec.timeout_s, spec.network_mode) == (
            image_tag("cat"), 256, 7.0, "none")
        assert spec.stdin == b"in" and spec.stdout_limit == 1000
        assert spec.labels[LABEL_NODE] == "node-1" and spec.labels[LABEL_CALL] == "01CALL"


class OutcomeTests(SynchronousTestCase):
    def test_exit_codes_oom_and_timeouts_map_to_statuses_and_messages(self) -> None:
        def outcome(**kw):  # type: ignore[no-untyped-def]
            r = cold_outcome("c", ContainerResult("x", kw.pop("exit_code", 0), **kw), 5)
            return r.status, r.error

        assert outcome(stdout=b"hi") == ("success", "")
        assert outcome(exit_code=3) == ("error", "exit code 3")
        assert outcome(exit_code=137, oom_killed=True) == ("error", "out of memory")
        assert outcome(exit_code=-1, timed_out=True) == ("timeout", "Timed out")
        assert outcome(exit_code=137, stdout_truncated=True) == ("error", "Function response too large")


class SlotsTests(SynchronousTestCase):
    def test_waiters_get_slots_in_order_and_time_out_with_Overloaded(self) -> None:
        clock = Clock()
        slots = Slots(1, clock, max_waiting=2, wait_bound=5)
        first = Deferred.fromCoroutine(slots.acquire("a"))
        self.successResultOf(first)
        second = Deferred.fromCoroutine(slots.acquire("a"))
        third = Deferred.fromCoroutine(slots.acquire("a"))
        fourth = Deferred.fromCoroutine(slots.acquire("a"))
        self.failureResultOf(fourth, Overloaded)  # queue full: refused at once
        self.assertNoResult(second)
        slots.release("a")
        self.successResultOf(second)
        clock.advance(5)
        self.failureResultOf(third, Overloaded)
        assert slots.waiting == 0 and slots.in_use == 1

    def test_a_failing_pressure_hook_leaves_the_waiter_queued_normally(self) -> None:
        clock = Clock()
        slots = Slots(1, clock, max_waiting=2, wait_bound=5)

        def broken(app: str | None, route: tuple[str, str] | None) -> bool:
            raise RuntimeError("bug")

        slots.on_pressure(broken)
        self.successResultOf(Deferred.fromCoroutine(slots.acquire("a")))
        second = Deferred.fromCoroutine(slots.acquire("a"))
        self.assertNoResult(second)  # waiting, not failed by the hook's bug
        assert len(self.flushLoggedErrors(RuntimeError)) == 1
        slots.release("a")
        self.successResultOf(second)
        assert slots.waiting == 0


class AgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.driver = fake_driver(self.clock)
        self.metrics = MemoryMetrics()
        self.agent = Agent.cold(self.driver, self.clock, "node-1", self.metrics, max_concurrency=2,
                                wait_bound=3, max_waiting=2)
        self.leftover = self.driver.add_container({LABEL_NODE: "node-1"})
        self.other = self.driver.add_container({LABEL_NODE: "node-2"})
        self.agent.startService()

    def run_call(self, call: Call) -> Deferred[CallResult]:
        return Deferred.fromCoroutine(self.agent.run_call(call))

    def test_start_removes_only_this_nodes_leftover_containers(self) -> None:
        assert self.leftover not in self.driver.containers
        assert self.other in self.driver.containers

    def test_success_returns_stdout_and_emits_metrics(self) -> None:
        result = self.successResultOf(self.run_call(make_call("cat")))
        assert (result.status, result.body, result.call_id) == ("success", b"in", "01CALL")
        fields = {"app": "myapp", "path": "/hello", "call_id": "01CALL"}
        assert self.metrics.total("run.requests", **fields) == 1
        assert self.metrics.total("run.succeeded", **fields) == 1
        names = {s.name for s in self.metrics.samples}
        assert {"run.wait_time", "run.start_time", "run.exec_time"} <= names
        assert self.agent.stats() == {"Queue": 0, "Running": 0, "Complete": 1}

    def test_nonzero_exit_is_an_error_result(self) -> None:
        result = self.successResultOf(self.run_call(make_call("exit-code")))
        assert (result.status, result.error, result.exit_code) == ("error", "exit code 3", 3)
        assert self.metrics.total("run.error") == 1

    def test_timeout_counts_from_start_and_removes_the_container_first(self) -> None:
        route_timeout = 2
        d = self.run_call(make_call("sleep", timeout=route_timeout))
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        result = self.successResultOf(d)
        assert (result.status, result.error) == ("timeout", "Timed out")
        # The call's container ran, and is gone by the time the result is there.
        assert [s.labels.get(LABEL_CALL) for s in self.driver.started_specs] == ["01CALL"] and not [
            c for c in self.driver.containers.values() if c.spec.labels.get(LABEL_CALL) == "01CALL"]
        assert self.metrics.total("run.timeout") == 1

    def test_stderr_lines_are_logged_with_the_call_id(self) -> None:
        with capturedLogs() as events:
            self.successResultOf(self.run_call(make_call("stderr-chatter")))
        lines = [e for e in events if e.get("log_format") == "function stderr"]
        assert [e["line"] for e in lines] == ["chatter line 1", "chatter line 2", "chatter line 3"]
        assert all(e["call_id"] == "01CALL" for e in lines)

    def test_calls_beyond_the_limit_wait_and_the_wait_is_measured(self) -> None:
        calls = [self.run_call(make_call("sleep", call_id=f"c{i}", timeout=60)) for i in range(3)]
        assert self.agent.stats() == {"Queue": 1, "Running": 2, "Complete": 0}
        self.clock.advance(2.5)  # not enough for sleep 60: still waiting within the bound
        self.assertNoResult(calls[2])
        # Let every call end: one left in flight is finished by the garbage collector at
        # exit, and logs "Unhandled error in Deferred".
        self.clock.advance(120)
        self.failureResultOf(calls[2], Overloaded)
        assert [self.successResultOf(d).status for d in calls[:2]] == ["success", "success"]  # slept 60 s

    def test_overload_is_refused_with_Overloaded(self) -> None:
        calls = [self.run_call(make_call("sleep", call_id=f"c{i}", timeout=60)) for i in range(5)]
        self.failureResultOf(calls[4], Overloaded)  # 2 running + 2 waiting is the most
        self.clock.advance(3)
        self.failureResultOf(calls[2], Overloaded)
        self.failureResultOf(calls[3], Overloaded)

    def test_waiting_call_runs_when_a_slot_frees_and_reports_wait_time(self) -> None:
        busy = [self.run_call(make_call("sleep", call_id=f"s{i}", config={"SLEEP": "2"}))
                for i in range(2)]
        waiting = self.run_call(make_call("cat", call_id="c"))
        self.clock.advance(1)
        self.assertNoResult(waiting)
        self.clock.advance(1)
        for d in busy:
            assert self.successResultOf(d).status == "success"
        result = self.successResultOf(waiting)
        assert (result.status, result.wait_ms) == ("success", 2000)

    def test_a_call_cancelled_while_it_waits_for_a_slot_ends_at_once_and_never_starts(self) -> None:
        busy = [self.run_call(make_call("sleep", call_id=f"s{i}", config={"SLEEP": "2"})) for i in range(2)]
        waiting = self.run_call(make_call("cat", call_id="late"))
        self.clock.advance(0.5)
        assert self.successResultOf(Deferred.fromCoroutine(self.agent.cancel("late"))) is True
        result = self.successResultOf(waiting)  # at once, not when a slot frees
        assert (result.status, result.error, result.wait_ms) == ("cancelled", "Call cancelled", 500)
        assert self.agent.slots.waiting == 0 and self.agent.slots.in_use == 2
        self.clock.advance(2)
        assert [self.successResultOf(d).status for d in busy] == ["success", "success"]
        assert "late" not in [s.labels.get(LABEL_CALL) for s in self.driver.started_specs]
        assert self.agent.slots.in_use == 0
        assert self.metrics.total("run.cancelled", call_id="late") == 1
        # The slot it gave up goes to the next call as usual.
        assert self.successResultOf(self.run_call(make_call("cat", call_id="next"))).status == "success"

    def test_missing_image_raises_ImageNotFound(self) -> None:
        call = make_call()
        call = Call("x", Route(app_name="a", path="/p", image="nope:1"), call.request)
        f = self.failureResultOf(self.run_call(call), ImageNotFound)
        assert str(f.value) == "Image not found: nope:1"

    def test_stop_drains_in_flight_calls_refuses_new_ones_and_removes_containers(self) -> None:
        running = self.run_call(make_call("sleep", call_id="s", timeout=60, config={"SLEEP": "5"}))
        stopped = self.agent.stopService()
        self.failureResultOf(self.run_call(make_call("cat")), NotReady)
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.successResultOf(running)
        self.clock.advance(0)
        self.successResultOf(stopped)
        assert not [c for c in self.driver.containers.values() if c.spec.labels.get(LABEL_NODE) == "node-1"]
