"""The function network and the host firewall rules that guard it (SPEC §8).

This module alone owns the rules. ``NetworkGuard`` does the blocking work: it makes
the Docker network if missing (a bridge with inter-container traffic off), reads its
bridge interface, plans the rules (``netplan.plan``, pure) and puts in place whatever
of them is missing or changed, with the same ``iptables``/``ip6tables`` (nf_tables)
Docker uses. It touches only its own chains and the jumps into them; every change is
made under a host-wide lock, so several daemons sharing the network and its rules
never race into duplicates; nothing is removed when a daemon stops (the rules protect
the host while no daemon runs). ``remove`` exists for tests.

``drivers/netguard_service.py`` runs it from the daemon (at start, then every 30 s).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
from typing import Callable, Protocol, Sequence

import docker
import docker.errors
import requests.exceptions

from ironfunctions.drivers.netplan import CHAIN_PREFIX, Address, Jump, Plan, chain_names, parse_nameservers, plan

ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
LABEL = "ironfunctions.network"
LOCK_PATH = "/run/ironfunctions-netguard.lock"
COMMAND_TIMEOUT = 10.0
JUMP_PARENTS = ("INPUT", "FORWARD", "DOCKER-USER")
# Present when the kernel has IPv6; without it no IPv6 packet can flow, so there is
# nothing for ip6tables to guard (and ip6tables itself fails there).
IPV6_PROC = "/proc/net/if_inet6"


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
    :param resolved_conf: read instead when ``resolv_conf`` names only loopback servers
        (systemd-resolved's stub at 127.0.0.53), as Docker itself does.
    :param lock_path: the host-wide lock every daemon takes around its changes.
    :param ipv6: guard IPv6 too; None: when the kernel has IPv6 (``IPV6_PROC``).
    """

    def __init__(self, api: docker.APIClient, network: str, allow_nets: Sequence[str] = (),
                 resolv_conf: str = "/etc/resolv.conf", lock_path: str = LOCK_PATH,
                 resolved_conf: str = "/run/systemd/resolve/resolv.conf",
                 iptables: Callable[[int], Iptables] = Iptables, ipv6: bool | None = None) -> None:
        self._api = api
        self.network = network
        self._allow_nets = [ipaddress.ip_network(net) for net in allow_nets]
        self._resolv_confs = (resolv_conf, resolved_conf)
        self._lock_path = lock_path
        if ipv6 is None:
            ipv6 = os.path.exists(IPV6_PROC)
        self._tables = {family: iptables(family) for family in ((4, 6) if ipv6 else (4,))}

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
        nameservers: list[Address] = []
        for path in self._resolv_confs:
            try:
                with open(path) as f:
                    nameservers = parse_nameservers(f.read())
            except OSError:
                continue
            if nameservers:
                break
        parents = {family: "DOCKER-USER" if table.chain("DOCKER-USER") is not None else "FORWARD"
                   for family, table in self._tables.items()}
        parents.setdefault(6, "FORWARD")  # planned, not applied, on a kernel without IPv6
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
                    # A rule of someone else's above our jump (an ACCEPT a firewall tool
                    # inserted) would let packets by: our jumps must come first, after at
                    # most the jumps of other guarded networks (which only refuse).
                    behind_foreign_rule = False
                    for line in lines:
                        if line.split()[-1] not in (wanted.chains.forward, wanted.chains.inbound):
                            if line.startswith("-A ") and f" -j {CHAIN_PREFIX}" not in line:
                                behind_foreign_rule = True
                            continue  # not ours
                        if line in expected and line not in seen and not behind_foreign_rule:
                            seen.add(line)
                        elif line in expected and line not in seen:  # put back in front below
                            table.delete(line)
                            repaired.append(f"ipv{family} moved {line} ahead of other rules")
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
