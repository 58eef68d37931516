"""The HAProxy agent (``balancer/agent.py``, ``balancer/waits.py``): the line it
answers, the one shared probe, the wait figures it reads; no sockets, a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.balancer.agent import LBAgent, LBAgentService, agent_endpoint
from ironfunctions.balancer.waits import WaitWindow
from ironfunctions.balancer.weight import Load, WeightGovernor
from ironfunctions.drain import Drain
from ironfunctions.drivers.probe import SingleFlightProbe
from ironfunctions.metrics import FanoutMetrics, MemoryMetrics
from ironfunctions.runner.agent import Agent

from tests.fake_images import fake_driver
from tests.unit.test_runner import make_call


class Engine:
    """A Docker engine check the test answers by hand (``answer``), counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[Deferred[None]] = []

    def check(self) -> Deferred[None]:
        self.calls += 1
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, up: bool = True) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None) if up else d.errback(ConnectionRefusedError("engine down"))


def connect(agent: LBAgent) -> StringTransport:
    """One agent-check connection; the transport shows what was written and whether it closed."""
    transport = StringTransport()
    protocol = agent.factory().buildProtocol(None)
    assert protocol is not None
    protocol.makeConnection(transport)
    return transport


class AgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = Engine()
        self.probe = SingleFlightProbe(self.engine.check, self.clock, timeout=2.5)
        self.drain = Drain(self.clock, 60)
        self.load = Load(calls=0, limit=10, wait_ms=0)
        self.probes = 0

        def probe() -> Deferred[bool]:
            self.probes += 1
            return self.probe.probe()

        self.agent = LBAgent(probe, lambda: self.load, self.drain, WeightGovernor(self.clock))

    def test_one_line_per_connection_then_the_agent_closes_it(self) -> None:
        self.agent.refresh()
        self.engine.answer(up=True)
        transport = connect(self.agent)
        assert transport.value() == b"up ready 100%\n"
        assert transport.disconnecting

    def test_down_until_the_node_has_started_then_up_and_ready(self) -> None:
        # "ready" lifts the drain HAProxy kept from this node's previous run: said
        # before the node can serve, it would bring calls to a node answering 503.
        started = False
        agent = LBAgent(self.probe.probe, lambda: self.load, self.drain, WeightGovernor(self.clock),
                        started=lambda: started)
        agent.refresh()
        self.engine.answer(up=True)
        assert connect(agent).value() == b"down\n"
        started = True
        assert connect(agent).value() == b"up ready 100%\n"

    def test_drain_from_the_moment_draining_begins_whatever_the_engine_says(self) -> None:
        self.agent.refresh()
        self.engine.answer(up=False)
        self.drain.begin("shutdown")
        assert connect(self.agent).value() == b"drain\n"

    def test_down_while_the_engine_refuses_and_up_again_once_it_answers(self) -> None:
        self.agent.refresh()
        self.engine.answer(up=False)
        assert connect(self.agent).value() == b"down\n"
        self.clock.advance(1)
        self.agent.refresh()
        self.engine.answer(up=True)
        assert connect(self.agent).value() == b"up ready 100%\n"

    def test_a_hung_engine_is_down_after_the_probe_timeout_and_gets_no_second_probe(self) -> None:
        self.agent.refresh()  # the engine never answers
        # Nothing known yet: down, not up (a node whose engine never answered must not
        # be brought in, nor flip up then down as its first probe times out).
        assert connect(self.agent).value() == b"down\n"
        for _ in range(10):
            self.clock.advance(1)
            self.agent.refresh()
        assert connect(self.agent).value() == b"down\n"
        assert self.engine.calls == 1  # one engine call in flight, however long it hangs

    def test_connections_start_no_probe_and_a_refresh_at_most_one(self) -> None:
        self.agent.refresh()
        self.agent.refresh()
        for _ in range(100):
            connect(self.agent)
        assert (self.probes, self.engine.calls) == (1, 1)
        self.engine.answer()
        self.agent.refresh()
        assert (self.probes, self.engine.calls) == (2, 2)

    def test_the_weight_follows_the_node_figures(self) -> None:
        self.load = Load(calls=20, limit=10, wait_ms=0)
        for _ in range(3):
            self.agent.refresh()
            self.engine.answer()
            self.clock.advance(1)
        assert connect(self.agent).value() == b"up ready 10%\n"

    def test_the_service_listens_and_refreshes_every_second(self) -> None:
        reactor = MemoryReactor()
        service = LBAgentService(self.agent, TCP4ServerEndpoint(reactor, 9191, interface="127.0.0.1"), self.clock)
        service.startService()
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (9191, "127.0.0.1")
        assert self.engine.calls == 1  # at start
        self.engine.answer()
        self.clock.advance(1)
        assert self.engine.calls == 2
        service.stopService()
        self.engine.answer()
        self.clock.advance(5)
        assert self.engine.calls == 2


def test_agent_listens_on_the_interface_the_api_listens_on() -> None:
    assert agent_endpoint("tcp:8080:interface=127.0.0.1:backlog=1024", 8081) == "tcp:8081:interface=127.0.0.1"
    assert agent_endpoint("tcp:8080:interface=10.0.0.5", 8081) == "tcp:8081:interface=10.0.0.5"
    assert agent_endpoint("tcp:8080", 8081) == "tcp:8081"
    assert agent_endpoint("tcp6:8080:interface=\\:\\:1", 8081) == "tcp6:8081:interface=\\:\\:1"
    assert agent_endpoint("unix:/run/if.sock", 8081) == "tcp:8081:interface=127.0.0.1"
    assert agent_endpoint("systemd:domain=INET:index=0", 8081) == "tcp:8081:interface=127.0.0.1"


def test_wait_window_gives_the_90th_percentile_of_the_last_ten_seconds() -> None:
    clock = Clock()
    window = WaitWindow(clock)
    assert window.percentile() == 0.0
    for ms in range(1, 11):  # 1..10 ms
        window.timing("run.wait_time", ms)
    window.timing("run.exec_time", 5000)  # not a wait
    window.count("run.requests")
    assert window.percentile(0.9) == 9.0
    assert window.percentile(1.0) == 10.0
    clock.advance(10.5)
    window.many([("time", "run.wait_time", 700), ("time", "run.start_time", 9000)], app="a")
    assert window.percentile() == 700.0  # the old ones left the window


def test_wait_window_is_bounded() -> None:
    window = WaitWindow(Clock(), max_samples=100)
    for _ in range(10_000):
        window.timing("run.wait_time", 1)
    assert len(window._samples) == 100


class WaitFedByRunnerTests(SynchronousTestCase):
    def test_the_window_sees_the_wait_time_each_call_reports_through_the_metrics(self) -> None:
        """Fed the way tap.py wires it: one more sink beside the others."""
        clock = Clock()
        window = WaitWindow(clock)
        agent = Agent.cold(fake_driver(clock), clock, "node-1", FanoutMetrics([MemoryMetrics(), window]),
                           max_concurrency=1)
        agent.startService()
        busy = Deferred.fromCoroutine(agent.run_call(make_call("sleep", call_id="a", config={"SLEEP": "3"})))
        waiting = Deferred.fromCoroutine(agent.run_call(make_call("cat", call_id="b")))
        clock.advance(3)
        self.successResultOf(busy)
        assert self.successResultOf(waiting).wait_ms == 3000
        assert window.percentile(1.0) == 3000.0
