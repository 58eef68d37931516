"""Pure planning of the firewall rules that keep functions off the platform (SPEC §8).

Given the guarded network's bridge interface, the CIDRs the operator opened
(``FUNCTION_ALLOW_NETS``) and the nameservers Docker's embedded DNS forwards to, ``plan``
returns every chain, rule and jump ``drivers/netguard.py`` puts in place, written exactly
as ``iptables -S`` prints them, so that the running rules can be compared with the plan
line by line. Nothing here runs a command.

Two chains per network and address family:

- ``IFN-<net>`` (jumped to from ``DOCKER-USER``, or ``FORWARD`` where Docker made no
  ``DOCKER-USER``, for packets coming in on the bridge): replies pass; other containers
  on the bridge, link-local, private and shared ranges are refused, except the allowed
  CIDRs and port 53 of the nameservers; anything else returns to Docker's own rules
  (which accept it and masquerade it out).
- ``IFN-<net>-IN`` (jumped to from ``INPUT`` for packets coming in on the bridge, i.e.
  addressed to the host itself, whatever its address): replies pass, the rest is refused.

Refused means REJECT (an immediate error in the function), not DROP (a hang until its
timeout).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Iterable, Sequence, Union
from urllib.parse import urlsplit

import attrs

DEFAULT_NETWORK = "ironfunctions"
GUARDED_PREFIX = DEFAULT_NETWORK + "-"

BLOCKED = {
    4: ("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"),
    6: ("fc00::/7", "fe80::/10"),
}
REJECT = {
    4: ("-j", "REJECT", "--reject-with", "icmp-admin-prohibited"),
    6: ("-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"),
}
REPLIES = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
# iptables keeps chain names to 28 characters.
MAX_CHAIN = 28

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def is_guarded(network: str) -> bool:
    """Whether the daemon creates and guards ``network``: the default ``ironfunctions``
    and ``ironfunctions-<anything>`` (e.g. a test's own). Any other name, ``none`` and
    ``bridge`` among them, is the operator's and is used as is."""
    return network == DEFAULT_NETWORK or network.startswith(GUARDED_PREFIX)


def remote_docker_host(docker_host: str) -> bool:
    """Whether ``DOCKER_HOST`` names an engine that may run on another machine, whose
    containers this host's firewall cannot guard. Empty (docker-py's default socket),
    ``unix://`` and tcp to a loopback address are this host."""
    if not docker_host:
        return False
    parts = urlsplit(docker_host if "://" in docker_host else "tcp://" + docker_host)
    if parts.scheme in ("unix", "npipe"):
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@attrs.frozen
class Chains:
    """Our two chains for one network (the same names in iptables and ip6tables)."""

    forward: str
    inbound: str


CHAIN_PREFIX = "IFN-"  # every chain of ours starts with it


def chain_names(network: str) -> Chains:
    """``IFN-<net>`` and ``IFN-<net>-IN``; a name too long for iptables is shortened
    with a hash, so distinct networks keep distinct chains."""
    tag = network
    if len("IFN-" + tag + "-IN") > MAX_CHAIN:
        digest = hashlib.sha256(network.encode()).hexdigest()[:8]
        tag = network[: MAX_CHAIN - len("IFN-" + "-IN") - 9] + "-" + digest
    return Chains(forward=f"IFN-{tag}", inbound=f"IFN-{tag}-IN")


@attrs.frozen
class Jump:
    """``-A <parent> <spec>``: how packets reach one of our chains."""

    family: int
    parent: str
    spec: tuple[str, ...]

    @property
    def target(self) -> str:
        return self.spec[-1]


@attrs.frozen
class Plan:
    """Everything one network needs, per family: our chains with their rules in order
    (as ``iptables -S <chain>`` prints them) and the jumps into them."""

    network: str
    bridge: str
    chains: Chains
    rules: dict[int, dict[str, tuple[str, ...]]]
    jumps: tuple[Jump, ...]

    def restore_text(self, family: int, chains: Iterable[str]) -> str:
        """``iptables-restore --noflush`` input that (re)creates ``chains`` with
        exactly their planned rules in one transaction (declaring a chain flushes it)."""
        lines = ["*filter"]
        chains = list(chains)
        lines += [f":{chain} - [0:0]" for chain in chains]
        for chain in chains:
            lines += self.rules[family][chain]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def plan(
    network: str,
    bridge: str,
    allow_nets: Sequence[Net] = (),
    nameservers: Sequence[Address] = (),
    forward_parent: dict[int, str] | None = None,
) -> Plan:
    """The rules that keep containers on ``bridge`` off the host, other containers,
    link-local and private ranges, with ``allow_nets`` and port 53 of ``nameservers``
    (the upstream servers of Docker's embedded DNS) left open. ``forward_parent`` names
    the chain the forward jump goes in, per family (``DOCKER-USER`` unless missing)."""
    parents = {4: "DOCKER-USER", 6: "DOCKER-USER", **(forward_parent or {})}
    chains = chain_names(network)
    rules: dict[int, dict[str, tuple[str, ...]]] = {}
    jumps: list[Jump] = []
    for family in (4, 6):
        reject = " ".join(REJECT[family])
        fwd = chains.forward
        forward = [f"-A {fwd} {' '.join(REPLIES)}", f"-A {fwd} -o {bridge} {reject}"]
        for server in nameservers:
            if server.version == family and _blocked(family, server):
                host = f"{server}/{server.max_prefixlen}"
                for proto in ("udp", "tcp"):
                    forward.append(f"-A {fwd} -d {host} -p {proto} -m {proto} --dport 53 -j RETURN")
        for net in allow_nets:
            if net.version == family:
                forward.append(f"-A {fwd} -d {net} -j RETURN")
        forward += [f"-A {fwd} -d {cidr} {reject}" for cidr in BLOCKED[family]]
        inbound = [f"-A {chains.inbound} {' '.join(REPLIES)}", f"-A {chains.inbound} {reject}"]
        rules[family] = {fwd: tuple(forward), chains.inbound: tuple(inbound)}
        jumps.append(Jump(family, parents[family], ("-i", bridge, "-j", fwd)))
        jumps.append(Jump(family, "INPUT", ("-i", bridge, "-j", chains.inbound)))
    return Plan(network, bridge, chains, rules, tuple(jumps))


def _blocked(family: int, address: Address) -> bool:
    return any(address in ipaddress.ip_network(cidr) for cidr in BLOCKED[family])


def parse_nameservers(resolv_conf: str) -> list[Address]:
    """The ``nameserver`` addresses of a resolv.conf text (loopback ones left out:
    Docker does not forward to them)."""
    servers: list[Address] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback:
                servers.append(address)
    return servers


def parse_allow_nets(text: str) -> tuple[Net, ...]:
    """``FUNCTION_ALLOW_NETS``: comma-separated CIDRs (``10.1.0.0/16, fd00::/64``).
    Raises ``ValueError`` naming the bad entry."""
    nets: list[Net] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError as e:
            raise ValueError(f"{item!r} is not a CIDR ({e})") from None
    return tuple(nets)
