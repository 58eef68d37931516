"""SPEC §8 "Functions reach the internet, not the platform", with real Docker, real
iptables (nf_tables) and a real daemon on a guarded network of this test's own
(``ironfunctions-t<random>``).

Every target is one this module creates and removes: a TCP listener of the test on the
host, the daemon's own port, and a network namespace reached through a veth pair that
holds a private (10.213.0.1), a link-local (169.254.169.254) and an "outside"
(198.51.100.1, TEST-NET-2) address, plus a second container on the guarded network. A
probe function (busybox nc with timeouts) tries each. Then each of our rules is removed
in turn to show it is the one that stops the probe, and the guard's re-check puts it
back. Everything (rules, networks, namespace, containers, processes) is removed at the
end, even when a test fails; no rule this module did not add is touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest

from ironfunctions.drivers.netguard import NetworkGuard
from ironfunctions.drivers.netplan import chain_names
from tests.daemon import Daemon
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import free_port

RUN = uuid.uuid4().hex[:5]  # short enough for readable chain names (IFN-ironfunctions-t<RUN>a-IN)
NS = f"ifn-{RUN}"
VETH_HOST, VETH_NS = f"ifnh{RUN}", f"ifnn{RUN}"
HOST_ADDR, OUTSIDE = "198.51.100.2", "198.51.100.1"  # the host's end, the "internet"
PRIVATE, METADATA = "10.213.0.1", "169.254.169.254"
LAN_PORT = 7070


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def cleanup(*steps: Callable[[], Any]) -> None:
    """Run every step even when one fails (a hung engine must not leave the firewall
    rules, the namespace or a daemon behind); then raise the first failure."""
    errors: list[BaseException] = []
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: PERF203
            errors.append(e)
    if errors:
        raise errors[0]


class Listener:
    """A TCP server of the test on 0.0.0.0:<free port> that sends ``banner`` and closes."""

    def __init__(self, banner: bytes) -> None:
        self.port = free_port()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", self.port))
        self._sock.listen(16)
        self._banner = banner
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self._banner)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def lan() -> Iterator[None]:
    """A namespace behind a veth pair, routed from the host, holding the private,
    link-local and outside addresses, with a listener answering ``lan`` on each."""
    server = None
    try:
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        sh("ip", "link", "set", VETH_NS, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", VETH_HOST)
        sh("ip", "link", "set", VETH_HOST, "up")
        sh("ip", "-n", NS, "addr", "add", f"{OUTSIDE}/24", "dev", VETH_NS)
        sh("ip", "-n", NS, "link", "set", VETH_NS, "up")
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        for address in (PRIVATE, METADATA):
            sh("ip", "-n", NS, "addr", "add", f"{address}/32", "dev", "lo")
            sh("ip", "route", "add", f"{address}/32", "via", OUTSIDE, "dev", VETH_HOST)
        sh("ip", "-n", NS, "route", "add", "default", "via", HOST_ADDR)
        server = subprocess.Popen(
            ["ip", "netns", "exec", NS, "/bin/busybox", "nc", "-ll", "-p", str(LAN_PORT),
             "-e", "/bin/busybox", "echo", "lan"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        yield
    finally:
        cleanup(
            lambda: server is not None and (server.kill(), server.wait()),  # type: ignore[func-returns-value]  # both in one lambda
            # Deleting the host's end of the veth removes both ends and the routes through it.
            lambda: sh("ip", "link", "del", VETH_HOST, check=False),
            lambda: sh("ip", "netns", "del", NS, check=False),
        )


def guarded_daemon(tmp: Any, network: str, env: dict[str, str] | None = None) -> Daemon:
    daemon = Daemon(str(tmp), {"DB_URL": "memory://", "MQ_URL": "memory://", "DOCKER_NETWORK": network,
                               "API_AUTH": "none", **(env or {})})
    # On every address, so that the test can show that no address of the host answers.
    daemon.env["LISTEN"] = f"tcp:{daemon.port}:interface=0.0.0.0"
    return daemon


class Setup:
    """One guarded network with its daemon and probe route."""

    def __init__(self, network: str, daemon: Daemon, guard: NetworkGuard, host: Listener) -> None:
        self.network = network
        self.daemon = daemon
        self.guard = guard
        self.host = host
        info = docker.APIClient(version="1.41").inspect_network(network)
        self.gateway = info["IPAM"]["Config"][0]["Gateway"]
        self.target_ip = ""
        self.target_name = ""

    def probe(self, *lines: str) -> dict[str, str]:
        """Run the probe function; {"kind host port": what it got} for each line."""
        reply = self.daemon.post("/r/net/probe", "\n".join(lines) + "\n", timeout=60)
        assert reply.status == 200, reply.body
        results = {}
        for line in reply.body.decode().splitlines():
            *key, got = line.split(" ", 3) if not line.startswith("dns ") else line.split(" ", 2)
            results[" ".join(key)] = got
        return results

    def reaches(self, kind: str, host: str, port: int) -> str:
        return self.probe(f"{kind} {host} {port}")[f"{kind} {host} {port}"]

    def delete_rule(self, family: int, line: str) -> None:
        """Remove one of our rules (an ``-S`` line), as a firewall reload would."""
        binary = "iptables" if family == 4 else "ip6tables"
        sh(binary, "-w", "5", "-D", *line.split()[1:])


def start_setup(tmp: Any, test_images: dict[str, str], network: str, allow: str = "") -> Iterator[Setup]:  # noqa: F811
    api = docker.APIClient(version="1.41")
    guard = NetworkGuard(api, network, [net for net in allow.split(",") if net])
    host = Listener(b"host\n")
    daemon = guarded_daemon(tmp, network, {"FUNCTION_ALLOW_NETS": allow} if allow else {})
    target = f"ifn-target-{RUN}-{network[-1]}"
    try:
        daemon.start()
        daemon.add_route("net", "/probe", image_tag("netprobe"))
        setup = Setup(network, daemon, guard, host)
        sh("docker", "run", "-d", "--name", target, "--network", network, "--entrypoint", "/bin/busybox",
           image_tag("netprobe"), "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "echo", "target")
        setup.target_name = target
        setup.target_ip = api.inspect_container(target)["NetworkSettings"]["Networks"][network]["IPAddress"]
        yield setup
    finally:
        cleanup(
            host.close, daemon.stop, lambda: sh("docker", "rm", "-f", target, check=False),
            guard.remove, lambda: sh("docker", "network", "rm", network, check=False),
        )


@pytest.fixture(scope="module")
def guarded(test_images: dict[str, str], lan: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:  # noqa: F811
    """A daemon on its own guarded network, FUNCTION_ALLOW_NETS unset."""
    yield from start_setup(tmp_path_factory.mktemp("guarded"), test_images, f"ironfunctions-t{RUN}a")


@pytest.fixture(scope="module")
def allowing(test_images: dict[str, str], lan: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:  # noqa: F811
    """A daemon on another guarded network with FUNCTION_ALLOW_NETS=10.213.0.0/16."""
    yield from start_setup(tmp_path_factory.mktemp("allowing"), test_images, f"ironfunctions-t{RUN}b",
                           allow="10.213.0.0/16")


def test_network_is_made_as_a_bridge_with_inter_container_traffic_off(guarded: Setup) -> None:
    info = docker.APIClient(version="1.41").inspect_network(guarded.network)
    assert info["Driver"] == "bridge"
    assert info["Options"]["com.docker.network.bridge.enable_icc"] == "false"


def test_function_reaches_the_outside_and_docker_dns(guarded: Setup) -> None:
    got = guarded.probe(f"tcp {OUTSIDE} {LAN_PORT}", f"dns {guarded.target_name}")
    assert got == {f"tcp {OUTSIDE} {LAN_PORT}": "lan", f"dns {guarded.target_name}": "ok"}


def test_function_reaches_no_address_of_the_host(guarded: Setup) -> None:
    port, api = guarded.host.port, guarded.daemon.port
    got = guarded.probe(f"tcp {guarded.gateway} {port}", f"tcp {HOST_ADDR} {port}",
                        f"http {guarded.gateway} {api}", f"http {HOST_ADDR} {api}")
    assert set(got.values()) == {"FAIL"}, got


def test_function_reaches_no_private_or_link_local_address(guarded: Setup) -> None:
    got = guarded.probe(f"tcp {PRIVATE} {LAN_PORT}", f"tcp {METADATA} {LAN_PORT}")
    assert set(got.values()) == {"FAIL"}, got


def test_function_reaches_no_other_function_container(guarded: Setup) -> None:
    assert guarded.reaches("tcp", guarded.target_ip, 8080) == "FAIL"


def test_allow_nets_open_the_chosen_private_range_only(allowing: Setup) -> None:
    got = allowing.probe(f"tcp {PRIVATE} {LAN_PORT}", f"tcp {METADATA} {LAN_PORT}",
                         f"tcp {allowing.gateway} {allowing.host.port}", f"tcp {OUTSIDE} {LAN_PORT}")
    assert got == {f"tcp {PRIVATE} {LAN_PORT}": "lan", f"tcp {METADATA} {LAN_PORT}": "FAIL",
                   f"tcp {allowing.gateway} {allowing.host.port}": "FAIL", f"tcp {OUTSIDE} {LAN_PORT}": "lan"}


def test_each_rule_is_what_stops_its_target_and_the_recheck_puts_it_back(guarded: Setup) -> None:
    """Remove one of our rules (as a firewall reload would): what it guarded answers;
    the guard's re-check (what the daemon runs every 30 s) repairs it and it stops again."""
    chains = chain_names(guarded.network)
    plan = guarded.guard.plan()
    bridge = plan.bridge
    cases = [
        (f"-A INPUT -i {bridge} -j {chains.inbound}", f"tcp {guarded.gateway} {guarded.host.port}", "host"),
        (f"-A INPUT -i {bridge} -j {chains.inbound}", f"http {guarded.gateway} {guarded.daemon.port}",
         "HTTP/"),
        (f"-A {chains.forward} -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited",
         f"tcp {PRIVATE} {LAN_PORT}", "lan"),
        (f"-A {chains.forward} -d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited",
         f"tcp {METADATA} {LAN_PORT}", "lan"),
    ]
    assert guarded.guard.ensure() == []  # everything in place to begin with
    for rule, probe, answer in cases:
        guarded.delete_rule(4, rule)
        assert guarded.probe(probe)[probe].startswith(answer), rule
        repaired = guarded.guard.ensure()
        assert repaired, rule
        assert guarded.probe(probe)[probe] == "FAIL", rule
    # A flush of our chains is repaired too.
    sh("iptables", "-w", "5", "-F", chains.forward)
    sh("iptables", "-w", "5", "-F", chains.inbound)
    assert guarded.guard.ensure() == [f"ipv4 chain {chains.forward}", f"ipv4 chain {chains.inbound}"]
    assert guarded.guard.ensure() == []
    got = guarded.probe(f"tcp {guarded.gateway} {guarded.host.port}", f"tcp {PRIVATE} {LAN_PORT}",
                        f"tcp {OUTSIDE} {LAN_PORT}")
    assert list(got.values()) == ["FAIL", "FAIL", "lan"], got


