"""A node of worker processes seen as one node (``WORKERS`` > 1, issue 15; SPEC §6, §9).

Whichever worker a client or a balancer reaches, what it reads about "the node" must be
the whole node's:

- ``/stats``: the worker that answers asks its parent (``node_stats``); the parent
  asks every worker for its own figures (``stats``: its ``Agent.stats``) and sums them.
  A worker that has not answered within ``STATS_TIMEOUT_S`` is left out (and logged),
  so one stuck worker does not stall every ``/stats``.
- The balancer agent (``balancer/agent.py``) runs in the parent. Every
  ``REPORT_INTERVAL_S`` each worker sends a ``load`` notice: its calls in flight, the
  ``run.wait_time`` figures of the calls that started since its last notice
  (``WaitSamples``, at most ``MAX_SAMPLES``), and whether its datastore and queue are
  ready. The parent sums the calls in flight (a dead worker's go with it), keeps the
  node's ``WaitWindow`` of the figures, and counts the node started once a worker has
  said it is ready (ready workers take new clients first; a worker started again later
  does not take the node out).

Cheap on purpose: nothing per call crosses a link; two notices a second per worker.
``/metrics`` needs no message at all (``metrics/shared.py``).

The messages (``workers/link.py``): ``node_stats()`` worker -> parent and ``stats()``
parent -> worker, both answered ``{"Queue": n, "Running": n, "Complete": n}``;
``load(in_flight, [wait ms, ...], ready)`` worker -> parent, a notice.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ironfunctions.balancer.waits import WaitSink, WaitWindow
from ironfunctions.balancer.weight import Load
from ironfunctions.errors import NotReady
from ironfunctions.services import PeriodicService
from ironfunctions.workers.channel import Channel, Relay

log = Logger()

STATS_KEYS = ("Queue", "Running", "Complete")
STATS_TIMEOUT_S = 2.0  # the parent's wait for each worker's figures
NODE_STATS_TIMEOUT_S = STATS_TIMEOUT_S + 1.0  # a worker's wait for the parent's sum
REPORT_INTERVAL_S = 0.5
MAX_SAMPLES = 4096  # per notice: as many as the parent's window keeps


class NodeViews(Relay):
    """The parent's side: the node's ``/stats``, load and readiness from its workers.

    :param workers: how many workers the node runs (``WORKERS``).
    :param clock: for the timeouts.
    :param waits: the node's recent ``run.wait_time`` (the balancer agent's).
    """

    def __init__(self, workers: int, clock: IReactorTime, waits: WaitWindow,
                 timeout: float = STATS_TIMEOUT_S) -> None:
        super().__init__()
        self._workers = workers
        self._clock = clock
        self._waits = waits
        self._timeout = timeout
        self._in_flight: dict[int, int] = {}
        self._ready: set[int] = set()

    def serve(self, worker: int, link: Channel) -> None:
        """Serve ``worker``'s questions and take its reports, on ``link``."""
        link.handle("node_stats", lambda: Deferred.fromCoroutine(self.node_stats()))
        link.handle("load", lambda in_flight, waits, ready: self.report(worker, in_flight, waits, ready))

    def detach(self, worker: int) -> None:
        """``worker`` is gone: its calls are no longer in flight."""
        super().detach(worker)
        self._in_flight.pop(worker, None)

    def report(self, worker: int, in_flight: int, waits: Sequence[int], ready: bool) -> None:
        """``worker``'s ``load`` notice."""
        if worker not in self._links:
            return  # a late notice of a worker already gone
        self._in_flight[worker] = int(in_flight)
        self._waits.extend(waits)
        if ready:
            self._ready.add(worker)

    def in_flight(self) -> int:
        """Calls in flight on the node, as its workers last reported them."""
        return sum(self._in_flight.values())

    def load(self, limit: int) -> Load:
        """The balancer agent's figures: calls in flight against ``limit``
        (``MAX_CONCURRENCY``), the p90 of the node's recent ``wait_time``."""
        return Load(self.in_flight(), limit, self._waits.percentile())

    def started(self) -> bool:
        """Whether a worker has said its backends are ready (once is enough): ready
        workers take new clients before starting ones (``workers/adopted.py``), so the
        node serves."""
        return bool(self._ready)

    async def node_stats(self) -> dict[str, int]:
        """The sum of every worker's ``/stats`` figures."""
        asking: list[tuple[int, Deferred[Any]]] = []
        for worker, link in self.others():
            try:
                asking.append((worker, link.request("stats").addTimeout(self._timeout, self._clock)))
            except Exception as e:  # its link just went
                log.warn("Worker {worker} was not asked for its stats: {error}", worker=worker, error=str(e))
        totals = dict.fromkeys(STATS_KEYS, 0)
        for worker, figures in asking:
            try:
                answer = await figures
            except Exception as e:
                log.warn("Worker {worker} left out of /stats: {error}", worker=worker, error=str(e) or type(e).__name__)
                continue
            for key in STATS_KEYS:
                totals[key] += int(answer.get(key, 0))
        return totals


class WaitSamples(WaitSink):
    """A worker's metrics sink: the ``run.wait_time`` figures since the last ``take``
    (the newest ``max_samples`` of them). Per call it only appends to a deque."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._samples: deque[int] = deque(maxlen=max_samples)

    def add(self, ms: int) -> None:
        self._samples.append(ms)

    def take(self) -> list[int]:
        """The figures gathered since the last ``take``."""
        taken = list(self._samples)
        self._samples.clear()
        return taken


class WorkerViews:
    """A worker's side: answers the parent's ``stats``, asks it for the node's, and
    reports its load (``report_service``).

    :param link: the link to the parent.
    :param own_stats: this worker's figures (``Agent.stats``).
    :param in_flight: this worker's calls in flight, running or waiting for a container.
    :param waits: this worker's ``run.wait_time`` figures (a metrics sink of its own).
    :param ready: whether this worker's datastore and queue are ready.
    """

    def __init__(self, link: Channel, clock: IReactorTime, own_stats: Callable[[], Mapping[str, int]],
                 in_flight: Callable[[], int], waits: WaitSamples, ready: Callable[[], bool],
                 timeout: float = NODE_STATS_TIMEOUT_S) -> None:
        self._link = link
        self._clock = clock
        self._in_flight = in_flight
        self._waits = waits
        self._ready = ready
        self._timeout = timeout
        link.handle("stats", lambda: dict(own_stats()))

    async def node_stats(self) -> Mapping[str, int]:
        """The whole node's ``/stats`` figures. Raise ``NotReady`` (503) when the
        parent does not answer in time (it is gone: this worker is stopping too)."""
        try:
            figures: Mapping[str, int] = await self._link.request("node_stats").addTimeout(self._timeout, self._clock)
        except Exception as e:
            log.warn("The node's stats did not come from its parent: {error}", error=str(e) or type(e).__name__)
            raise NotReady("the node's figures are not available") from None
        return figures

    def node_stats_deferred(self) -> Deferred[Mapping[str, int]]:
        return Deferred.fromCoroutine(self.node_stats())

    async def report(self) -> None:
        """Send one ``load`` notice."""
        self._link.notify("load", self._in_flight(), self._waits.take(), self._ready())

    def report_service(self, interval: float = REPORT_INTERVAL_S) -> PeriodicService:
        """The service that reports every ``interval`` seconds, from the start."""
        return PeriodicService("load-report", interval, self.report, self._clock, now=True)
