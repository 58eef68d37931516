"""``SingleFlightProbe``: one health probe of an engine at a time, its answer shared.

``/health`` (every few seconds from each load balancer) and the load-balancer agent
both ask "is this node's Docker engine up?". Each asking must not start an engine
call: against a hung engine, every call holds a thread until its socket times out,
and a few balancers would fill the driver's control pool with probes. So at most one
probe is in flight; whoever asks meanwhile waits for that one's answer.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

PROBE_TIMEOUT_S = 2  # seconds; an int, as docker-py types its client timeouts


class SingleFlightProbe:
    """Runs ``check`` (up when it returns, down when it raises) for whoever calls
    ``probe``, at most one at a time.

    :param check: the engine call; it must bound itself (a socket timeout), because a
        thread cannot be cancelled: the probe stays in flight until it returns.
    :param clock: for ``timeout``.
    :param timeout: each caller's answer is ``False`` (down) if the check has not
        returned within this many seconds of its asking; the check itself stays in
        flight (so a hung engine gets no second one) until it returns.
    """

    log = Logger()

    def __init__(self, check: Callable[[], Any], clock: IReactorTime, timeout: float = PROBE_TIMEOUT_S) -> None:
        self._check = check
        self._clock = clock
        self._timeout = timeout
        self._in_flight = False
        self._waiters: dict[Deferred[bool], IDelayedCall] = {}
        self.checks = 0  # how many checks ran (for tests and operators)

    @property
    def in_flight(self) -> bool:
        """Whether a check is running now."""
        return self._in_flight

    def probe(self) -> Deferred[bool]:
        """Fires with ``True`` if the engine answered, ``False`` if it failed or did
        not answer within the timeout; never fails. Cancelling it drops only this
        caller's interest, not the check."""
        waiter: Deferred[bool] = Deferred(canceller=self._forget)
        self._waiters[waiter] = self._clock.callLater(self._timeout, self._give_up, waiter)
        if not self._in_flight:
            self._in_flight = True
            self.checks += 1
            maybeDeferred(self._check).addCallbacks(self._finished_up, self._finished_down)
        return waiter

    def _forget(self, waiter: Deferred[bool]) -> None:
        timer = self._waiters.pop(waiter, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _give_up(self, waiter: Deferred[bool]) -> None:
        if self._waiters.pop(waiter, None) is not None:
            waiter.callback(False)

    def _finished_up(self, _: object) -> None:
        self._finished(True)

    def _finished_down(self, failure: Failure) -> None:
        self.log.debug("Engine probe failed: {error}", error=str(failure.value))
        self._finished(False)

    def _finished(self, up: bool) -> None:
        self._in_flight = False
        waiters, self._waiters = self._waiters, {}
        for waiter, timer in waiters.items():
            if timer.active():
                timer.cancel()
            waiter.callback(up)
