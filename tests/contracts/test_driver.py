"""The container driver contract, run against every provider.

``fake``: ``FakeDriver`` with behaviours mimicking the test images (unit speed).
``docker``: ``DockerDriver`` against the real engine with the test images built
locally FROM scratch (the engine is started if needed; if it cannot start, these tests
fail, they are never skipped).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import pytest
import pytest_twisted
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ironfunctions.drivers.interface import IContainerDriver, IContainerStream
from ironfunctions.errors import ImageNotFound
from ironfunctions.models import LABEL_CALL, LABEL_NODE, ContainerSpec

from tests.fake_images import fake_driver
from tests.images import bridge_binary, image_tag, test_images  # noqa: F401  (session fixtures)

if TYPE_CHECKING:
    from ironfunctions.drivers.docker import DockerDriver
    from ironfunctions.drivers.fake import FakeDriver


@pytest.fixture(params=["fake", "docker"])
def driver(request: pytest.FixtureRequest) -> Iterator[FakeDriver | DockerDriver]:
    """A started driver of every kind."""
    from twisted.internet import reactor

    if request.param == "fake":
        d: FakeDriver | DockerDriver = fake_driver(reactor)
    else:
        from ironfunctions.drivers.docker import DockerDriver

        request.getfixturevalue("test_images")
        d = DockerDriver(reactor, max_concurrency=8)
    d.startService()
    yield d
    pytest_twisted.blockon(defer.maybeDeferred(d.stopService))


@pytest.fixture(params=["fake-attach", "fake-socket", "docker-attach", "docker-socket"])
def attached_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeDriver | DockerDriver]:
    """A started driver of every kind, with each hot transport."""
    from twisted.internet import reactor

    kind, transport = request.param.split("-")
    if kind == "fake":
        d: FakeDriver | DockerDriver = fake_driver(reactor, hot_transport=transport)
    else:
        from ironfunctions import bridge
        from ironfunctions.drivers.docker import DockerDriver

        request.getfixturevalue("test_images")
        if transport == "socket":
            request.getfixturevalue("bridge_binary")
        d = DockerDriver(reactor, max_concurrency=8, hot_transport=transport,
                         socket_dir=str(tmp_path / "hot-sockets"), bridge_binary=bridge.BINARY)
    d.startService()
    yield d
    pytest_twisted.blockon(defer.maybeDeferred(d.stopService))
    assert d.socket_paths() == []


@pytest.fixture
def node() -> str:
    """A node id unique to the test, so label queries see only its containers."""
    return "test-" + uuid.uuid4().hex[:12]


def spec(node: str, name: str, **kw: Any) -> ContainerSpec:
    labels = {LABEL_NODE: node, LABEL_CALL: uuid.uuid4().hex}
    kw.setdefault("network_mode", "none")
    kw.setdefault("timeout_s", 20)
    return ContainerSpec(image=image_tag(name), labels=labels, **kw)


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds)


async def eventually_no_containers(driver: FakeDriver | DockerDriver, labels: Mapping[str, str], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while await driver.list_containers(labels):
        assert time.monotonic() < deadline, "containers still there"
        await sleep(0.05)


def test_provides_the_interface(driver: FakeDriver | DockerDriver) -> None:
    assert verifyObject(IContainerDriver, driver)


@pytest_twisted.ensureDeferred
async def test_ping_answers(driver: FakeDriver | DockerDriver) -> None:
    await driver.ping()


@pytest_twisted.ensureDeferred
async def test_run_feeds_stdin_and_returns_stdout_then_removes_the_container(driver: FakeDriver | DockerDriver, node: str) -> None:
    s = spec(node, "cat", stdin=b'{"name":"x"}\n')
    result = await driver.run(s)
    assert (result.exit_code, result.stdout, result.timed_out, result.oom_killed) == (
        0, b'{"name":"x"}\n', False, False)
    assert result.start_ms >= 0 and result.run_ms >= 0
    await eventually_no_containers(driver, {LABEL_NODE: node})


@pytest_twisted.ensureDeferred
async def test_run_with_large_stdin_echoes_it_all(driver: FakeDriver | DockerDriver, node: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    result = await driver.run(spec(node, "cat", stdin=data))
    assert result.exit_code == 0
    assert result.stdout == data


@pytest_twisted.ensureDeferred
async def test_run_passes_the_environment(driver: FakeDriver | DockerDriver, node: str) -> None:
    env = {"CALL_ID": "abc", "APP_NAME": "myapp", "WITH_SPACE": "a b, c=d"}
    result = await driver.run(spec(node, "echo-env", env=env))
    lines = result.stdout.decode().splitlines()
    for k, v in env.items():
        assert f"{k}={v}" in lines


@pytest_twisted.ensureDeferred
async def test_run_reports_exit_code_and_keeps_stderr_apart(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "exit-code", env={"EXIT_CODE": "7"}))
    assert result.exit_code == 7
    assert result.stdout == b"about to exit\n"
    assert result.stderr == b"exiting with 7\n"
    assert not result.oom_killed


@pytest_twisted.ensureDeferred
async def test_run_collects_stderr_lines(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "stderr-chatter", env={"LINES": "5"}))
    assert result.stdout == b"ok\n"
    assert result.stderr.decode().splitlines() == [f"chatter line {i}" for i in range(1, 6)]


@pytest_twisted.ensureDeferred
async def test_stderr_beyond_its_limit_is_counted_not_kept(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "stderr-chatter", env={"LINES": "100"}, stderr_limit=100))
    written = "".join(f"chatter line {i}\n" for i in range(1, 101)).encode()
    assert result.stdout == b"ok\n"
    assert result.stderr == written[:100] and result.stderr_truncated
    assert (result.stderr_lost_bytes, result.stderr_lost_lines) == (len(written) - 100, written.count(b"\n", 100))


@pytest_twisted.ensureDeferred
async def test_timeout_kills_and_removes_the_container_before_returning(driver: FakeDriver | DockerDriver, node: str) -> None:
    labels = None
    s = spec(node, "sleep", env={"SLEEP": "30"}, timeout_s=1.0)
    labels = dict(s.labels)
    began = time.monotonic()
    result = await driver.run(s)
    elapsed = time.monotonic() - began
    assert result.timed_out
    assert 0.9 <= elapsed < 5
    assert 900 <= result.run_ms < 5000
    assert await driver.list_containers(labels) == []


@pytest_twisted.ensureDeferred
async def test_memory_limit_oom_kill_is_reported(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "oom", memory_mb=16, env={"OOM_MB": "64"}))
    assert result.oom_killed
    assert result.exit_code != 0
    assert not result.timed_out


@pytest_twisted.ensureDeferred
async def test_stdout_up_to_the_limit_is_returned_whole(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "big-output", env={"BYTES": "1048576"}, stdout_limit=1048576))
    assert result.exit_code == 0
    assert result.stdout == b"x" * 1048576
    assert not result.stdout_truncated


@pytest_twisted.ensureDeferred
async def test_stdout_over_the_limit_is_flagged(driver: FakeDriver | DockerDriver, node: str) -> None:
    result = await driver.run(spec(node, "big-output", env={"BYTES": "2000000"}, stdout_limit=100000))
    assert result.stdout_truncated
    assert len(result.stdout) <= 100000
    await eventually_no_containers(driver, {LABEL_NODE: node})


@pytest_twisted.ensureDeferred
async def test_missing_image_fails_fast_with_ImageNotFound(driver: FakeDriver | DockerDriver, node: str) -> None:
    began = time.monotonic()
    with pytest.raises(ImageNotFound) as info:
        await driver.run(ContainerSpec(image="iftest/does-not-exist:1", labels={LABEL_NODE: node}))
    assert str(info.value) == "Image not found: iftest/does-not-exist:1"
    with pytest.raises(ImageNotFound):
        await driver.ensure_image("iftest/does-not-exist:1")
    assert time.monotonic() - began < 15
    assert await driver.list_containers({LABEL_NODE: node}) == []


@pytest_twisted.ensureDeferred
async def test_ensure_image_accepts_a_local_image(driver: FakeDriver | DockerDriver) -> None:
    await driver.ensure_image(image_tag("cat"))


@pytest_twisted.ensureDeferred
async def test_containers_are_listed_and_removed_by_label(driver: FakeDriver | DockerDriver, node: str) -> None:
    other = node + "-other"
    running = defer.Deferred.fromCoroutine(driver.run(spec(node, "sleep", env={"SLEEP": "30"})))
    keep = defer.Deferred.fromCoroutine(driver.run(spec(other, "sleep", env={"SLEEP": "2"})))
    deadline = time.monotonic() + 10
    while not await driver.list_containers({LABEL_NODE: node}):
        assert time.monotonic() < deadline
        await sleep(0.05)
    assert await driver.remove_containers({LABEL_NODE: node}) == 1
    assert await driver.list_containers({LABEL_NODE: node}) == []
    result = await running  # ends promptly, killed
    assert result.exit_code != 0 and not result.timed_out
    assert (await keep).exit_code == 0  # another node's container was left alone


@pytest_twisted.ensureDeferred
async def test_remove_of_a_missing_container_is_not_an_error(driver: FakeDriver | DockerDriver) -> None:
    await driver.remove("0" * 64)


@pytest_twisted.ensureDeferred
async def test_concurrent_runs_all_complete(driver: FakeDriver | DockerDriver, node: str) -> None:
    runs = [
        defer.Deferred.fromCoroutine(driver.run(spec(node, "cat", stdin=str(i).encode())))
        for i in range(8)
    ]
    results = await defer.gatherResults(runs, consumeErrors=True)
    assert [r.stdout for r in results] == [str(i).encode() for i in range(8)]


@implementer(IContainerStream)
class Collector:
    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def stdout_received(self, data: bytes) -> None:
        self.stdout += data

    def stderr_received(self, data: bytes) -> None:
        self.stderr += data

    def stream_closed(self) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_attached_container_streams_stdin_and_stdout_on_the_reactor(attached_driver: FakeDriver | DockerDriver, node: str) -> None:
    from ironfunctions.drivers.interface import IAttachedContainer

    driver = attached_driver
    collector = Collector()
    attached = await driver.start_attached(spec(node, "cat"), collector)
    assert verifyObject(IAttachedContainer, attached)
    for chunk in (b"one\n", b"two\n"):
        attached.write(chunk)
    deadline = time.monotonic() + 10
    while collector.stdout != b"one\ntwo\n":
        assert time.monotonic() < deadline, collector.stdout
        await sleep(0.01)
    attached.close_stdin()
    await collector.closed
    await driver.remove(attached.container_id)
    assert await driver.list_containers({LABEL_NODE: node}) == []


@pytest_twisted.ensureDeferred
async def test_attached_container_keeps_stderr_apart_and_reports_its_exit(attached_driver: FakeDriver | DockerDriver, node: str) -> None:
    driver = attached_driver
    collector = Collector()
    attached = await driver.start_attached(spec(node, "stderr-chatter", env={"LINES": "2"}), collector)
    await collector.closed
    assert collector.stdout == b"ok\n"
    deadline = time.monotonic() + 5  # stderr may trail the end of the data stream
    while collector.stderr != b"chatter line 1\nchatter line 2\n":
        assert time.monotonic() < deadline, collector.stderr
        await sleep(0.01)
    await driver.remove(attached.container_id)
    assert driver.socket_paths() == []


@pytest_twisted.ensureDeferred
async def test_removing_a_running_attached_container_closes_its_stream(attached_driver: FakeDriver | DockerDriver, node: str) -> None:
    driver = attached_driver
    collector = Collector()
    attached = await driver.start_attached(spec(node, "cat"), collector)
    attached.write(b"x\n")
    deadline = time.monotonic() + 10
    while collector.stdout != b"x\n":
        assert time.monotonic() < deadline, collector.stdout
        await sleep(0.01)
    if driver.hot_transport == "socket":
        assert len(driver.socket_paths()) == 1
    await driver.remove(attached.container_id)
    await collector.closed
    assert driver.socket_paths() == []
    assert await driver.list_containers({LABEL_NODE: node}) == []


@pytest_twisted.ensureDeferred
async def test_an_invalid_image_reference_is_ImageNotFound(driver: FakeDriver | DockerDriver, node: str) -> None:
    """An image name the engine cannot parse is the route's mistake (502), not an
    engine outage (503)."""
    with pytest.raises(ImageNotFound):
        await driver.run(ContainerSpec(image="Bad/Ref:x:y", labels={LABEL_NODE: node}, network_mode="none"))


@pytest_twisted.ensureDeferred
async def test_probe_says_the_engine_is_up(driver: FakeDriver | DockerDriver) -> None:
    assert await driver.probe() is True


@pytest_twisted.ensureDeferred
async def test_concurrent_probes_share_one_answer(driver: FakeDriver | DockerDriver) -> None:
    answers = await defer.gatherResults([driver.probe() for _ in range(5)], consumeErrors=True)
    assert answers == [True] * 5


@pytest_twisted.ensureDeferred
async def test_docker_probe_of_a_hung_engine_is_down_and_frees_its_thread(tmp_path: Path) -> None:
    """An engine that accepts and never answers: the probe says down within its
    socket timeout, and the socket timeout (not only a Deferred timeout) ends the
    engine call, so the control pool's thread is free again: the hung engine sees
    the connection closed. Meanwhile, more probes start no second engine call."""
    import socket
    import threading

    from twisted.internet import reactor, threads

    from ironfunctions.drivers.docker import DockerDriver

    path = str(tmp_path / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    accepted: list[socket.socket] = []
    closed = threading.Event()

    def hold_connections() -> None:
        """Accept, read the request, never answer; note when the client gives up."""
        server.settimeout(10)
        conn, _ = server.accept()
        accepted.append(conn)
        conn.settimeout(10)
        while conn.recv(65536):
            pass
        closed.set()

    holder = threading.Thread(target=hold_connections, daemon=True)
    holder.start()
    d = DockerDriver(reactor, max_concurrency=1, base_url=f"unix://{path}", probe_timeout=1)
    d.startService()
    try:
        began = time.monotonic()
        first = d.probe()
        await sleep(0.3)
        second = d.probe()  # shares the first one's engine call
        assert (await first, await second) == (False, False)
        assert 0.9 <= time.monotonic() - began < 3
        assert await threads.deferToThread(closed.wait, 5), "the engine call still holds its socket"
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # no second engine call is waiting
    finally:
        await defer.maybeDeferred(d.stopService)
        server.close()
        for conn in accepted:
            conn.close()
