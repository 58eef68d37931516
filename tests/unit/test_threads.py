"""``stop_pools``: the one way our thread pools stop (off the reactor thread)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, cast

from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.threads import stop_pools


class QueuedReactor:
    """``callFromThread`` hands the call to the test thread through a queue."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., object], tuple[object, ...]]] = queue.Queue()

    def callFromThread(self, fn: Callable[..., object], *args: object) -> None:  # noqa: N802 (Twisted's name)
        self.calls.put((fn, args))

    def run_one(self) -> None:
        fn, args = self.calls.get(timeout=10)
        fn(*args)


class FakePool:
    def __init__(self, name: str, log: list[tuple[str, str | None]], fail: bool = False) -> None:
        self.name, self._log, self._fail = name, log, fail

    def stop(self) -> None:
        self._log.append((self.name, threading.current_thread().name))
        if self._fail:
            raise RuntimeError("stuck")


class StopPoolsTests(SynchronousTestCase):
    def test_pools_stop_in_order_on_another_thread_then_the_cleanup_runs(self) -> None:
        log: list[tuple[str, str | None]]
        reactor, log = QueuedReactor(), []
        d = stop_pools(cast(IReactorFromThreads, reactor), cast(ThreadPool, FakePool("a", log)), cast(ThreadPool, FakePool("b", log)),
                       then=lambda: log.append(("then", None)))
        reactor.run_one()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual([name for name, _ in log], ["a", "b", "then"])
        self.assertEqual(log[0][1], "a-stop")
        self.assertNotEqual(log[0][1], threading.current_thread().name)

    def test_a_failing_stop_fails_the_deferred_instead_of_never_firing(self) -> None:
        log: list[tuple[str, str | None]]
        reactor, log = QueuedReactor(), []
        d = stop_pools(cast(IReactorFromThreads, reactor), cast(ThreadPool, FakePool("x", log, fail=True)),
                       cast(ThreadPool, FakePool("y", log)), name="custom-stop")
        reactor.run_one()
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(log, [("x", "custom-stop")])
