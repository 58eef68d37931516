"""NetworkGuard.plan with a fake engine and iptables: which nameservers stay open."""

from __future__ import annotations

import pathlib
from typing import Any, cast

import docker

from ironfunctions.drivers.netguard import ICC_OPTION, Iptables, NetworkGuard


class FakeApi:
    def inspect_network(self, name: str) -> dict[str, Any]:
        return {"Id": "0123456789abcdef", "Driver": "bridge", "Options": {ICC_OPTION: "false"}}


class FakeTable:
    def chain(self, name: str) -> list[str] | None:
        return [] if name == "DOCKER-USER" else None


def guard(tmp_path: pathlib.Path, resolv: str, resolved: str | None) -> NetworkGuard:
    (tmp_path / "resolv.conf").write_text(resolv)
    if resolved is not None:
        (tmp_path / "resolved.conf").write_text(resolved)
    return NetworkGuard(
        cast(docker.APIClient, FakeApi()), "ironfunctions-t", resolv_conf=str(tmp_path / "resolv.conf"),
        resolved_conf=str(tmp_path / "resolved.conf"), lock_path=str(tmp_path / "lock"),
        iptables=lambda family: cast(Iptables, FakeTable()),
    )


def dns_rules(g: NetworkGuard) -> list[str]:
    rules = g.plan().rules[4]
    return [rule for chain in rules.values() for rule in chain if "--dport 53" in rule]


def test_a_private_nameserver_of_resolv_conf_stays_reachable_on_port_53(tmp_path: pathlib.Path) -> None:
    rules = dns_rules(guard(tmp_path, "nameserver 10.0.0.2\n", "nameserver 10.9.9.9\n"))
    assert rules and all("-d 10.0.0.2/32" in rule for rule in rules)


def test_behind_systemd_resolved_the_upstream_nameservers_are_read_as_docker_does(tmp_path: pathlib.Path) -> None:
    """resolv.conf names only the stub 127.0.0.53; Docker forwards to resolved's upstreams."""
    rules = dns_rules(guard(tmp_path, "nameserver 127.0.0.53\n", "nameserver 10.0.0.2\n"))
    assert rules and all("-d 10.0.0.2/32" in rule for rule in rules)


def test_no_nameserver_file_opens_nothing(tmp_path: pathlib.Path) -> None:
    assert dns_rules(guard(tmp_path, "nameserver 127.0.0.53\n", None)) == []


class StatefulTable:
    """``iptables -S`` output per chain, changed by what the guard does."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {
            "INPUT": ["-P INPUT ACCEPT", "-A INPUT -i lo -j ACCEPT"],
            "FORWARD": ["-P FORWARD DROP", "-A FORWARD -j DOCKER-USER"],
            "DOCKER-USER": ["-N DOCKER-USER", "-A DOCKER-USER -j RETURN"],
        }

    def chain(self, name: str) -> list[str] | None:
        """Only the ``-A`` lines, as ``Iptables.chain`` gives them."""
        lines = self.chains.get(name)
        return None if lines is None else [line for line in lines if line.startswith("-A ")]

    def restore(self, text: str) -> None:
        for line in text.splitlines():
            if line.startswith(":"):
                name = line[1:].split()[0]
                self.chains[name] = [f"-N {name}"]
            elif line.startswith("-A "):
                self.chains[line.split()[1]].append(line)

    def insert(self, jump: Any) -> None:
        lines = self.chains[jump.parent]
        head = 1 if lines and not lines[0].startswith("-A ") else 0
        lines.insert(head, f"-A {jump.parent} {' '.join(jump.spec)}")

    def delete(self, line: str) -> None:
        self.chains[line.split()[1]].remove(line)


def test_a_rule_put_above_our_jump_is_repaired_by_moving_the_jump_first(tmp_path: pathlib.Path) -> None:
    """An ACCEPT a firewall tool inserts at the top would let functions reach the host."""
    tables = {4: StatefulTable(), 6: StatefulTable()}
    (tmp_path / "resolv.conf").write_text("")
    g = NetworkGuard(cast(docker.APIClient, FakeApi()), "ironfunctions-t", resolv_conf=str(tmp_path / "resolv.conf"),
                     resolved_conf=str(tmp_path / "none"), lock_path=str(tmp_path / "lock"),
                     iptables=lambda family: cast(Iptables, tables[family]))
    assert g.ensure()  # put in place
    assert g.ensure() == []  # in place: nothing to do
    inp = tables[4].chains["INPUT"]
    ours = inp[1]
    assert ours.endswith("-j IFN-ironfunctions-t-IN")
    inp.insert(1, "-A INPUT -i br-0123456789ab -j ACCEPT")
    repaired = g.ensure()
    assert any("moved" in r for r in repaired)
    assert tables[4].chains["INPUT"][1] == ours and tables[4].chains["INPUT"].count(ours) == 1
    assert g.ensure() == []


def test_a_kernel_without_ipv6_is_guarded_with_iptables_alone(tmp_path: pathlib.Path) -> None:
    """ip6tables fails on a host whose kernel has no IPv6 (no IPv6 packet can flow
    there either): the daemon must not refuse to start for it."""
    (tmp_path / "resolv.conf").write_text("")
    made: list[int] = []
    tables = {4: StatefulTable(), 6: StatefulTable()}

    def iptables(family: int) -> Iptables:
        made.append(family)
        return cast(Iptables, tables[family])

    g = NetworkGuard(cast(docker.APIClient, FakeApi()), "ironfunctions-t", resolv_conf=str(tmp_path / "resolv.conf"),
                     resolved_conf=str(tmp_path / "none"), lock_path=str(tmp_path / "lock"),
                     iptables=iptables, ipv6=False)
    repaired = g.ensure()
    assert made == [4] and repaired and all(r.startswith("ipv4") for r in repaired)
    assert any(line.endswith("-j IFN-ironfunctions-t-IN") for line in tables[4].chains["INPUT"])
    both = NetworkGuard(cast(docker.APIClient, FakeApi()), "ironfunctions-t", resolv_conf=str(tmp_path / "resolv.conf"),
                        resolved_conf=str(tmp_path / "none"), lock_path=str(tmp_path / "lock"),
                        iptables=lambda family: cast(Iptables, StatefulTable()), ipv6=True)
    assert any(r.startswith("ipv6") for r in both.ensure())
