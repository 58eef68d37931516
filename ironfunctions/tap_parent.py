"""The wiring of a node's parent process (``WORKERS`` > 1; ``tap.py`` wires a single
process and each worker).

The parent holds what must be one per node: the listening socket the workers share,
the container slots (``workers/slots.py``), the calls forwarded between workers, the
node's views (``/stats``, ``/metrics``' directory, the balancer agent), its containers'
cleanup, its function network and the cancels between workers; and it keeps the workers
running (``workers/supervisor.py``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString

from ironfunctions.balancer.agent import LBAgent, LBAgentService, agent_endpoint
from ironfunctions.balancer.waits import WaitWindow
from ironfunctions.balancer.weight import WeightGovernor
from ironfunctions.config import Config
from ironfunctions.drain import Drain
from ironfunctions.drivers.docker import DockerDriver
from ironfunctions.drivers.docker_probe import DockerProbe
from ironfunctions.drivers.netguard_service import netguard_service
from ironfunctions.logging import make_observer
from ironfunctions.metrics import FanoutMetrics, LogMetrics, PrometheusMetrics
from ironfunctions.metrics import shared as shared_metrics
from ironfunctions.runner.admission import Slots
from ironfunctions.services import FlushOnStopService, IronFunctionsService
from ironfunctions.workers.board import ConnectionBoard
from ironfunctions.workers.bus import CancelRelay
from ironfunctions.workers.cleanup import NodeCleanupService
from ironfunctions.workers.forward import ForwardRelay
from ironfunctions.workers.guard import GuardRelay
from ironfunctions.workers.link import Link
from ironfunctions.workers.routes import RouteChangeRelay
from ironfunctions.workers.slots import SlotBroker
from ironfunctions.workers.supervisor import BOARD_ENV, WorkerSupervisor
from ironfunctions.workers.views import NodeViews

__all__ = ["parent_service"]


def remove_worker(cleanup: NodeCleanupService, broker: SlotBroker, index: int) -> Deferred[None]:
    """A dead worker's containers are removed, then its slots return (never sooner: the
    node must not run more than ``MAX_CONCURRENCY`` containers even for a moment)."""
    done: Deferred[None] = Deferred()

    def release(result: object) -> None:
        broker.release_worker(index)
        done.callback(None)

    cleanup.worker_gone(index).addBoth(release)
    return done


def parent_service(config: Config, settings: Mapping[str, str], reactor: Any) -> IService:
    """The parent of ``WORKERS`` worker processes: it holds the listening socket they
    share and the node's container slots (``workers/slots.py``), and keeps them running.

    :param settings: the options ``twistd ironfunctions`` was given, for the workers'
        command lines."""
    root = IronFunctionsService(make_observer(config.log_level))
    log_metrics = LogMetrics(reactor, level=config.log_level)
    FlushOnStopService("metrics-flush", log_metrics.flush).setServiceParent(root)  # type: ignore[no-untyped-call]
    # The node's Prometheus figures: every process's, in one directory (metrics/shared.py);
    # the parent's own (app.throttled of its slots) too. Removed after the workers exit.
    metrics_dir = shared_metrics.prepare(config.data_dir, os.getpid())
    shared_metrics.SharedMetricsService(metrics_dir).setServiceParent(root)  # type: ignore[no-untyped-call]
    metrics = FanoutMetrics([log_metrics, PrometheusMetrics(process_metrics=False, multiprocess_dir=metrics_dir)])
    slots = Slots(config.max_concurrency, reactor, config.admission_max_waiting, config.admission_wait,
                  config.app_concurrency, metrics)
    broker = SlotBroker(slots, reactor)
    # What the node tells about itself: /stats summed over the workers, the balancer
    # agent's figures from their reports (workers/views.py).
    views = NodeViews(config.worker_processes, reactor, WaitWindow(reactor))
    drain = Drain(reactor, config.shutdown_timeout)  # from SIGTERM on (drain_begin below)
    if config.lb_agent_port:  # the node's one agent; workers run none
        probe = DockerProbe(reactor, config.docker_host)
        probe.setServiceParent(root)  # type: ignore[no-untyped-call]
        lb_agent = LBAgent(probe.probe, lambda: views.load(slots.limit), drain, WeightGovernor(reactor),
                           started=views.started)
        endpoint = serverFromString(reactor, agent_endpoint(config.listen, config.lb_agent_port))
        # Added before the workers' supervisor: it answers "drain" until they have all exited.
        LBAgentService(lb_agent, endpoint, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]
    os.makedirs(config.data_dir, exist_ok=True)
    board_path = os.path.join(config.data_dir, "workers.board")  # workers/board.py
    board = ConnectionBoard(board_path, config.worker_processes)
    for index in range(config.worker_processes):
        board.reset(index)

    # The node's containers, its function network and its cancels are the parent's
    # (workers/cleanup.py, guard.py, bus.py); the workers hear of them over their links.
    driver = DockerDriver(reactor, 1, base_url=config.docker_host)  # removals only
    driver.setServiceParent(root)  # type: ignore[no-untyped-call]
    cleanup = NodeCleanupService(driver, config.node_id, os.path.join(config.data_dir, "hot-sockets"), reactor)
    cleanup.setServiceParent(root)  # type: ignore[no-untyped-call]  # stops after the last worker
    guard = netguard_service(reactor, config.docker_network, config.function_allow_nets, config.docker_host)
    if guard is not None:
        guard.setServiceParent(root)  # type: ignore[no-untyped-call]
    relays: list[Any] = [broker, CancelRelay(), ForwardRelay(), RouteChangeRelay(), views]
    relays += [GuardRelay(guard)] if guard is not None else []

    def attach(index: int, link: Link) -> None:
        for relay in relays:
            relay.attach(index, link)

    def gone(index: int) -> None:
        for relay in relays:
            relay.detach(index)
        board.reset(index)

    WorkerSupervisor(
        reactor, config.worker_processes, config.listen, attach, gone, settings,
        {"NODE_ID": config.node_id, BOARD_ENV: board_path, shared_metrics.ENV: metrics_dir},
        drain_begin=lambda: drain.begin("shutdown"),
        drain_time=config.drain_grace + config.shutdown_timeout,
        on_worker_gone=lambda pid: shared_metrics.mark_process_dead(metrics_dir, pid),
        ready=cleanup.when_ready, cleanup=lambda index: remove_worker(cleanup, broker, index),
    ).setServiceParent(root)  # type: ignore[no-untyped-call]
    return root
