"""The pure planner of the function network's firewall rules (drivers/netplan.py)."""

import ipaddress

import pytest

from ironfunctions.drivers.netplan import (
    Jump, chain_names, is_guarded, parse_allow_nets, parse_nameservers, plan, remote_docker_host,
)


def test_default_network_and_its_prefixed_names_are_guarded_others_are_the_operators() -> None:
    assert is_guarded("ironfunctions") and is_guarded("ironfunctions-test-1")
    assert not any(map(is_guarded, ["none", "bridge", "host", "ironfunctionsx", "my-net"]))


def test_rules_refuse_host_other_containers_link_local_and_private_ranges_in_order() -> None:
    p = plan("ironfunctions", "br-abc", forward_parent={4: "DOCKER-USER", 6: "FORWARD"})
    reject4 = "-j REJECT --reject-with icmp-admin-prohibited"
    assert p.rules[4]["IFN-ironfunctions"] == (
        "-A IFN-ironfunctions -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A IFN-ironfunctions -o br-abc {reject4}",
        f"-A IFN-ironfunctions -d 10.0.0.0/8 {reject4}",
        f"-A IFN-ironfunctions -d 100.64.0.0/10 {reject4}",
        f"-A IFN-ironfunctions -d 169.254.0.0/16 {reject4}",
        f"-A IFN-ironfunctions -d 172.16.0.0/12 {reject4}",
        f"-A IFN-ironfunctions -d 192.168.0.0/16 {reject4}",
    )
    assert p.rules[4]["IFN-ironfunctions-IN"] == (
        "-A IFN-ironfunctions-IN -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A IFN-ironfunctions-IN {reject4}",
    )
    reject6 = "-j REJECT --reject-with icmp6-adm-prohibited"
    assert p.rules[6]["IFN-ironfunctions"][2:] == (
        f"-A IFN-ironfunctions -d fc00::/7 {reject6}", f"-A IFN-ironfunctions -d fe80::/10 {reject6}",
    )
    assert p.rules[6]["IFN-ironfunctions-IN"][-1] == f"-A IFN-ironfunctions-IN {reject6}"
    assert set(p.jumps) == {
        Jump(4, "DOCKER-USER", ("-i", "br-abc", "-j", "IFN-ironfunctions")),
        Jump(4, "INPUT", ("-i", "br-abc", "-j", "IFN-ironfunctions-IN")),
        Jump(6, "FORWARD", ("-i", "br-abc", "-j", "IFN-ironfunctions")),
        Jump(6, "INPUT", ("-i", "br-abc", "-j", "IFN-ironfunctions-IN")),
    }


def test_allowed_nets_and_private_nameservers_open_before_the_private_ranges_close() -> None:
    nets = parse_allow_nets("10.213.0.0/16,fd00:1::/64")
    servers = parse_nameservers("nameserver 10.255.255.53\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n")
    p = plan("ironfunctions", "br-abc", nets, servers)
    forward = p.rules[4]["IFN-ironfunctions"]
    assert forward[2:5] == (
        "-A IFN-ironfunctions -d 10.255.255.53/32 -p udp -m udp --dport 53 -j RETURN",
        "-A IFN-ironfunctions -d 10.255.255.53/32 -p tcp -m tcp --dport 53 -j RETURN",
        "-A IFN-ironfunctions -d 10.213.0.0/16 -j RETURN",
    )
    assert "-A IFN-ironfunctions -d fd00:1::/64 -j RETURN" in p.rules[6]["IFN-ironfunctions"]
    # Neither opens the host itself, nor other containers (those rules come first).
    assert p.rules[4]["IFN-ironfunctions-IN"][-1].endswith("-j REJECT --reject-with icmp-admin-prohibited")
    assert "-o br-abc" in forward[1]


def test_public_nameservers_need_no_rule() -> None:
    p = plan("n", "br-x", nameservers=[ipaddress.ip_address("1.1.1.1")])
    assert not any("--dport 53" in rule for rule in p.rules[4]["IFN-n"])


def test_restore_text_redeclares_the_chains_so_they_are_replaced_in_one_transaction() -> None:
    p = plan("ironfunctions", "br-abc")
    text = p.restore_text(4, ["IFN-ironfunctions-IN"])
    assert text.splitlines() == [
        "*filter", ":IFN-ironfunctions-IN - [0:0]", *p.rules[4]["IFN-ironfunctions-IN"], "COMMIT",
    ]


def test_chain_names_fit_iptables_and_stay_distinct() -> None:
    long_a, long_b = "ironfunctions-" + "a" * 40, "ironfunctions-" + "a" * 39 + "b"
    for name in ("ironfunctions", long_a, long_b):
        chains = chain_names(name)
        assert len(chains.inbound) <= 28 and chains.inbound == chains.forward + "-IN"
    assert chain_names(long_a) != chain_names(long_b)


@pytest.mark.parametrize("host,remote", [
    ("", False), ("unix:///var/run/docker.sock", False), ("tcp://127.0.0.1:2375", False),
    ("tcp://localhost:2375", False), ("tcp://[::1]:2375", False), ("tcp://10.0.0.5:2376", True),
    ("tcp://docker.example:2376", True), ("ssh://user@host", True),
])
def test_remote_docker_host(host: str, remote: bool) -> None:
    assert remote_docker_host(host) is remote


def test_allow_nets_reject_non_cidrs_naming_the_entry() -> None:
    with pytest.raises(ValueError, match="'10.1.2.3/8'"):
        parse_allow_nets("10.1.2.3/8")
    assert parse_allow_nets(" , ") == ()
