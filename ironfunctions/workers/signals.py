"""A worker process's SIGTERM and SIGINT: stop once, however many arrive.

The parent forwards SIGTERM to each worker (``workers/supervisor.py``), and a worker
often gets the same signal straight from the outside as well: systemd's default
``KillMode=control-group`` signals every process of the unit, and Ctrl-C in a terminal
signals the whole process group. Twisted's own handlers call ``reactor.stop()`` for
each signal, and the second raises ``ReactorNotRunning`` (logged as a critical error)
while the worker drains from the first. So a worker replaces them, once its reactor
runs, with handlers for which a repeat is a no-op.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()


def stop_once_on_signals(reactor: Any) -> None:
    """After the reactor has started (and installed its own handlers), make SIGTERM
    and SIGINT stop it, and a repeat do nothing."""

    def stop(name: str) -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:  # stopping already (the other copy of the signal)
            return
        log.info("Received {signal}, shutting down.", signal=name)

    def received(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(stop, signal.Signals(number).name)

    def install() -> None:
        signal.signal(signal.SIGTERM, received)
        signal.signal(signal.SIGINT, received)

    reactor.addSystemEventTrigger("after", "startup", install)
