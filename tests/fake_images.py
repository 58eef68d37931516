"""``FakeDriver`` behaviours that mimic the test images of ``tests/images/``, so the
driver contract suite and the runner's unit tests see the same functions either way."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from ironfunctions.drivers.fake import Behaviour, FakeDriver, FakeRun, cat
from ironfunctions.models import ContainerSpec

from tests.images import image_tag


def _echo_env(spec: ContainerSpec) -> FakeRun:
    lines = sorted(f"{k}={v}" for k, v in spec.env.items())
    return FakeRun(stdout="".join(line + "\n" for line in lines).encode())


def _exit_code(spec: ContainerSpec) -> FakeRun:
    code = int(spec.env.get("EXIT_CODE", "3"))
    return FakeRun(exit_code=code, stdout=b"about to exit\n", stderr=f"exiting with {code}\n".encode())


def _sleep(spec: ContainerSpec) -> FakeRun:
    seconds = spec.env.get("SLEEP", "60")
    return FakeRun(
        duration=float(seconds), stdout=f"slept {seconds}\n".encode(),
        stderr=f"sleeping {seconds}\n".encode(),
    )


def _big_output(spec: ContainerSpec) -> FakeRun:
    size = int(spec.env.get("BYTES", "1048576"))
    if size > spec.stdout_limit:
        return FakeRun(exit_code=137, stdout=b"x" * (spec.stdout_limit + 1))
    return FakeRun(stdout=b"x" * size)


def _stderr_chatter(spec: ContainerSpec) -> FakeRun:
    lines = int(spec.env.get("LINES", "3"))
    err = "".join(f"chatter line {i}\n" for i in range(1, lines + 1))
    return FakeRun(stdout=b"ok\n", stderr=err.encode())


def _oom(spec: ContainerSpec) -> FakeRun:
    if spec.memory_mb < int(spec.env.get("OOM_MB", "512")):
        return FakeRun(exit_code=137, oom_killed=True)
    return FakeRun(stdout=b"survived\n")


def _hello(spec: ContainerSpec) -> FakeRun:
    import json

    try:
        name = json.loads(spec.stdin or b"{}").get("name") or "World"
    except ValueError:
        name = "World"
    return FakeRun(stdout=f"Hello {name}!\n".encode())


FAKE_IMAGES: dict[str, Behaviour] = {
    image_tag("echo-env"): _echo_env,
    image_tag("exit-code"): _exit_code,
    image_tag("sleep"): _sleep,
    image_tag("big-output"): _big_output,
    image_tag("stderr-chatter"): _stderr_chatter,
    image_tag("cat"): cat,
    image_tag("oom"): _oom,
    "iron/hello:latest": _hello,
}


def fake_driver(clock: IReactorTime, hot_transport: str = "attach") -> FakeDriver:
    """A ``FakeDriver`` that knows every test image."""
    return FakeDriver(clock, FAKE_IMAGES, hot_transport=hot_transport)