def test_daemon_without_firewall_permission_stops_at_start_with_one_line(test_images: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """iptables failing (as for a daemon without CAP_NET_ADMIN) stops the daemon."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for name in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore"):
        path = fakebin / name
        path.write_text("#!/bin/sh\necho 'iptables v1.8.9 (nf_tables): Permission denied (you must be root)' >&2\n"
                        "exit 4\n")
        path.chmod(0o755)
    network = f"ironfunctions-t{RUN}c"
    daemon = guarded_daemon(tmp_path / "d", network, {"PATH": f"{fakebin}:{os.environ['PATH']}"})
    try:
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=60) == 2
        lines = [line for line in daemon.log().splitlines() if "grant the daemon" in line]
        assert len(lines) == 1 and "Permission denied" in lines[0] and "DOCKER_NETWORK" in lines[0], daemon.log()
    finally:
        cleanup(
            daemon.kill, NetworkGuard(docker.APIClient(version="1.41"), network).remove,
            lambda: sh("docker", "network", "rm", network, check=False),
        )


def test_daemons_sharing_the_rules_add_no_duplicates_and_leave_them_in_place_at_stop(guarded: Setup, tmp_path: Path) -> None:
    second = guarded_daemon(tmp_path, guarded.network)
    try:
        second.start()
        second.stop()  # SIGTERM: the rules stay
    finally:
        second.kill()
    assert guarded.guard.ensure() == []  # nothing removed at stop, nothing added twice
    # Several re-checks racing to repair the same loss: exactly one repairs it.
    chains = chain_names(guarded.network)
    bridge = guarded.guard.plan().bridge
    guarded.delete_rule(4, f"-A INPUT -i {bridge} -j {chains.inbound}")
    sh("iptables", "-w", "5", "-F", chains.forward)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: guarded.guard.ensure(), range(4)))
    assert sorted(map(len, results)) == [0, 0, 0, 2], results
    jumps = [line for line in sh("iptables", "-w", "5", "-S", "INPUT").stdout.splitlines()
             if line.endswith(f"-j {chains.inbound}")]
    assert jumps == [f"-A INPUT -i {bridge} -j {chains.inbound}"]
