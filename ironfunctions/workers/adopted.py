"""A worker's listener: the listening socket its parent handed it (fd 3).

Every worker accepts on the one socket. A worker accepts one connection per wake-up,
and only when no other worker holds fewer connections (``workers/board.py``); else it
stops watching the socket for ``DEFER_S`` so that a less loaded worker takes the
connection, and then accepts what is still waiting whatever the counts (a busy sibling
must not leave a client waiting long).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ironfunctions.workers.board import STARTING, ConnectionBoard

log = Logger()

DEFER_S = 0.002
STARTING_DEFER_S = 0.1
PUBLISH_S = 0.05  # connections also close: the count is published this often too


class AdoptedPortService(Service):
    """Accepts on listening socket ``fd``, balancing connections with the node's other
    workers through ``board`` (None: accept as Twisted does)."""

    def __init__(self, fd: int, factory: Any, reactor: Any, board: ConnectionBoard | None = None,
                 open_connections: Callable[[], int] = lambda: 0,
                 ready: Callable[[], Deferred[Any]] | None = None) -> None:
        self._fd = fd
        self._factory = factory
        self._reactor = reactor
        self._board = board
        self._open = open_connections
        self._port: Any = None
        self._force = False  # accept what waits whatever the counts (after leaving it to others)
        self._publisher: Any = None
        self._ready = ready
        self._starting = False

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        if self._ready is not None:
            # Until its backends answer, it is STARTING on the board: a ready sibling
            # takes new clients first; with none ready, this one answers them (503 at
            # once, as a single process would, rather than no answer).
            self._starting = True
            self._ready().addCallback(self._now_ready).addErrback(
                lambda f: log.failure("A worker could not say it is ready", f))
        self._listen()

    def _now_ready(self, _: object) -> None:
        self._starting = False
        if self._board is not None and self.running:
            self._board.publish(self._open())

    def _count(self) -> int:
        return STARTING if self._starting else self._open()

    def _listen(self) -> None:
        probe = socket.socket(fileno=os.dup(self._fd))  # its own fd: closing it keeps ours
        family = probe.family
        probe.close()
        self._port = self._reactor.adoptStreamPort(self._fd, family, self._factory)
        # The port holds its own copy (Twisted dups it): close ours, so that stopping the
        # port at the drain's end closes this worker's last hold on the socket. The
        # node's port closes, and new clients are refused rather than left in the
        # backlog, once every worker has stopped listening (SPEC §9).
        os.close(self._fd)
        if self._board is not None:
            accept = self._port.doRead

            def do_read() -> Any:
                board = self._board
                assert board is not None
                board.publish(self._count())
                if not self._force and not board.least_loaded():
                    self._port.stopReading()
                    # A starting worker leaves clients to ready ones for longer: it
                    # could only tell them it is not ready.
                    self._reactor.callLater(STARTING_DEFER_S if self._starting else DEFER_S, self._resume)
                    return None
                self._force = False
                self._port.numberAccepts = 1
                return accept()

            self._port.doRead = do_read
            self._publish()

    def _resume(self) -> None:
        if not self.running:
            return
        self._force = True  # a connection still waiting now is this worker's
        self._port.startReading()
        self._reactor.callLater(DEFER_S, self._unforce)

    def _unforce(self) -> None:
        self._force = False  # nothing was waiting any more: the next one is balanced again

    def _publish(self) -> None:
        assert self._board is not None
        self._board.publish(self._count())
        self._publisher = self._reactor.callLater(PUBLISH_S, self._publish)

    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        super().stopService()  # type: ignore[no-untyped-call]
        if self._publisher is not None and self._publisher.active():
            self._publisher.cancel()
        if self._port is not None:
            return self._port.stopListening()
        return None
