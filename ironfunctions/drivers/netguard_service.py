"""``NetguardService``: keeps the guarded function network's rules in place from the
daemon (SPEC §8), with ``drivers/netguard.py``'s ``NetworkGuard`` doing the blocking work.

It runs the guard on its own one-thread pool (never the reactor thread nor the reactor's
default pool) at start and then every 30 seconds on an injected clock, logging each
repair (a firewall reload that dropped the rules). A guard that cannot be put in place
at start (no permission, a remote ``DOCKER_HOST``) stops the daemon with one line saying
what to do; until the rules are in place, ``/health`` fails and calls wait
(``guarded_calls``). With worker processes (``WORKERS`` > 1) the parent runs it, once
for the node; the workers only hear whether the rules are in place
(``workers/guard.py``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Coroutine, Protocol, Sequence, TypeVar

import docker
import docker.utils
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ironfunctions.drivers.netguard import (
    COMMAND_TIMEOUT, EngineUnavailable, Guard, GuardError, NetworkGuard,
)
from ironfunctions.drivers.netplan import is_guarded, remote_docker_host
from ironfunctions.errors import NotReady
from ironfunctions.ratelimit import OutageLog
from ironfunctions.services import Readiness
from ironfunctions.threads import stop_pools

CHECK_INTERVAL = 30.0


def start_problem(network: str, docker_host: str) -> str | None:
    """Why the guard cannot work at all with these settings (pure), or None."""
    if remote_docker_host(docker_host):
        return (
            f"DOCKER_NETWORK={network} is guarded by this host's firewall, but DOCKER_HOST={docker_host} "
            "may run containers elsewhere; choose DOCKER_NETWORK explicitly (none, or a network "
            "guarded on the engine's host)"
        )
    return None


def fatal_message(network: str, error: GuardError) -> str:
    return (
        f"DOCKER_NETWORK={network}: cannot put in place the firewall rules that keep functions "
        f"off this host ({error}); grant the daemon root/CAP_NET_ADMIN, or choose DOCKER_NETWORK "
        "explicitly (none, or a network you guard yourself)"
    )


class NetguardService(Service):
    """Keeps one guarded network and its rules in place: at start (retrying while the
    engine does not answer), then every ``interval`` seconds.

    :param guard: the blocking ``NetworkGuard``.
    :param reactor: for threads and, by default, time.
    :param on_fatal: called with one line when the guard cannot be put in place at
        start; the daemon's wiring stops the daemon (``stop_daemon``).
    :param clock: time for the re-check loop (tests pass a ``Clock``).
    :param docker_host: ``DOCKER_HOST``; a remote engine is fatal at start.
    :param in_pool: runs a blocking call and fires with its result; by default on the
        service's own one-thread pool (tests run it inline).
    """

    log = Logger()
    name = "netguard"

    def __init__(self, guard: Guard, reactor: Any, on_fatal: Callable[[str], None],
                 clock: IReactorTime | None = None, docker_host: str = "",
                 interval: float = CHECK_INTERVAL, retry_delay: float = 1.0,
                 in_pool: Callable[[Callable[[], list[str]]], Deferred[list[str]]] | None = None) -> None:
        self._guard = guard
        self._reactor = reactor
        self._on_fatal = on_fatal
        self._clock: IReactorTime = clock or reactor
        self._docker_host = docker_host
        self._interval = interval
        self._retry_delay = retry_delay
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="netguard")
        self._in_pool = in_pool or (lambda fn: deferToThreadPool(reactor, self._pool, fn))
        self._loop: LoopingCall | None = None
        self._rules = Readiness()
        self._watchers: list[Callable[[bool], None]] = []
        self._engine_down = OutageLog(  # retried each second or 30 s: not a line each time
            self.log, self._clock,
            started="Guarding {network}: Docker engine not available ({error}); retrying",
            ongoing="Guarding {network}: Docker engine still not available ({error}), {failures} tries in {seconds}s",
            ended="Guarding {network}: Docker engine available again after {seconds}s")

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        problem = start_problem(self._guard.network, self._docker_host)
        if problem:
            self._fatal(problem)
            return
        self._pool.start()
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._loop.clock = self._clock
        self._loop.start(self._retry_delay, now=True).addErrback(
            lambda f: self.log.failure("netguard loop died", f)
        )

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # Joining the pool waits for a command in flight (bounded by its timeout): off
        # the reactor thread, as every pool is stopped.
        return stop_pools(self._reactor, self._pool, name="netguard-stop")

    async def check(self) -> list[str]:
        """Put the network and rules in place now (on the guard's pool); return what
        was repaired. Logs each repair."""
        repaired = await self._in_pool(self._guard.ensure)
        if repaired and self.ready:
            self.log.warn("Firewall rules of {network} were missing or changed; repaired: {repaired}",
                          network=self._guard.network, repaired="; ".join(repaired))
        return repaired

    async def wait_ready(self, timeout: float) -> None:
        """Return once the rules are in place; raise ``NotReady`` after ``timeout``
        seconds (functions must not run on the network before its rules are there)."""
        await wait_for_rules(self._rules, self._clock, timeout, self._guard.network)

    @property
    def ready(self) -> bool:
        """Whether the rules are in place."""
        return self._rules.ready

    async def ping(self) -> None:
        """For ``/health``: fails until the rules have been put in place once."""
        if not self.ready:
            raise RuntimeError(f"network {self._guard.network} not guarded yet")

    def watch(self, watcher: Callable[[bool], None]) -> None:
        """Call ``watcher(ready)`` whenever ``ready`` changes (the parent of worker
        processes tells them: ``workers/guard.py``)."""
        self._watchers.append(watcher)

    def _set_ready(self, ready: bool) -> None:
        self._rules.set(ready)
        for watcher in list(self._watchers):
            try:
                watcher(ready)
            except Exception:
                self.log.failure("A watcher of {network}'s guard failed", network=self._guard.network)

    async def _tick(self) -> None:
        try:
            await self.check()
        except EngineUnavailable as e:
            self._engine_down.failed(network=self._guard.network, error=str(e))
            return
        except GuardError as e:
            if not self.ready:
                self._fatal(fatal_message(self._guard.network, e))
            else:
                # The rules may be gone (a firewall reload) and could not be repaired: no
                # function runs on the network, and /health says so, until a repair works.
                self._set_ready(False)
                if self._loop is not None and self._loop.running:
                    self._loop.interval = self._retry_delay
                self.log.error("Guarding {network} failed: {error}; calls wait until it is repaired",
                               network=self._guard.network, error=str(e))
            return
        except Exception as e:  # the loop must go on (it dies on an uncaught error)
            self.log.error("Guarding {network} failed: {error}", network=self._guard.network, error=repr(e))
            return
        self._engine_down.recovered(network=self._guard.network)
        if not self.ready:
            self._set_ready(True)
            self.log.info("Network {network} guarded", network=self._guard.network)
            if self._loop is not None and self._loop.running:
                self._loop.interval = self._interval

    def _fatal(self, line: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._on_fatal(line)


def stop_daemon(reactor: IReactorCore, line: str, log: Logger = NetguardService.log) -> None:
    """Log ``line`` as critical, stop the reactor and exit with status 2 once every
    service has stopped (twistd itself would exit 0)."""
    log.critical("{message}", message=line)

    def exit_2() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)

    reactor.addSystemEventTrigger("after", "shutdown", exit_2)
    reactor.callWhenRunning(reactor.stop)


def netguard_service(reactor: Any, network: str, allow_nets: Sequence[str],
                     docker_host: str) -> NetguardService | None:
    """The service guarding ``network`` when it is one the daemon guards (the default
    ``ironfunctions`` or ``ironfunctions-*``); None for ``none``, ``bridge`` and any
    other operator-chosen network, used as is."""
    if not is_guarded(network):
        return None
    kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
    if docker_host:
        kwargs["base_url"] = docker_host
    # A pinned API version: building the client does no I/O.
    api = docker.APIClient(version="1.41", timeout=int(COMMAND_TIMEOUT * 3), **kwargs)
    return NetguardService(NetworkGuard(api, network, allow_nets), reactor,
                           lambda line: stop_daemon(reactor, line), docker_host=docker_host)


CallT = TypeVar("CallT")
ResultT = TypeVar("ResultT")


class GuardState(Protocol):
    """Whether the function network's rules are in place: ``NetguardService`` in the
    process that keeps them, ``workers/guard.py``'s ``RemoteGuard`` in a worker process
    (which only hears about them)."""

    @property
    def ready(self) -> bool: ...

    async def wait_ready(self, timeout: float) -> None: ...


def guarded_calls(run_call: Callable[[CallT], Coroutine[Any, Any, ResultT]], guard: GuardState | None,
                  wait: float = 10.0) -> Callable[[CallT], Coroutine[Any, Any, ResultT]]:
    """``run_call`` that first waits (at most ``wait`` seconds, then ``NotReady``) for
    ``guard``'s rules to be in place: after a reboot the network is still there but its
    rules are not, and no function may run on it meanwhile. ``run_call`` itself when
    there is no guard."""
    if guard is None:
        return run_call
    checked = guard

    async def run(call: CallT) -> ResultT:
        if not checked.ready:
            await checked.wait_ready(wait)
        return await run_call(call)

    return run


async def wait_for_rules(rules: Readiness, clock: IReactorTime, timeout: float, network: str) -> None:
    """Wait until ``rules`` are in place (at most ``timeout`` s, then ``NotReady``)."""
    if rules.ready:
        return
    try:
        await rules.wait().addTimeout(timeout, clock)
    except TimeoutError:
        raise NotReady(f"network {network} not guarded yet") from None
