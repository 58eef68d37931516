"""The HAProxy agent (``LB_AGENT_PORT``, SPEC §9): one line per TCP connection.

HAProxy's ``agent-check`` connects to this port every ``agent-inter``, reads one ASCII
line and we close the connection. The line is, in order of precedence:

- ``drain`` from the moment SIGTERM arrives (``Drain``): HAProxy sends no new calls,
  and those in flight finish;
- ``down`` while the node is starting (its datastore and queue have not answered yet:
  it answers 503 to ``/r`` and ``/v1``, like ``/health``; without this, the ``ready``
  below would bring a restarting node back before it can serve), and while this
  node's Docker engine is unreachable or hung, or has not answered yet (the latest answer
  of the one shared Docker probe, the same ``/health`` uses; a shared backend outage,
  Postgres or Redis, is *not* a reason: every node sees it, SPEC §3, §10);
- ``up ready N%`` otherwise, N from ``weight.WeightGovernor``. ``ready`` because
  HAProxy keeps a server our ``drain`` put in (forced) drain mode until an agent says
  ``ready``, even after ``up``: without it a node restarted under the same HAProxy
  would stay drained for good (seen in ``tests/functional/test_cluster_production.py``).
  It also lifts a drain or maintenance an operator set by hand on HAProxy's socket:
  ``disable agent`` first (docs/operating/production.md).

Nothing is worked out per connection: a ``LoopingCall`` refreshes the weight and asks
the probe (at most one probe in flight) every ``interval`` seconds, and a connection
only writes the line that state makes. So the agent answers in well under a
millisecond of reactor time however busy the node is.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ironfunctions.balancer.weight import Load, WeightGovernor
from ironfunctions.drain import Drain
from ironfunctions.listen import listen_interface

REFRESH_INTERVAL_S = 1.0


class LBAgent:
    """What the agent answers, kept up to date by ``refresh``.

    :param probe: the shared Docker probe (``IContainerDriver.probe``): fires with
        whether the engine answered, within its own timeout; never fails.
    :param load: the node's figures now.
    :param drain: the node's drain state.
    :param governor: turns the figures into a weight.
    :param started: whether the node can serve yet (``/health``'s ``started``).
    """

    log = Logger()

    def __init__(
        self, probe: Callable[[], Deferred[bool]], load: Callable[[], Load], drain: Drain, governor: WeightGovernor,
        started: Callable[[], bool] = lambda: True,
    ) -> None:
        self._probe = probe
        self._started = started
        self._load = load
        self._drain = drain
        self._governor = governor
        self._probing = False
        self.docker_up: bool | None = None  # None until the first probe answers
        self._said = ""

    def reply(self) -> bytes:
        """The line for one agent-check connection."""
        if self._drain.draining:
            return b"drain\n"
        if self.docker_up is not True or not self._started():  # unknown until the first probe answers
            return b"down\n"
        return b"up ready %d%%\n" % self._governor.weight

    def refresh(self) -> None:
        """Update the weight from the figures of now; start a probe unless one is in flight."""
        try:
            self._governor.update(self._load())
        except Exception:  # a bug in a figure must not stop the loop: keep the last weight
            self.log.failure("Could not work out the agent's weight")
        if not self._probing:
            self._probing = True
            self._probe().addBoth(self._probed)
        self._log_change()

    def _probed(self, up: bool | Failure) -> None:
        self._probing = False
        self.docker_up = up is True
        self._log_change()

    def _log_change(self) -> None:
        said = self.reply().decode().strip()
        if said != self._said:
            self.log.info("Load-balancer agent answers {answer}", answer=said, previous=self._said or "nothing")
            self._said = said

    def factory(self) -> ServerFactory:
        """The factory of the agent's listening port."""
        return _AgentFactory(self)


class _AgentProtocol(Protocol):
    def __init__(self, agent: LBAgent) -> None:
        self._agent = agent

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        assert self.transport is not None
        self.transport.write(self._agent.reply())
        self.transport.loseConnection()


class _AgentFactory(ServerFactory):
    noisy = False  # no log line per connection, once a second per balancer

    def __init__(self, agent: LBAgent) -> None:
        self._agent = agent

    def buildProtocol(self, addr: object) -> Protocol:  # noqa: N802 (Twisted API)
        return _AgentProtocol(self._agent)


class LBAgentService(Service):
    """Listens on ``endpoint`` and refreshes ``agent`` every ``interval`` seconds (and
    at start). A service named ``lb-agent``."""

    log = Logger()
    name = "lb-agent"

    def __init__(
        self, agent: LBAgent, endpoint: IStreamServerEndpoint, clock: IReactorTime,
        interval: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._agent = agent
        self._endpoint = endpoint
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._port: IListeningPort | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._agent.refresh)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("Load-balancer agent loop died", f)
        )
        self._endpoint.listen(self._agent.factory()).addCallbacks(self._listening, self._listen_failed)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        if not self.running:  # stopped before the port was ready
            port.stopListening()

    def _listen_failed(self, failure: Failure) -> None:
        self.log.failure("Load-balancer agent cannot listen", failure)

    def stopService(self) -> Deferred[None] | None:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None


def agent_endpoint(listen: str, port: int) -> str:
    """The agent's server endpoint string: TCP ``port`` on the address the API's
    ``listen`` binds to (every address if it binds to all), loopback for a unix or
    systemd ``listen``. Pure."""
    interface = listen_interface(listen)
    if interface is None:
        return f"tcp:{port}:interface=127.0.0.1"
    kind = "tcp6" if listen.strip().lower().startswith("tcp6:") else "tcp"
    if not interface:
        return f"{kind}:{port}"
    return f"{kind}:{port}:interface=" + interface.replace("\\", "\\\\").replace(":", "\\:")
