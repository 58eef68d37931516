"""The function network's guard for a node of worker processes (``WORKERS`` > 1, SPEC §8).

The guarded network and its firewall rules (``drivers/netguard_service.py``) belong to
the host, not to a process: the parent puts them in place and re-checks them every
30 s, once for the node. A worker never sets them up (N workers would run the same
iptables commands N times over, and a worker restarting must not touch rules its
siblings rely on): it only needs to know whether they are in place, for its
``/health`` ``network`` check and for ``guarded_calls``, which holds calls back until
they are. The parent's ``GuardRelay`` tells each worker at once when it attaches and
again whenever that changes (a firewall reload that could not be repaired); the
worker's ``RemoteGuard`` keeps the answer.

The message (``workers/link.py``): the notice ``guard_ready(ready)``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from ironfunctions.drivers.netguard_service import NetguardService, wait_for_rules
from ironfunctions.services import Readiness
from ironfunctions.workers.channel import Channel, Relay

GUARD_READY = "guard_ready"


class GuardRelay(Relay):
    """The parent's side: tells its workers whether ``guard``'s rules are in place."""

    def __init__(self, guard: NetguardService) -> None:
        super().__init__()
        self._guard = guard
        guard.watch(self._changed)

    def serve(self, worker: int, link: Channel) -> None:
        link.notify(GUARD_READY, self._guard.ready)

    def _changed(self, ready: bool) -> None:
        for _, link in self.others():
            link.notify(GUARD_READY, ready)


class RemoteGuard:
    """A worker's view of the guard its parent keeps (``GuardState``): not ready until
    the parent says so.

    :param network: the guarded network's name (for messages).
    """

    def __init__(self, link: Channel, clock: IReactorTime, network: str) -> None:
        self._clock = clock
        self._network = network
        self._rules = Readiness()
        link.handle(GUARD_READY, lambda ready: self._rules.set(bool(ready)))

    @property
    def ready(self) -> bool:
        """Whether the parent says the rules are in place."""
        return self._rules.ready

    async def wait_ready(self, timeout: float) -> None:
        """Return once the rules are in place; raise ``NotReady`` after ``timeout``."""
        await wait_for_rules(self._rules, self._clock, timeout, self._network)

    async def ping(self) -> None:
        """For ``/health``: fails while the parent says the rules are not in place."""
        if not self.ready:
            raise RuntimeError(f"network {self._network} not guarded yet")
