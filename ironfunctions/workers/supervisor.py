"""The parent of a node's worker processes (``WORKERS`` > 1).

The parent opens the listening socket (``LISTEN``) and never accepts on it: each
worker adopts it (``reactor.adoptStreamPort``), so the kernel hands each new
connection to whichever worker is waiting in ``accept`` (one queue, balanced by the
workers' connection counts: ``workers/board.py``, ``adopted.py``). A worker is ``twistd ironfunctions`` again, with the parent's settings,
the socket as fd 3 and its end of a unix socket pair to the parent as fd 4
(``IRONFUNCTIONS_WORKER``); it logs to the parent's stdout and stderr.

A worker that dies is started again after a second, and not before the parent has
removed its containers (``cleanup``, ``workers/cleanup.py``); the first workers start
once the node's leftover containers are gone (``ready``).

At stop the parent begins its own drain (the balancer agent says ``drain``), sends
SIGTERM to every worker at once and closes its own copy of the listening socket: each
worker runs the drain sequence of SPEC §9 itself (``DRAIN_GRACE``, then its listener
closes, so the port closes with the last one, and its calls end within
``SHUTDOWN_TIMEOUT``); once all have exited, the parent removes the node's containers.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ironfunctions.workers.link import Link

log = Logger()

WORKER_ENV = "IRONFUNCTIONS_WORKER"  # "<index>" in a worker process
BOARD_ENV = "IRONFUNCTIONS_BOARD"  # the connection board's path (workers/board.py)
LISTEN_FD = 3
LINK_FD = 4
RESTART_DELAY_S = 1.0
KILL_SLACK_S = 30.0  # beyond a worker's own drain (grace + shutdown timeout)
_TWISTD = "from twisted.scripts.twistd import run; run()"


class _NoAccept(Protocol):
    pass


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int, link: Link) -> None:
        self.supervisor = supervisor
        self.index = index
        self.link = link
        self.ended: Deferred[None] = Deferred()
        self.pid = 0

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.pid = self.transport.pid if self.transport is not None else 0

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        self.link.close()
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """Starts ``count`` workers on ``listen`` and keeps them running.

    :param attach: called with a worker's index and its link as it starts.
    :param detach: called with a worker's index once its link is gone (it died).
    :param options: the settings as ``twistd ironfunctions`` options (name -> value),
        passed to every worker on its command line.
    :param env: extra environment of the workers (the resolved ``NODE_ID``...).
    :param drain_begin: called at once when the stop begins (the agent says ``drain``).
    :param drain_time: the most a worker's own drain takes (``DRAIN_GRACE`` +
        ``SHUTDOWN_TIMEOUT``); a worker still there ``KILL_SLACK_S`` later is killed.
    :param on_worker_gone: called with a dead worker's pid (metric files...).
    :param ready: fires when the first workers may start (the node's leftover
        containers are gone); it must not fail.
    :param cleanup: called with a dead worker's index; its replacement starts once
        the Deferred it returns has fired (and ``RESTART_DELAY_S`` has passed); it must
        not fail.
    """

    name = "workers"

    def __init__(self, reactor: Any, count: int, listen: str,
                 attach: Callable[[int, Link], None], detach: Callable[[int], None],
                 options: Mapping[str, str], env: Mapping[str, str],
                 drain_begin: Callable[[], None], drain_time: float,
                 on_worker_gone: Callable[[int], None] = lambda pid: None,
                 ready: Callable[[], Deferred[None]] = lambda: succeed(None),
                 cleanup: Callable[[int], Deferred[None]] = lambda index: succeed(None)) -> None:
        self._reactor = reactor
        self._count = count
        self._listen = listen
        self._attach = attach
        self._detach = detach
        self._options = dict(options)
        self._env = dict(env)
        self._drain_begin = drain_begin
        self._drain_time = drain_time
        self._on_worker_gone = on_worker_gone
        self._ready = ready
        self._cleanup = cleanup
        self._workers: dict[int, _Worker] = {}
        self._port: Any = None
        self._stopping = False

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        d = serverFromString(self._reactor, self._listen).listen(Factory.forProtocol(_NoAccept))
        d.addCallbacks(self._listening, self._cannot_listen)

    def _cannot_listen(self, failure: Failure) -> None:
        log.critical("Cannot listen on {listen}: {error}", listen=self._listen, error=str(failure.value))
        self._reactor.stop()

    def _listening(self, port: Any) -> None:
        port.stopReading()  # the workers accept; the parent only holds the socket open
        self._port = port
        log.info("Listening on {listen} with {workers} worker processes", listen=self._listen,
                 workers=self._count)

        def spawn_all(_: object) -> None:
            for index in range(self._count):
                self._spawn(index)

        self._ready().addCallback(spawn_all).addErrback(lambda f: log.failure("Starting the workers failed", f))

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link = Link(parent_end, self._reactor, {}, on_lost=lambda: self._detach(index))
        self._attach(index, link)
        worker = _Worker(self, index, link)
        args = [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "ironfunctions"]
        args += [f"--{name}={value}" for name, value in sorted(self._options.items())]
        env = {**os.environ, **self._env, WORKER_ENV: str(index)}
        try:
            self._reactor.spawnProcess(
                worker, sys.executable, args, env=env, path=os.getcwd(),
                childFDs={0: 0, 1: 1, 2: 2, LISTEN_FD: self._port.fileno(), LINK_FD: child_end.fileno()},
            )
        finally:
            child_end.close()
        self._workers[index] = worker

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        self._on_worker_gone(worker.pid)
        if self._stopping:
            return
        log.error("Worker {index} (pid {pid}) exited: {reason}; starting another in {delay}s",
                  index=worker.index, pid=worker.pid, reason=str(reason.value), delay=RESTART_DELAY_S)
        index = worker.index
        restart = gatherResults([self._cleanup(index), deferLater(self._reactor, RESTART_DELAY_S, lambda: None)])
        restart.addCallback(lambda _: self._spawn(index))
        restart.addErrback(lambda f: log.failure("Restarting worker {index} failed", f, index=index))

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers.values()]

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        self._drain_begin()
        workers = list(self._workers.values())
        for worker in workers:
            self._signal(worker, signal.SIGTERM)
        # No worker starts any more: the parent's copy of the listening socket goes now,
        # so the port closes when the last worker closes its own after DRAIN_GRACE (new
        # clients are then refused, not left waiting in the backlog, SPEC §9).
        if self._port is not None:
            self._port.socket.close()
        kill = self._reactor.callLater(self._drain_time + KILL_SLACK_S, self._kill_all)

        async def wait() -> None:
            await DeferredList([w.ended for w in workers])
            if kill.active():
                kill.cancel()

        return Deferred.fromCoroutine(wait())

    def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            log.error("Worker {index} (pid {pid}) did not stop in time: killing it", index=worker.index,
                      pid=worker.pid)
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: _Worker, number: int) -> None:
        try:
            if worker.transport is not None:
                worker.transport.signalProcess(number)
        except Exception:  # already gone
            pass
