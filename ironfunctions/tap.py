"""``twistd ironfunctions``: options, and the wiring of the daemon's services.

``makeService`` only builds and connects objects; connecting to databases, Docker and
queues happens when the services start. Every option mirrors an environment variable
of SPEC §2; the option wins over the variable, the variable over the default.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ironfunctions.api import build_api
from ironfunctions.api.admin import HealthChecks, StatsSource, report_backends
from ironfunctions.api.invoke import InvokeResource
from ironfunctions.balancer.agent import LBAgent, LBAgentService, agent_endpoint
from ironfunctions.balancer.waits import WaitWindow
from ironfunctions.balancer.weight import Load, WeightGovernor
from ironfunctions.drain import Drain, DrainService
from ironfunctions.http.proxies import TrustedProxies
from ironfunctions.runner.invoker import Invoker
from ironfunctions.config import Config
from ironfunctions.datastore import stores_from_url
from ironfunctions.drivers.docker import DockerDriver
from ironfunctions.drivers.netguard_service import NetguardService, guarded_calls, netguard_service
from ironfunctions.drivers.netplan import is_guarded
from ironfunctions.cancelbus.memory import MemoryCancelBus
from ironfunctions.logging import make_observer
from ironfunctions.metrics import FanoutMetrics, IMetrics, LogMetrics, PrometheusMetrics, StatsdMetrics
from ironfunctions.metrics import shared as shared_metrics
from ironfunctions.routecache import RouteCache
from ironfunctions.api.tasks import TasksAPI
from ironfunctions.calls.recorder import CallRecorder
from ironfunctions.calls.retention import CallRetentionService
from ironfunctions.mq import QueueLimits, queue_from_url
from ironfunctions.runner.async_worker import AsyncWorkerService
from ironfunctions.runner.cancel import make_app_calls_ender, make_cancel_handler, make_canceller
from ironfunctions.cancelbus import cancel_bus_for
from ironfunctions.runner.attempts import AttemptPolicy
from ironfunctions.runner.reconciler import Reconciler, rebuild_counts_after_loss
from ironfunctions.runner.submit import AsyncSubmitter
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.agent import Agent, ColdRunner
from ironfunctions.runner.hot import HotRunner
from ironfunctions.runner.stderr_log import StderrLog
from ironfunctions.runner.ids import CallIds
from ironfunctions.runner.plan import FunctionPolicy
from ironfunctions.runner.reports import GAUGES_INTERVAL_S, NodeGaugesService, RunningSyncRecordsService
from ironfunctions.services import (
    BackendService, FlushOnStopService, IronFunctionsService, PeriodicService, ThreadPoolService,
)
from ironfunctions.http.budget import BodyBudget
from ironfunctions.http.conncap import connection_cap, raise_file_limit
from ironfunctions.http.deadlines import ClientLimits
from ironfunctions.http.site import make_site
from ironfunctions.models import LABEL_WORKER
from ironfunctions.workers.adopted import AdoptedPortService
from ironfunctions.workers.link import Link
from ironfunctions.workers.slots import RemoteSlots
from ironfunctions.workers.board import ConnectionBoard
from ironfunctions.workers.forward import Forwarder
from ironfunctions.workers.routes import share_known_routes, share_route_changes
from ironfunctions.workers.supervisor import BOARD_ENV, LINK_FD, LISTEN_FD, WORKER_ENV
from ironfunctions.tap_parent import parent_service
from ironfunctions import options
from ironfunctions.workers.views import WaitSamples, WorkerViews
from ironfunctions.runner.cancel import make_app_calls_stopper
from ironfunctions.runner.stderr_budget import PER_APP, StderrBudget
from ironfunctions.workers.bus import ParentCancelBus, app_ender
from ironfunctions.workers.guard import RemoteGuard
from ironfunctions.workers.shares import runs_singletons, share, worker_config
from ironfunctions.workers.signals import stop_once_on_signals

log = Logger()

SETTINGS = options.SETTINGS  # re-exported: the daemon's settings, by tests and tools
Options = options.Options  # twistd's plugin looks for it here


def makeService(options: Any) -> IService:  # noqa: N802 (Twisted API)
    """Wire the daemon: backends from URLs, services, the API, the listener (last, so
    it stops first)."""
    from twisted.internet import reactor

    config: Config = options["config"]
    worker_env = os.environ.get(WORKER_ENV)
    if worker_env is None:  # once per start: a single process, or the workers' parent
        _warn_at_start(options, config)
    if worker_env is None and config.worker_processes > 1:
        settings = {name: options[name] for name, _, _ in SETTINGS if options.get(name)}
        return parent_service(config, settings, reactor)
    worker = int(worker_env) if worker_env is not None else None
    if worker is not None:  # NUM_ASYNC, MAX_BUFFERED, MAX_SPOOLED: this worker's share (workers/shares.py)
        config = worker_config(config, worker)
    root = IronFunctionsService(make_observer(config.log_level, worker=worker))
    link: Link | None = None
    if worker is not None:  # the parent's end: slots; its loss ends this worker
        shutting_down: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", shutting_down.append, True)
        stop_once_on_signals(reactor)  # SIGTERM from its parent and from systemd or the terminal
        link = Link(socket.socket(fileno=LINK_FD), reactor, {}, on_lost=lambda: _parent_gone(reactor, shutting_down))

    log_metrics = LogMetrics(reactor, level=config.log_level)  # no lines below the log level
    FlushOnStopService("metrics-flush", log_metrics.flush).setServiceParent(root)  # type: ignore[no-untyped-call]
    # /metrics' text is made on a thread of its own (~0.5 ms per route).
    scrape_pool = ThreadPool(minthreads=0, maxthreads=1, name="metrics-scrape")
    ThreadPoolService("metrics-scrape", scrape_pool, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]
    # A worker's figures join its node's (metrics/shared.py: the parent set the directory).
    shared_dir = os.environ.get(shared_metrics.ENV) if worker is not None else None
    prometheus = PrometheusMetrics(reactor=reactor, pool=scrape_pool, multiprocess_dir=shared_dir)
    waits = WaitWindow(reactor)  # recent run.wait_time, for the load-balancer agent's weight
    sinks: list[IMetrics] = [log_metrics, prometheus, waits]
    wait_samples = WaitSamples()  # a worker's, for its parent's agent (workers/views.py)
    if worker is not None:
        sinks.append(wait_samples)
    if config.statsd_host:
        statsd = StatsdMetrics(reactor, config.statsd_host, config.statsd_port)
        statsd.setServiceParent(root)  # type: ignore[no-untyped-call]
        sinks.append(statsd)
    metrics = FanoutMetrics(sinks)

    stores = stores_from_url(config.db_url, reactor)
    datastore = stores.datastore
    datastore_service = BackendService("datastore", datastore, reactor)
    datastore_service.setServiceParent(root)  # type: ignore[no-untyped-call]
    route_cache = RouteCache(datastore, reactor, stale=config.route_cache_stale, metrics=metrics)
    queue = queue_from_url(config.mq_url, reactor)
    queue_service = BackendService("queue", queue, reactor)
    queue_service.setServiceParent(root)  # type: ignore[no-untyped-call]

    # Containers: the driver's pools start first and stop last; the agent cleans up
    # this node's leftover containers at start and drains in-flight calls at stop.
    driver = DockerDriver(
        reactor, config.max_concurrency, base_url=config.docker_host,
        hot_transport=config.hot_transport,
        socket_dir=os.path.join(config.data_dir, "hot-sockets", *([] if worker is None else [f"w{worker}"])),
        labels=None if worker is None else {LABEL_WORKER: str(worker)},
    )
    driver.setServiceParent(root)  # type: ignore[no-untyped-call]
    # The function network and its firewall rules (none for DOCKER_NETWORK=none/bridge/...);
    # a worker process only hears from its parent whether they are in place (workers/guard.py).
    guard: NetguardService | RemoteGuard | None = None
    if link is None:
        guard = netguard_service(reactor, config.docker_network, config.function_allow_nets, config.docker_host)
        if guard is not None:
            guard.setServiceParent(root)  # type: ignore[no-untyped-call]
    elif is_guarded(config.docker_network):
        guard = RemoteGuard(link, reactor, config.docker_network)
    # SIGTERM: drain (agent "drain", /health 503) for DRAIN_GRACE, then stop (SPEC §9).
    drain = Drain(reactor, config.shutdown_timeout)
    if config.lb_agent_port and worker is None:
        lb_agent = LBAgent(
            driver.probe, lambda: Load(len(agent.calls_running()), slots.limit, waits.percentile()),
            drain, WeightGovernor(reactor), started=lambda: datastore_service.ready and queue_service.ready,
        )
        endpoint = serverFromString(reactor, agent_endpoint(config.listen, config.lb_agent_port))
        # Stops after the agent: it answers "drain" until the node's calls are done.
        LBAgentService(lb_agent, endpoint, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]
    # Cold and hot (format "http") runners share the node's container slots, at most
    # APP_MAX_CONCURRENCY of them per app (SPEC 8 "Apps share fairly").
    slots: Slots | RemoteSlots
    if link is None:
        slots = Slots(config.max_concurrency, reactor, config.admission_max_waiting, config.admission_wait,
                      config.app_concurrency, metrics)
    else:  # the node's slots are the parent's (workers/slots.py)
        slots = RemoteSlots(link, config.max_concurrency)
    policy = FunctionPolicy(config.function_readonly_rootfs, config.function_user)
    cold = ColdRunner(driver, slots, reactor, config.node_id, config.docker_network, config.max_response_size, policy)
    stderr_log = StderrLog(reactor, None if worker is None else StderrBudget(  # a worker: its share of the node's
        reactor.seconds, per_app=share(PER_APP, config.worker_processes, worker)))  # hot and cold calls alike
    # A worker sends a route's calls to the worker running its containers when the
    # route is at its max_concurrency there (workers/forward.py).
    forwarder = Forwarder(link) if link is not None else None
    hot = HotRunner(driver, slots, reactor, config.node_id, config.docker_network, config.max_response_size,
                    max_waiting=config.admission_max_waiting, policy=policy, stderr_log=stderr_log,
                    forward=forwarder.forward if forwarder is not None else None,
                    forward_cancel=forwarder.cancel if forwarder is not None else None)
    route_cache.on_invalidate(hot.retire)  # route update/delete retires its hot containers
    if link is not None:  # ... in every worker of the node
        share_route_changes(link, route_cache)
        share_known_routes(link, route_cache, reactor)  # and, in an outage, what each knows
    slots.on_pressure(hot.reclaim_idle)  # a call waiting for a slot may take a hot container's (its rule: hot.py)
    if forwarder is not None and isinstance(slots, RemoteSlots):
        forwarder.serve(hot.run, hot.cancel)
        slots.on_give_back(hot.give_back_route)  # the parent evens a route's containers out over workers
    agent = Agent(driver, reactor, config.node_id, metrics, {"default": cold, "http": hot}, slots,
                  stderr_log=stderr_log, drain_timeout=drain.remaining,
                  cleanup_labels=None if worker is None else {LABEL_WORKER: str(worker)})
    # Sync call records are batched off the request path; the recorder stops after the
    # agent has drained, so the last calls' records are written too.
    recorder = CallRecorder(stores.calls, reactor, metrics, max_bytes=config.record_buffer)
    recorder.setServiceParent(root)  # type: ignore[no-untyped-call]
    if runs_singletons(worker):  # once per node: a single process or worker 0 (workers/shares.py)
        CallRetentionService(  # CALL_RETENTION: finished calls expire, swept off the request path
            stores.calls, reactor, metrics, config.call_retention, config.retention_interval,
        ).setServiceParent(root)  # type: ignore[no-untyped-call]
    agent.setServiceParent(root)  # type: ignore[no-untyped-call]
    run_call = guarded_calls(agent.run_call, guard)  # no function runs before its network's rules

    # Async calls: durable before the 202, run by NUM_ASYNC workers (stopped before the
    # agent), cancellable wherever they are.
    kill_call = agent.cancel  # stops a call running on this node, cold or hot
    # A cancel reaches the node running the call, whichever node the DELETE reached
    # (Redis pub/sub beside the queue; in memory for a single node).
    cancel_bus = cancel_bus_for(config.mq_url, queue, reactor)
    app_calls_elsewhere = None  # a worker process: its siblings, through the parent (workers/bus.py)
    if link is not None:
        if isinstance(cancel_bus, MemoryCancelBus):
            cancel_bus = ParentCancelBus(link, reactor)
        app_calls_elsewhere = app_ender(link, reactor, make_app_calls_stopper(
            kill_call, lambda: [c for c, _ in agent.calls_running()]))
    cancel_bus.on_cancel(make_cancel_handler(agent.running_call, kill_call, reactor))

    submitter = AsyncSubmitter(queue, stores.calls, reactor, metrics,
                               QueueLimits(config.async_max_queued, config.async_max_queued_bytes))
    def backends_ready() -> Deferred[list[None]]:
        return gatherResults([datastore_service.when_ready(), queue_service.when_ready()])

    # /stats and the balancer agent's figures: a worker's are its node's (workers/views.py).
    stats: StatsSource = agent.stats
    views: WorkerViews | None = None
    if link is not None:
        views = WorkerViews(link, reactor, agent.stats, lambda: len(agent.calls_running()), wait_samples,
                            ready=lambda: datastore_service.ready and queue_service.ready)
        views.report_service().setServiceParent(root)  # type: ignore[no-untyped-call]
        stats = views.node_stats_deferred
    if config.num_async:
        workers = AsyncWorkerService(
            queue, stores.calls, route_cache.lookup, route_cache.app_config, run_call, kill_call,
            reactor, metrics, config.num_async, config.async_max_attempts, config.async_retry_delay,
            max_age=config.async_max_age, when_ready=backends_ready, draining=lambda: drain.draining,
            drain_timeout=config.shutdown_timeout,
        )
        workers.setServiceParent(root)  # type: ignore[no-untyped-call]
    # Re-queues what the queue lost, from the datastore; one node at a time where the
    # datastore is shared (Postgres: its lease row; SQLite and memory are per node).
    reconciler = Reconciler(stores.calls, queue, route_cache.lookup, reactor, metrics, config.node_id,
                            try_lead=getattr(stores.calls, "try_lead", None), interval=config.reconcile_interval)
    reconciler.add_after_pass(rebuild_counts_after_loss(queue))  # ASYNC_MAX_QUEUED counts after a loss
    if runs_singletons(worker):
        PeriodicService("reconciler", config.reconcile_interval, reconciler.tick, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]

    invoker = Invoker(
        route_cache.lookup, route_cache.app_config, run_call, CallIds(reactor.seconds),
        submit=submitter.submit, record=recorder.record, clock=reactor, ready=lambda: datastore_service.ready,
        trusted_proxies=TrustedProxies(config.trusted_proxies),
    )
    tasks = TasksAPI(queue, stores.calls, route_cache.lookup, route_cache.app_config, reactor,
                     policy=AttemptPolicy(config.async_max_attempts, config.async_retry_delay, config.async_max_age))

    api = build_api(
        datastore,
        route_cache,
        calls=stores.calls,
        clock=reactor,
        host_memory_mb=config.host_memory_mb,
        jwt_auth_key=config.jwt_auth_key,
        ready=lambda: datastore_service.ready,
        health_checks=HealthChecks(
            node={"docker": driver.probe, **({"network": guard.ping} if guard is not None else {})},
            shared={"datastore": datastore.ping, "queue": queue.ping},
            started=lambda: datastore_service.ready and queue_service.ready,
            draining=lambda: drain.reason,
        ),
        render_metrics=prometheus.scrape,
        stats=stats,
        invoke=InvokeResource(invoker),
        cancel=make_canceller(stores.calls, queue, kill_call, reactor, agent.running_call, cancel_bus),
        tasks=tasks.resource_for,
        end_app_calls=make_app_calls_ender(  # a deleted app's calls: queued cancelled, finished deleted
            stores.calls, reactor, queue, kill_call, lambda: [c for c, _ in agent.calls_running()],
            elsewhere=app_calls_elsewhere),
    )
    # Clients are bounded (SPEC §8): deadlines, a shared body budget, a connection cap
    # below the file limit (raised to the hard limit first).
    before, file_limit = raise_file_limit()
    connection_limit = connection_cap(file_limit, config.max_concurrency)
    if worker is not None:  # the node's cap, shared out (http/conncap.py)
        connection_limit = max(1, share(connection_limit, config.worker_processes, worker))
    log.info("Open files limit {file_limit} (was {before}): at most {connection_cap} client connections",
             file_limit=file_limit, before=before, connection_cap=connection_limit)
    site = make_site(api, config.max_request_size, log_access=config.log_level == "debug",
                     invoker=invoker, clock=reactor, max_connections=connection_limit, metrics=metrics,
                     limits=ClientLimits(config.header_timeout, config.idle_timeout, config.body_min_rate),
                     budget=BodyBudget(config.max_buffered, config.max_spooled))
    # A sync call's record is written when it ends; one still running after a second
    # gets a "running" record too, so it can be listed and cancelled meanwhile.
    RunningSyncRecordsService(agent.calls_running, recorder.record, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]
    NodeGaugesService(
        metrics, reactor, slots, queue.depth, hot.containers, connections=lambda: site.open_connections,
    ).setServiceParent(root)  # type: ignore[no-untyped-call]
    # datastore.up / queue.up gauges: /health stays 200 in a shared outage; alert on these.
    backends = HealthChecks(shared={"datastore": datastore.ping, "queue": queue.ping})
    if runs_singletons(worker):
        PeriodicService("backend-gauges", GAUGES_INTERVAL_S, lambda: report_backends(backends, reactor, metrics),
                        reactor, now=True).setServiceParent(root)  # type: ignore[no-untyped-call]
    listener: Any
    if worker is None:
        listener = StreamServerEndpointService(serverFromString(reactor, config.listen), site)
    else:
        board = ConnectionBoard(os.environ[BOARD_ENV], config.worker_processes, worker)
        # Until its datastore and queue answer, a ready sibling takes new clients first
        # (its load report says it is ready before it competes: the parent's agent
        # counts the node started).
        worker_views = views

        async def ready_to_serve() -> None:
            await backends_ready()
            if worker_views is not None:
                await worker_views.report()

        listener = AdoptedPortService(LISTEN_FD, site, reactor, board, lambda: site.open_connections,
                                      ready=lambda: Deferred.fromCoroutine(ready_to_serve()))
    listener.setName("http")
    listener.setServiceParent(root)
    DrainService(drain, config.drain_grace, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]  # last: stops first
    return root


def _parent_gone(reactor: Any, shutting_down: list[bool]) -> None:
    # The link also goes when this worker's own reactor shuts down (it disconnects
    # every reader at the end): nothing to stop then.
    if not shutting_down:
        log.error("The node's parent process is gone: stopping")
        reactor.stop()


def _warn_at_start(options: Any, config: Config) -> None:
    if options.get("bridge_missing"):
        log.warn("HOT_TRANSPORT: {problem}; hot functions use the engine's attach stream instead "
                 "(slower; set HOT_TRANSPORT=attach to silence this)", problem=options["bridge_missing"])
    if config.open_api_on_network:
        # twistd replays events logged before its observer starts: this reaches the log.
        log.warn(
            "API_AUTH=none: the management API on {listen} answers anyone who can reach it, "
            "without a token", listen=config.listen, api_auth=config.api_auth,
        )
