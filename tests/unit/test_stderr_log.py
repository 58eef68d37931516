"""A function's stderr in the daemon's log is bounded (SPEC §8, issue 13): the budget
(pure, with a ``Clock``), the log it drives, the agent (cold calls) and a hot container
(stderr during and between calls)."""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ironfunctions.calls.model import LOG_TRUNCATED_MARKER, cap_log
from ironfunctions.drivers.interface import IAttachedContainer
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import Call, CallRequest, CallResult, Route
from ironfunctions.runner.agent import Agent
from ironfunctions.runner.hot_container import STDERR_LIMIT, HotContainer
from ironfunctions.runner.protocol import RequestEncoder
from ironfunctions.runner.stderr_budget import StderrBudget
from ironfunctions.runner.stderr_log import LINE_MAX, StderrLog, count_lines, first_lines, line_text
from tests.fake_images import fake_driver
from tests.images import image_tag


def stderr_lines(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_format") == "function stderr"]


def summaries(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_format") == "function stderr truncated"]


class BudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = StderrBudget(self.clock.seconds)

    def test_a_call_gets_at_most_100_lines(self) -> None:
        assert self.budget.call_lines("a", 3) == 3
        assert self.budget.call_lines("a", 100_000) == 100
        assert self.budget.call_lines("a", 0) == 0

    def test_an_app_gets_at_most_1000_lines_a_minute_across_its_calls(self) -> None:
        granted = [self.budget.call_lines("a", 100) for _ in range(12)]
        assert granted == [100] * 10 + [0, 0]
        assert self.budget.call_lines("b", 100) == 100  # another app has its own
        self.clock.advance(59.9)
        assert self.budget.call_lines("a", 100) == 0
        self.clock.advance(0.1)
        assert self.budget.call_lines("a", 100) == 100

    def test_the_last_lines_of_an_app_minute_are_shared_out(self) -> None:
        assert [self.budget.call_lines("a", 95) for _ in range(11)] == [95] * 10 + [50]

    def test_an_idle_container_gets_100_lines_a_minute_within_its_apps_budget(self) -> None:
        window = self.budget.idle_window()
        assert self.budget.idle_lines("a", window, 60) == 60
        assert self.budget.idle_lines("a", window, 60) == 40
        assert self.budget.idle_lines("a", window, 1) == 0
        self.clock.advance(60)
        assert self.budget.idle_lines("a", window, 500) == 100
        # The app's minute (a new one, from now) is shared with its calls.
        assert [self.budget.call_lines("a", 100) for _ in range(10)] == [100] * 9 + [0]
        self.clock.advance(60)
        other = self.budget.idle_window()
        assert self.budget.idle_lines("a", other, 100) == 100
        # The app's budget is charged only with what the container's window granted.
        assert self.budget.idle_lines("a", other, 100) == 0
        assert [self.budget.call_lines("a", 100) for _ in range(10)] == [100] * 9 + [0]

    def test_apps_that_went_quiet_are_forgotten(self) -> None:
        for i in range(500):
            self.budget.call_lines(f"app{i}", 1)
        assert self.budget.apps == 500
        self.clock.advance(61)
        self.budget.call_lines("new", 1)
        assert self.budget.apps == 1


class LinesTests(SynchronousTestCase):
    def test_counting_and_splitting(self) -> None:
        assert count_lines(b"") == 0
        assert count_lines(b"a\nb\n") == 2 and count_lines(b"a\nb") == 2 and count_lines(b"\n\n\n") == 3
        assert first_lines(b"a\nb\nc", 2) == [b"a", b"b"]
        assert first_lines(b"a\nb\nc", 9) == [b"a", b"b", b"c"]
        assert first_lines(b"\n" * 1000, 3) == [b"", b"", b""]
        assert first_lines(b"a\n", 5) == [b"a"]

    def test_a_line_is_shown_without_its_cr_and_cut_when_long(self) -> None:
        assert line_text(b"crlf\r") == "crlf"
        assert line_text(b"\xffbad") == "\ufffdbad"
        long = line_text(b"x" * 100_000)
        assert long == "x" * LINE_MAX + "…"


class StderrLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log = StderrLog(self.clock)

    def test_a_call_logs_its_lines_one_field_each(self) -> None:
        with capturedLogs() as events:
            self.log.call(CallResult("c1", "success", stderr=b"one\ntwo\n"), "a", "/p", "c1")
        assert [(e["line"], e["app"], e["path"], e["call_id"]) for e in events] == [
            ("one", "a", "/p", "c1"), ("two", "a", "/p", "c1")]
        assert not summaries(events)

    def test_a_flood_logs_100_lines_and_one_summary(self) -> None:
        stderr = b"".join(b"line %d\n" % i for i in range(100_000))
        with capturedLogs() as events:
            self.log.call(CallResult("c1", "success", stderr=stderr), "a", "/p", "c1")
        assert [e["line"] for e in stderr_lines(events)] == [f"line {i}" for i in range(100)]
        [summary] = summaries(events)
        assert len(events) == 101
        assert (summary["lines"], summary["bytes"], summary["logged"], summary["truncated"]) == (
            100_000, len(stderr), 100, 99_900)
        assert summary["call_id"] == "c1"

    def test_what_was_not_kept_counts_in_the_summary(self) -> None:
        result = CallResult("c1", "error", stderr=b"a\nb\n", stderr_lost_bytes=5000, stderr_lost_lines=700)
        with capturedLogs() as events:
            self.log.call(result, "a", "/p", "c1")
        assert len(stderr_lines(events)) == 2
        [summary] = summaries(events)
        assert (summary["lines"], summary["bytes"], summary["truncated"]) == (702, 5004, 700)

    def test_an_apps_calls_share_1000_lines_a_minute_then_only_summaries(self) -> None:
        stderr = b"x\n" * 150
        with capturedLogs() as events:
            for i in range(12):
                self.log.call(CallResult(f"c{i}", "success", stderr=stderr), "a", "/p", f"c{i}")
        assert len(stderr_lines(events)) == 1000
        assert [s["logged"] for s in summaries(events)] == [100] * 10 + [0, 0]


def make_agent(clock: Clock) -> Agent:
    agent = Agent.cold(fake_driver(clock), clock, "node-1", MemoryMetrics(), max_concurrency=2)
    agent.startService()
    return agent


def chatter_call(lines: int) -> Call:
    route = Route(app_name="myapp", path="/chatter", image=image_tag("stderr-chatter"), config={"LINES": str(lines)})
    return Call("01CALL", route, CallRequest(method="POST", url="http://h/r/myapp/chatter"))


class AgentTests(SynchronousTestCase):
    def test_a_cold_flood_logs_100_lines_and_the_call_log_keeps_1_mib_with_the_marker(self) -> None:
        clock = Clock()
        agent = make_agent(clock)
        with capturedLogs() as events:
            result = self.successResultOf(Deferred.fromCoroutine(agent.run_call(chatter_call(100_000))))
        assert len(stderr_lines(events)) == 100
        [summary] = summaries(events)
        assert summary["lines"] == 100_000 and summary["truncated"] == 99_900
        assert result.stderr.endswith(LOG_TRUNCATED_MARKER)
        assert len(result.stderr) == 1024 * 1024 + len(LOG_TRUNCATED_MARKER)
        assert cap_log(result.stderr) == result.stderr  # the recorder keeps it as it is

    def test_a_call_within_its_limits_keeps_its_log_as_written(self) -> None:
        clock = Clock()
        agent = make_agent(clock)
        with capturedLogs() as events:
            result = self.successResultOf(Deferred.fromCoroutine(agent.run_call(chatter_call(3))))
        assert [e["line"] for e in stderr_lines(events)] == ["chatter line 1", "chatter line 2", "chatter line 3"]
        assert result.stderr == b"chatter line 1\nchatter line 2\nchatter line 3\n"
        assert not summaries(events)


class Owner:
    def available(self, container: HotContainer) -> None:
        pass

    def kill(self, container: HotContainer) -> Deferred[None]:
        return succeed(None)

    def exited(self, container: HotContainer) -> None:
        pass

    def idle_expired(self, container: HotContainer) -> None:
        pass


@implementer(IAttachedContainer)
class Attached:
    container_id = "hot1"

    def write(self, data: bytes) -> None:
        pass

    def close_stdin(self) -> None:
        pass


class HotContainerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.route = Route(app_name="a", path="/hot", image="hotimg", format="http", timeout=30, idle_timeout=600)
        self.container = HotContainer(Owner(), self.clock, RequestEncoder(self.route, {}), 600, 1 << 20,
                                      {"app": "a", "path": "/hot"}, 0.0, StderrLog(self.clock))
        self.container.started(Attached(), 0)

    def call(self, call_id: str, stderr: bytes = b"") -> CallResult:
        d = self.container.serve(Call(call_id, self.route, CallRequest("POST", "http://h/r/a/hot")), 0, 0)
        if stderr:
            self.container.stderr_received(stderr)
        self.container.stdout_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return self.successResultOf(d)

    def test_stderr_of_a_call_is_kept_up_to_the_limit_and_the_rest_counted(self) -> None:
        d = self.container.serve(Call("c1", self.route, CallRequest("POST", "http://h/r/a/hot")), 0, 0)
        chunk = b"y" * 99 + b"\n"
        for _ in range(20_000):  # 2 MB in 100-byte chunks
            self.container.stderr_received(chunk)
        self.container.stdout_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        result = self.successResultOf(d)
        assert len(result.stderr) == STDERR_LIMIT
        assert result.stderr_lost_bytes == 2_000_000 - STDERR_LIMIT
        assert count_lines(result.stderr) + result.stderr_lost_lines in (20_000, 20_001)  # a line cut in two

    def test_stderr_between_calls_gets_100_lines_a_minute_then_a_summary(self) -> None:
        self.call("c1")
        with capturedLogs() as events:
            for _ in range(50):
                self.container.stderr_received(b"idle\n" * 100)  # 5,000 lines
        logged = stderr_lines(events)
        assert len(logged) == 100 and not summaries(events)
        assert all(e["call_id"] == "c1" and e["container_id"] == "hot1" and e["app"] == "a" for e in logged)
        self.clock.advance(61)
        with capturedLogs() as events:
            self.container.stderr_received(b"later\n" * 300)  # a new minute: its summary of the last one
        [summary] = summaries(events)
        assert (summary["lines"], summary["logged"], summary["truncated"]) == (5000, 100, 4900)
        assert len(stderr_lines(events)) == 100
        with capturedLogs() as events:
            self.call("c2")  # the next call reports what the idle container dropped
        [summary] = summaries(events)
        assert (summary["lines"], summary["truncated"], summary["call_id"]) == (300, 200, "c1")

    def test_a_line_cut_between_two_chunks_counts_once(self) -> None:
        self.call("c1")
        with capturedLogs() as events:
            for _ in range(300):
                self.container.stderr_received(b"half a li")
                self.container.stderr_received(b"ne\n")
            self.container.stderr_received(b"a last line without newline")
            self.call("c2")
        [summary] = summaries(events)
        assert (summary["lines"], summary["bytes"], summary["logged"]) == (301, 3627, 100)

    def test_a_quiet_container_costs_no_summary(self) -> None:
        self.call("c1")
        with capturedLogs() as events:
            self.container.stderr_received(b"one line\n")
            self.call("c2")
            self.call("c3")
        assert [e["line"] for e in events] == ["one line"]
