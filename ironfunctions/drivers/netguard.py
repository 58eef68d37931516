"""The function network and the host firewall rules that guard it (SPEC §8).

This module alone owns the rules. ``NetworkGuard`` does the blocking work: it makes
the Docker network if missing (a bridge with inter-container traffic off), reads its
bridge interface, plans the rules (``netplan.plan``, pure) and puts in place whatever
of them is missing or changed, with the same ``iptables``/``ip6tables`` (nf_tables)
Docker uses. It touches only its own chains and the jumps into them; every change is
made under a host-wide lock, so several daemons sharing the network and its rules
never race into duplicates; nothing is removed when a daemon stops (the rules protect
the host while no daemon runs). ``remove`` exists for tests.

``NetguardService`` runs it on its own one-thread pool (never the reactor thread nor
the reactor's default pool) at start and then every 30 seconds on an injected clock,
logging each repair (a firewall reload that dropped the rules). A guard that cannot
be put in place at start (no permission, a remote ``DOCKER_HOST``) stops the daemon
with one line saying what to do.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Coroutine, Protocol, Sequence, TypeVar

import docker
import docker.errors
import docker.utils
import requests.exceptions
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ironfunctions.errors import NotReady
from ironfunctions.drivers.netplan import (
    Jump, Plan, chain_names, is_guarded, parse_nameservers, plan, remote_docker_host,
)

ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
LABEL = "ironfunctions.network"
LOCK_PATH = "/run/ironfunctions-netguard.lock"
COMMAND_TIMEOUT = 10.0
CHECK_INTERVAL = 30.0
JUMP_PARENTS = ("INPUT", "FORWARD", "DOCKER-USER")


class GuardError(Exception):
    """The guard cannot be put in place; the message says why and what to do."""


class EngineUnavailable(Exception):
    """The Docker engine did not answer (retried: the daemon waits for it)."""


class Iptables:
    """Blocking ``iptables`` or ``ip6tables`` commands on the filter table, each
    bounded by ``timeout`` seconds; any failure is a ``GuardError``."""

    def __init__(self, family: int, timeout: float = COMMAND_TIMEOUT) -> None:
        self.family = family
        self._binary = "iptables" if family == 4 else "ip6tables"
        self._timeout = timeout

    def _run(self, args: Sequence[str], stdin: str | None = None, binary: str | None = None,
             ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        argv = [binary or self._binary, "-w", "5", *args]
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self._timeout)
        except FileNotFoundError:
            raise GuardError(f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise GuardError(f"{' '.join(argv)} did not finish in {self._timeout:g}s") from None
        if result.returncode not in ok:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise GuardError(f"{' '.join(argv)}: {message[-1] if message else f'exit {result.returncode}'}")
        return result

    def chain(self, chain: str) -> list[str] | None:
        """``-S <chain>`` lines without the ``-N`` line; None when the chain is missing."""
        result = self._run(["-S", chain], ok=(0, 1))
        if result.returncode != 0:
            # iptables-nft says "incompatible" of a chain that does not exist
            if any(m in result.stderr for m in ("No chain", "does not exist", "incompatible")):
                return None
            raise GuardError(f"{self._binary} -S {chain}: {result.stderr.strip()}")
        return [line for line in result.stdout.splitlines() if line.startswith("-A ")]

    def restore(self, text: str) -> None:
        """Apply ``text`` in one transaction, keeping every other rule."""
        self._run(["--noflush"], stdin=text, binary=self._binary + "-restore")

    def insert(self, jump: Jump) -> None:
        self._run(["-I", jump.parent, "1", *jump.spec])

    def delete(self, line: str) -> None:
        """Delete the rule an ``-S`` line (``-A chain spec...``) describes."""
        self._run(["-D", *line.split()[1:]])

    def delete_chain(self, chain: str) -> None:
        self._run(["-F", chain])
        self._run(["-X", chain])


class Guard(Protocol):
    """What ``NetguardService`` needs of a guard (``NetworkGuard``, or a fake)."""

    network: str

    def ensure(self) -> list[str]: ...


class NetworkGuard:
    """Blocking: the guarded Docker network and its firewall rules.

    :param api: docker-py client of the (local) engine.
    :param network: the network's name.
    :param allow_nets: CIDRs left open although private (``FUNCTION_ALLOW_NETS``).
    :param resolv_conf: where the host's nameservers are read (Docker's embedded DNS
        forwards to them from the container's side, so port 53 of a private one stays open).
    :param lock_path: the host-wide lock every daemon takes around its changes.
    """

    def __init__(self, api: docker.APIClient, network: str, allow_nets: Sequence[str] = (),
                 resolv_conf: str = "/etc/resolv.conf", lock_path: str = LOCK_PATH,
                 iptables: Callable[[int], Iptables] = Iptables) -> None:
        self._api = api
        self.network = network
        self._allow_nets = [ipaddress.ip_network(net) for net in allow_nets]
        self._resolv_conf = resolv_conf
        self._lock_path = lock_path
        self._tables = {family: iptables(family) for family in (4, 6)}

    def bridge(self) -> str:
        """The network's bridge interface, the network made first if missing."""
        try:
            try:
                info = self._api.inspect_network(self.network)
            except docker.errors.NotFound:
                try:
                    self._api.create_network(
                        self.network, driver="bridge", options={ICC_OPTION: "false"},
                        labels={LABEL: "guarded"}, check_duplicate=True,
                    )
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # made meanwhile by another daemon
                        raise
                info = self._api.inspect_network(self.network)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailable(str(e)) from None
        options = info.get("Options") or {}
        if info.get("Driver") != "bridge" or options.get(ICC_OPTION) != "false":
            raise GuardError(
                f"network {self.network} exists but is not a bridge with {ICC_OPTION}=false; "
                "remove it (docker network rm) so the daemon makes it, or choose another DOCKER_NETWORK"
            )
        return str(options.get(BRIDGE_NAME_OPTION) or "br-" + str(info["Id"])[:12])

    def plan(self) -> Plan:
        """The rules as they should be now (bridge, nameservers, Docker's chains)."""
        bridge = self.bridge()
        try:
            with open(self._resolv_conf) as f:
                nameservers = parse_nameservers(f.read())
        except OSError:
            nameservers = []
        parents = {family: "DOCKER-USER" if table.chain("DOCKER-USER") is not None else "FORWARD"
                   for family, table in self._tables.items()}
        return plan(self.network, bridge, self._allow_nets, nameservers, parents)

    def ensure(self) -> list[str]:
        """Put in place what is missing or changed; return what was repaired (empty
        when everything was already there)."""
        wanted = self.plan()
        repaired: list[str] = []
        with self._locked():
            for family, table in self._tables.items():
                changed = [chain for chain, rules in wanted.rules[family].items()
                           if table.chain(chain) != list(rules)]
                if changed:
                    table.restore(wanted.restore_text(family, changed))
                    repaired += [f"ipv{family} chain {chain}" for chain in changed]
                jumps = [jump for jump in wanted.jumps if jump.family == family]
                for parent in {jump.parent for jump in jumps} | set(JUMP_PARENTS):
                    lines = table.chain(parent)
                    if lines is None:
                        continue
                    expected = {f"-A {jump.parent} {' '.join(jump.spec)}" for jump in jumps
                                if jump.parent == parent}
                    seen: set[str] = set()
                    for line in lines:
                        if line.split()[-1] not in (wanted.chains.forward, wanted.chains.inbound):
                            continue  # not ours
                        if line in expected and line not in seen:
                            seen.add(line)
                        else:  # a stale bridge name, or a duplicate
                            table.delete(line)
                            repaired.append(f"ipv{family} removed stale {line}")
                    for jump in jumps:
                        if jump.parent == parent and f"-A {parent} {' '.join(jump.spec)}" not in seen:
                            table.insert(jump)
                            repaired.append(f"ipv{family} jump {parent} -> {jump.target}")
        return repaired

    def remove(self) -> None:
        """Remove this network's chains and every jump into them (tests only: a
        daemon never removes the rules)."""
        chains = chain_names(self.network)
        with self._locked():
            for table in self._tables.values():
                for parent in JUMP_PARENTS:
                    for line in table.chain(parent) or []:
                        if line.split()[-1] in (chains.forward, chains.inbound):
                            table.delete(line)
                for chain in (chains.forward, chains.inbound):
                    if table.chain(chain) is not None:
                        table.delete_chain(chain)

    def _locked(self) -> "_FileLock":
        return _FileLock(self._lock_path)


