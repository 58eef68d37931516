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
