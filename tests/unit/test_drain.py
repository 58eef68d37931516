"""The drain sequence after SIGTERM (``drain.py``, SPEC §7, §9), on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.api.admin import HealthChecks
from ironfunctions.drain import Drain, DrainService
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import LABEL_NODE
from ironfunctions.runner.agent import Agent
from ironfunctions.services import IronFunctionsService

from tests.fake_images import fake_driver
from tests.unit.test_api import call, client
from tests.unit.test_runner import make_call


class Recorder(Service):
    """A child that notes when it is told to stop (the listener, say)."""

    def __init__(self, name: str, clock: Clock, stopped: list[tuple[str, float]]) -> None:
        self.name = self._label = name
        self._clock = clock
        self._stopped = stopped

    def stopService(self) -> None:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped.append((self._label, self._clock.seconds()))


class DrainSequenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.drain = Drain(self.clock, timeout=60)

    def test_draining_begins_at_once_and_the_stop_waits_for_the_grace(self) -> None:
        service = DrainService(self.drain, grace=3, clock=self.clock)
        service.startService()  # type: ignore[no-untyped-call]
        assert not self.drain.draining
        stopped = service.stopService()
        assert self.drain.reason == "shutdown"
        self.clock.advance(2.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)

    def test_the_wait_for_calls_is_the_timeout_counted_from_the_end_of_the_grace(self) -> None:
        service = DrainService(self.drain, grace=3, clock=self.clock)
        service.startService()  # type: ignore[no-untyped-call]
        service.stopService()
        self.clock.advance(2)
        assert self.drain.remaining() == 60  # the grace does not eat into it
        self.clock.advance(1)  # the grace ends (a Clock runs due calls at the new time)
        self.clock.advance(45)
        assert self.drain.remaining() == 15
        self.clock.advance(100)
        assert self.drain.remaining() == 0

    def test_the_root_stops_the_listener_only_after_the_grace(self) -> None:
        """DrainService is added last: the root stops it first, and the others (the
        listener first) only once its grace is over."""
        stopped: list[tuple[str, float]] = []
        root = IronFunctionsService()
        Recorder("agent", self.clock, stopped).setServiceParent(root)
        Recorder("http", self.clock, stopped).setServiceParent(root)
        DrainService(self.drain, grace=3, clock=self.clock).setServiceParent(root)  # type: ignore[no-untyped-call]
        root.startService()  # type: ignore[no-untyped-call]
        done = root.stopService()
        assert self.drain.draining and stopped == []
        self.clock.advance(3)
        self.successResultOf(done)
        assert stopped == [("http", 3.0), ("agent", 3.0)]

    def test_health_is_503_draining_naming_the_reason_with_no_check_run(self) -> None:
        ran: list[str] = []

        async def docker() -> bool:
            ran.append("docker")
            return True

        checks = HealthChecks(node={"docker": docker}, draining=lambda: self.drain.reason)
        treq = client(health_checks=checks)
        assert call(treq, "GET", "/health") == (200, {"status": "ok"})
        self.drain.begin("shutdown")
        status, body = call(treq, "GET", "/health")
        assert (status, body["status"], body["reason"]) == (503, "draining", "shutdown")
        assert body["error"] == {"message": "draining: shutdown"}
        assert ran == ["docker"]  # only before the drain


class AgentStopTests(SynchronousTestCase):
    def test_the_agent_waits_for_calls_only_until_the_shutdown_deadline(self) -> None:
        clock = Clock()
        drain = Drain(clock, timeout=5)
        driver = fake_driver(clock)
        metrics = MemoryMetrics()
        cold = Agent.cold(driver, clock, "node-1", metrics, max_concurrency=2)
        agent = Agent(driver, clock, "node-1", metrics, dict(cold._runners), cold.slots,
                      drain_timeout=drain.remaining)
        agent.startService()
        running = Deferred.fromCoroutine(agent.run_call(make_call("sleep", call_id="s", timeout=60,
                                                                  config={"SLEEP": "30"})))
        drain.begin("shutdown")
        clock.advance(3)  # the grace
        drain.grace_over()
        clock.advance(2)  # 2 of the 5 s gone before the agent is told to stop
        stopped = agent.stopService()
        clock.advance(2.9)
        self.assertNoResult(stopped)
        clock.advance(0.1)
        self.successResultOf(stopped)
        # The call's container is removed; the call ends.
        assert not [c for c in driver.containers.values() if c.spec.labels.get(LABEL_NODE) == "node-1"]
        result: Any = self.successResultOf(running)
        assert result.status != "success"
