"""Stopping thread pools without blocking the reactor.

``ThreadPool.stop()`` joins the pool's threads, so it waits for the work in flight: a
SQLite connect may wait out its busy timeout, a Docker removal its API timeout. That
wait must happen neither on the reactor thread nor on the reactor's shared pool (which
also resolves host names), so every pool of ours is stopped from a thread of its own,
here, and nowhere else.
"""

from __future__ import annotations

import threading
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


def stop_pools(
    reactor: IReactorFromThreads,
    *pools: ThreadPool,
    then: Callable[[], object] | None = None,
    name: str | None = None,
) -> Deferred[None]:
    """Stop ``pools`` in order from a new thread, then run ``then()`` on that thread
    (blocking cleanup that must follow the last work, e.g. removing files).

    The Deferred fires on the reactor thread once every pool is stopped and ``then``
    has returned; it fails with what ``stop()`` or ``then`` raised. ``name`` names the
    stopping thread (default: the first pool's name + ``-stop``).
    """
    done: Deferred[None] = Deferred()

    def stop() -> None:
        try:
            for pool in pools:
                pool.stop()
            if then is not None:
                then()
        except BaseException:
            reactor.callFromThread(done.errback, Failure())
        else:
            reactor.callFromThread(done.callback, None)

    thread_name = name or f"{pools[0].name if pools else 'pool'}-stop"
    threading.Thread(target=stop, name=thread_name, daemon=True).start()
    return done
