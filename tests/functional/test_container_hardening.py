"""Function containers are hardened (issue 11, SPEC §8), seen from inside real
containers: the probe function ``iftest/probe:1`` (``tests/images/probe/run.sh``)
reports its privileges, limits and which places take a new file."""

from __future__ import annotations

import os

import pytest

from ironfunctions.models import FUNCTION_CAPABILITIES
from tests.daemon import Daemon, DaemonFactory
from tests.images import IMAGES_DIR, bridge_binary, build_image, image_tag, test_images  # noqa: F401 (fixtures)

# Bits of /proc/self/status's capability masks (linux/capability.h).
CAP_BITS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
    "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27,
    "AUDIT_WRITE": 29, "SETFCAP": 31,
}
NEVER = ("NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP", "AUDIT_WRITE")


def mask(names: tuple[str, ...]) -> int:
    return sum(1 << CAP_BITS[name] for name in names)


def probe(daemon: Daemon, path: str = "/probe") -> dict[str, str]:
    """Call the probe route ``path`` of app ``h``; its report as a dict."""
    reply = daemon.post(f"/r/h{path}", "")
    assert reply.status == 200, (reply.body, daemon.log()[-3000:])
    return dict(line.split("=", 1) for line in reply.body.decode().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def nonroot_probe(test_images: dict[str, str]) -> str:  # noqa: F811
    """``iftest/probe-nonroot:1``: the probe in an image whose ``USER`` is 1000:1000."""
    return build_image(image_tag("probe-nonroot"), os.path.join(IMAGES_DIR, "Dockerfile.nonroot"),
                       [os.path.join(IMAGES_DIR, "probe", "run.sh")])


def test_a_cold_function_runs_with_few_capabilities_no_new_privileges_and_limits(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    daemon = daemon_factory()
    daemon.add_route("h", "/probe", image_tag("probe"), memory=256)
    report = probe(daemon)
    assert report["NoNewPrivs"] == "1"
    assert int(report["CapEff"], 16) & mask(NEVER) == 0
    assert int(report["CapBnd"], 16) == mask(FUNCTION_CAPABILITIES)
    assert report["uid"] == "0"  # the image's own user
    assert report["nofile"] == "1024" and report["pids_max"] == "512"
    assert report["cpu_shares"] == "2048"  # 1024 per 128 MiB
    assert report["memory"] == report["memory_swap"] == str(256 * 1024 * 1024)  # no swap beyond it


def test_the_root_is_read_only_and_tmp_writable_by_default_within_the_memory_limit(
    test_images: dict[str, str], daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory()
    daemon.add_route("h", "/probe", image_tag("probe"), config={"TMP_FILL_MB": "16"})
    report = probe(daemon)
    assert (report["root_write"], report["tmp_write"]) == ("fail", "ok")
    assert int(report["tmp_charged"]) >= 12 * 1024 * 1024  # /tmp is no way around the memory limit


def test_FUNCTION_READONLY_ROOTFS_false_keeps_a_writable_root(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    daemon = daemon_factory(env={"FUNCTION_READONLY_ROOTFS": "false"})
    daemon.add_route("h", "/probe", image_tag("probe"))
    report = probe(daemon)
    assert report["root_write"] == "ok" and report["NoNewPrivs"] == "1"


def test_FUNCTION_USER_runs_functions_as_that_user(test_images: dict[str, str], daemon_factory: DaemonFactory) -> None:  # noqa: F811
    daemon = daemon_factory(env={"FUNCTION_USER": "1000:1000"})
    daemon.add_route("h", "/probe", image_tag("probe"))
    report = probe(daemon)
    assert (report["uid"], report["gid"]) == ("1000", "1000")
    assert int(report["CapEff"], 16) == 0 and report["tmp_write"] == "ok"


def test_on_the_socket_transport_the_socket_directory_is_read_only_and_its_host_parent_0700(
    test_images: dict[str, str], bridge_binary: str, daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"HOT_TRANSPORT": "socket"})
    daemon.add_route("h", "/probe", image_tag("probe"), format="http")
    report = probe(daemon)
    assert report["sock_write"] == "fail"
    assert report["NoNewPrivs"] == "1" and report["root_write"] == "fail"
    parent = os.path.join(daemon.workdir, "data", "hot-sockets")
    assert os.stat(parent).st_mode & 0o777 == 0o700
    [directory] = os.listdir(parent)
    if directory.startswith("w"):  # worker processes: hot-sockets/w<worker>/<container>/s
        parent = os.path.join(parent, directory)
        assert os.stat(parent).st_mode & 0o777 == 0o700
        [directory] = os.listdir(parent)
    assert os.listdir(os.path.join(parent, directory)) == ["s"]


def test_a_hot_function_with_a_non_root_USER_works_on_the_socket_transport(
    nonroot_probe: str, bridge_binary: str, daemon_factory: DaemonFactory,  # noqa: F811
) -> None:
    daemon = daemon_factory(env={"HOT_TRANSPORT": "socket"})
    daemon.add_route("h", "/probe", nonroot_probe, format="http")
    for _ in range(3):
        report = probe(daemon)
        assert (report["uid"], report["gid"], report["sock_write"]) == ("1000", "1000", "fail")