class _FileLock:
    """An exclusive ``flock`` on a file shared by every daemon on the host."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise GuardError(f"cannot open the lock {self._path}: {e.strerror}") from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing releases the lock


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
        self._waiters: list[Deferred[None]] = []
        self.ready = False

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
        # Joining the pool waits for a command in flight (bounded by its timeout): on a
        # thread of its own, not the reactor thread nor its default pool.
        done: Deferred[None] = Deferred()

        def stop_pool() -> None:
            self._pool.stop()
            self._reactor.callFromThread(done.callback, None)

        threading.Thread(target=stop_pool, name="netguard-stop", daemon=True).start()
        return done

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
        if self.ready:
            return
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout, self._clock)
        try:
            await d
        except TimeoutError:
            raise NotReady(f"network {self._guard.network} not guarded yet") from None
        finally:
            if d in self._waiters:
                self._waiters.remove(d)

    async def ping(self) -> None:
        """For ``/health``: fails until the rules have been put in place once."""
        if not self.ready:
            raise RuntimeError(f"network {self._guard.network} not guarded yet")

    async def _tick(self) -> None:
        try:
            await self.check()
        except EngineUnavailable as e:
            self.log.warn("Guarding {network}: Docker engine not available ({error}); retrying",
                          network=self._guard.network, error=str(e))
            return
        except GuardError as e:
            if not self.ready:
                self._fatal(fatal_message(self._guard.network, e))
            else:
                self.log.error("Guarding {network} failed: {error}", network=self._guard.network, error=str(e))
            return
        except Exception as e:  # the loop must go on (it dies on an uncaught error)
            self.log.error("Guarding {network} failed: {error}", network=self._guard.network, error=repr(e))
            return
        if not self.ready:
            self.ready = True
            self.log.info("Network {network} guarded", network=self._guard.network)
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
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


def guarded_calls(run_call: Callable[[CallT], Coroutine[Any, Any, ResultT]], guard: NetguardService | None,
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
