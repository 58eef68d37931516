"""Hardening of function containers (issue 11, SPEC §8) as planned, purely: what every
``ContainerSpec`` asks of the engine, cold and hot, and that the runners hand the
operator's ``FunctionPolicy`` down. What the engine makes of it is checked in a real
container by ``tests/functional/test_container_hardening.py``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.models import FUNCTION_CAPABILITIES, Call, CallRequest, ContainerSpec, Route
from ironfunctions.runner.admission import Slots
from ironfunctions.runner.agent import ColdRunner
from ironfunctions.runner.hot import HotRunner
from ironfunctions.runner.plan import FunctionPolicy, container_spec, cpu_shares
from ironfunctions.runner.protocol import hot_container_spec

from tests.fake_images import fake_driver
from tests.images import image_tag

NEVER = {"NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP", "AUDIT_WRITE", "SETPCAP", "SYS_ADMIN", "NET_ADMIN"}


def make_call(memory: int = 128, fmt: str = "default", image: str = image_tag("cat")) -> Call:
    route = Route(app_name="a", path="/p", image=image, memory=memory, format=fmt)
    return Call("C1", route, CallRequest(method="POST", url="http://h/r/a/p", body=b"in"))


def cold_and_hot(memory: int, policy: FunctionPolicy) -> list[ContainerSpec]:
    call = make_call(memory)
    return [
        container_spec(call, "node", policy=policy),
        hot_container_spec(call.route, {}, "node", policy=policy),
    ]


class PlanTests(SynchronousTestCase):
    def test_by_default_every_container_is_hardened_with_a_read_only_root_and_a_tmp_of_its_memory(self) -> None:
        for spec in cold_and_hot(256, FunctionPolicy()):
            assert spec.capabilities == FUNCTION_CAPABILITIES and not NEVER & set(spec.capabilities)
            assert spec.no_new_privileges and spec.pids_limit == 512 and spec.nofile == 1024
            assert (spec.read_only_rootfs, spec.tmpfs_mb, spec.user) == (True, 256, "")
            assert spec.memory_mb == 256 and spec.cpu_shares == 2048

    def test_a_writable_root_gets_no_tmpfs_and_the_user_is_the_policys(self) -> None:
        for spec in cold_and_hot(64, FunctionPolicy(read_only_rootfs=False, user="1000:1000")):
            assert (spec.read_only_rootfs, spec.tmpfs_mb, spec.user) == (False, 0, "1000:1000")
            assert spec.no_new_privileges and spec.capabilities == FUNCTION_CAPABILITIES

    def test_cpu_shares_are_1024_per_128_MiB_within_the_engines_bounds(self) -> None:
        assert [cpu_shares(m) for m in (128, 256, 64, 1024)] == [1024, 2048, 512, 8192]
        assert cpu_shares(0) == 2 and cpu_shares(10**9) == 262144


class RunnerTests(SynchronousTestCase):
    def test_the_cold_runner_plans_with_its_policy(self) -> None:
        clock = Clock()
        driver = fake_driver(clock)
        policy = FunctionPolicy(read_only_rootfs=False, user="1000:1000")
        runner = ColdRunner(driver, Slots(2, clock, 10, 10.0), clock, "node", policy=policy)
        d = Deferred.fromCoroutine(runner.run(make_call()))
        clock.advance(1)
        assert self.successResultOf(d).status == "success"
        assert (driver.started_specs[0].user, driver.started_specs[0].read_only_rootfs) == ("1000:1000", False)

    def test_the_hot_runner_plans_with_its_policy(self) -> None:
        """(The fake container only echoes: how the call ends does not matter here.)"""
        clock = Clock()
        driver = fake_driver(clock)
        policy = FunctionPolicy(user="2000:3000")
        runner = HotRunner(driver, Slots(2, clock, 10, 10.0), clock, "node", policy=policy)
        Deferred.fromCoroutine(runner.run(make_call(fmt="http"))).addErrback(lambda _: None)
        clock.advance(60)
        spec = driver.started_specs[0]
        assert (spec.user, spec.read_only_rootfs, spec.tmpfs_mb) == ("2000:3000", True, 128)
