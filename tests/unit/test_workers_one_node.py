"""A node of worker processes behaves as one node (issue 15), in its pure and
in-process parts: the budgets' shares (``workers/shares.py``), the parent's removal of
the node's containers (``workers/cleanup.py``, on a ``FakeDriver`` and a ``Clock``),
the function network's guard as the workers hear it (``workers/guard.py``) and a
deleted app's calls stopped in every worker (``runner/cancel.py``, ``workers/bus.py``).
The cancel relay itself runs the cancel bus contract (``tests/contracts``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.config import Config
from ironfunctions.drivers.fake import FakeDriver
from ironfunctions.drivers.netguard import GuardError
from ironfunctions.drivers.netguard_service import NetguardService, guarded_calls
from ironfunctions.errors import NotReady, QueueUnavailable
from ironfunctions.calls.interface import AppCallsEnder
from ironfunctions.calls.model import CallRecord
from ironfunctions.models import LABEL_NODE, LABEL_WORKER, Call, CallRequest, CallStatus, Route
from ironfunctions.runner.cancel import make_app_calls_ender, make_app_calls_stopper
from ironfunctions.runner.stderr_budget import PER_APP
from ironfunctions.workers.bus import CancelRelay, ParentCancelBus, app_ender
from ironfunctions.workers.wire import WorkerLinkError
from ironfunctions.workers.cleanup import NodeCleanupService, worker_socket_dir
from ironfunctions.workers.guard import GuardRelay, RemoteGuard
from ironfunctions.workers.shares import runs_singletons, share, worker_config
from ironfunctions.workers.signals import stop_once_on_signals
from tests.unit.test_netguard_service import ScriptedGuard
from tests.unit.test_worker_slots import LoopChannel, pair


def result_of(d: Deferred[Any]) -> Any:
    """What ``d`` fired with: its result, or its failure's exception."""
    out: list[Any] = []
    d.addCallbacks(out.append, lambda f: out.append(f.value))
    assert out, "the Deferred has not fired"
    return out[0]


# -- shares


@pytest.mark.parametrize("total,workers", [(0, 2), (1, 2), (7, 3), (64 * 1024 * 1024, 3), (PER_APP, 2), (5, 8)])
def test_shares_add_up_to_the_nodes_figure_and_differ_by_one_at_most(total: int, workers: int) -> None:
    parts = [share(total, workers, i) for i in range(workers)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1


def test_a_worker_applies_its_share_of_NUM_ASYNC_MAX_BUFFERED_and_MAX_SPOOLED() -> None:
    config = Config.from_sources({}, {"WORKERS": "2", "NUM_ASYNC": "5", "MAX_BUFFERED": "3", "MAX_SPOOLED": "11"},
                                 "/srv", 4, 4096)
    assert config.worker_processes == 2
    firsts, seconds = worker_config(config, 0), worker_config(config, 1)
    assert (firsts.num_async, firsts.max_buffered, firsts.max_spooled) == (3, 2, 6)
    assert (seconds.num_async, seconds.max_buffered, seconds.max_spooled) == (2, 1, 5)
    assert worker_config(attrs.evolve(config, workers=1), 0) == attrs.evolve(config, workers=1)


def test_the_nodes_singletons_run_in_a_single_process_or_worker_0_only() -> None:
    assert runs_singletons(None) and runs_singletons(0)
    assert not runs_singletons(1) and not runs_singletons(2)


# -- the parent's removal of the node's containers


def node_with_containers(tmp_path: Path) -> tuple[FakeDriver, dict[str, str], Path]:
    driver = FakeDriver(Clock())
    ids = {
        "single": driver.add_container({LABEL_NODE: "n1"}),  # a single-process run's
        "w0": driver.add_container({LABEL_NODE: "n1", LABEL_WORKER: "0"}),
        "w1": driver.add_container({LABEL_NODE: "n1", LABEL_WORKER: "1"}),
        "other": driver.add_container({LABEL_NODE: "n2", LABEL_WORKER: "1"}),
    }
    root = tmp_path / "hot-sockets"
    for index in (0, 1):
        (Path(worker_socket_dir(str(root), index)) / "c1").mkdir(parents=True)
    return driver, ids, root


def listed(driver: FakeDriver, **labels: str) -> list[str]:
    return sorted(result_of(Deferred.fromCoroutine(driver.list_containers(labels))))


def test_the_parent_removes_every_container_of_the_node_at_start_and_only_then_are_workers_started(
    tmp_path: Path,
) -> None:
    driver, ids, root = node_with_containers(tmp_path)
    cleanup = NodeCleanupService(driver, "n1", str(root), Clock())
    with capturedLogs() as events:
        cleanup.startService()
    assert result_of(cleanup.when_ready()) is None
    assert listed(driver, **{LABEL_NODE: "n1"}) == []
    assert listed(driver, **{LABEL_NODE: "n2"}) == [ids["other"]]
    assert not root.exists()
    assert [e["count"] for e in events if "previous run" in e["log_format"]] == [3]


def test_a_dead_workers_containers_and_socket_directory_go_and_its_siblings_stay(tmp_path: Path) -> None:
    driver, ids, root = node_with_containers(tmp_path)
    cleanup = NodeCleanupService(driver, "n1", str(root), Clock())
    assert result_of(cleanup.worker_gone(1)) is None
    assert listed(driver, **{LABEL_NODE: "n1"}) == sorted([ids["single"], ids["w0"]])
    assert listed(driver, **{LABEL_NODE: "n2"}) == [ids["other"]]  # the same index on another node
    assert os.listdir(worker_socket_dir(str(root), 0)) == ["c1"]
    assert not os.path.exists(worker_socket_dir(str(root), 1))


def test_at_stop_the_parent_removes_what_the_node_still_has(tmp_path: Path) -> None:
    driver, ids, root = node_with_containers(tmp_path)
    cleanup = NodeCleanupService(driver, "n1", str(tmp_path / "elsewhere"), Clock())
    cleanup.startService()
    late = driver.add_container({LABEL_NODE: "n1", LABEL_WORKER: "0"})
    assert listed(driver, **{LABEL_NODE: "n1"}) == [late]
    assert result_of(cleanup.stopService()) is None
    assert listed(driver, **{LABEL_NODE: "n1"}) == []


class HungDriver(FakeDriver):
    async def remove_containers(self, labels: Any) -> int:
        await Deferred()  # an engine that never answers
        return 0


@pytest.mark.parametrize("hung", [True, False], ids=["hung", "down"])
def test_an_engine_down_or_hung_at_start_delays_the_workers_by_the_timeout_at_most(
    hung: bool, tmp_path: Path,
) -> None:
    clock = Clock()
    driver = HungDriver(clock) if hung else FakeDriver(clock)
    driver.down = not hung
    cleanup = NodeCleanupService(driver, "n1", str(tmp_path), clock, timeout=30)
    with capturedLogs() as events:
        cleanup.startService()
        ready = cleanup.when_ready()
        clock.advance(30)
        assert result_of(ready) is None
        gone = cleanup.worker_gone(0)
        clock.advance(30)
        assert result_of(gone) is None
    assert [e for e in events if e["log_level"].name == "error" and "Could not remove" in e["log_format"]]


# -- the function network's guard


def guard_service(*results: list[str] | Exception) -> tuple[NetguardService, Clock]:
    clock = Clock()
    service = NetguardService(ScriptedGuard(*results), reactor=None, on_fatal=lambda line: None, clock=clock,
                              in_pool=maybeDeferred)
    return service, clock


def ping(guard: RemoteGuard) -> bool:
    """Whether the worker's ``/health`` ``network`` check passes."""
    return result_of(Deferred.fromCoroutine(guard.ping())) is None


def test_workers_hear_when_the_parents_rules_are_in_place_and_when_they_are_lost_again() -> None:
    service, clock = guard_service([], [], GuardError("iptables: reload dropped it"), [])
    relay = GuardRelay(service)
    worker_clock = Clock()
    workers = []
    for index in (0, 1):
        parent_end, worker_end = pair()
        workers.append(RemoteGuard(worker_end, worker_clock, "ironfunctions"))
        relay.attach(index, parent_end)
    assert [w.ready for w in workers] == [False, False]  # before the parent's first check
    service.startService()
    assert [w.ready for w in workers] == [True, True]
    clock.advance(30)
    clock.advance(30)  # the rules are gone and cannot be put back
    assert [w.ready for w in workers] == [False, False]
    assert not ping(workers[0])
    clock.advance(1)  # retried each second while not ready: repaired
    assert [w.ready for w in workers] == [True, True] and ping(workers[1])


def test_a_worker_started_later_hears_the_state_at_once() -> None:
    service, _ = guard_service([])
    relay = GuardRelay(service)
    service.startService()
    parent_end, worker_end = pair()
    late = RemoteGuard(worker_end, Clock(), "ironfunctions")
    relay.attach(3, parent_end)
    assert late.ready
    relay.detach(3)


def test_a_workers_calls_wait_for_the_parents_rules_then_run_or_fail_NotReady() -> None:
    parent_end, worker_end = pair()
    clock = Clock()
    guard = RemoteGuard(worker_end, clock, "ironfunctions")

    async def run(call: str) -> str:
        return f"ran {call}"

    guarded = guarded_calls(run, guard, wait=10)
    first = Deferred.fromCoroutine(guarded("a"))
    clock.advance(5)
    assert not first.called
    parent_end.notify("guard_ready", True)
    assert result_of(first) == "ran a"
    parent_end.notify("guard_ready", False)
    late = Deferred.fromCoroutine(guarded("b"))
    clock.advance(10)
    assert isinstance(result_of(late), NotReady)


# -- a deleted app's calls in every worker


def sync_call(call_id: str, app: str) -> Call:
    return Call(call_id, Route(app_name=app, path="/sleep", image="iftest/sleep:1"),
                CallRequest("POST", f"http://x/r/{app}/sleep"))


class Worker:
    """A worker's calls in flight and what it stopped."""

    def __init__(self, *calls: Call) -> None:
        self.calls = {c.id: c for c in calls}
        self.killed: list[str] = []

    async def kill(self, call_id: str) -> bool:
        if self.calls.pop(call_id, None) is None:
            return False
        self.killed.append(call_id)
        return True

    def running(self) -> list[Call]:
        return list(self.calls.values())


def ended(ender: AppCallsEnder, app_name: str) -> Deferred[None]:
    async def end() -> None:
        await ender(app_name)

    return Deferred.fromCoroutine(end())


def test_deleting_an_app_in_one_worker_stops_its_calls_in_flight_in_every_other() -> None:
    clock = Clock()
    relay = CancelRelay()
    workers = [Worker(sync_call("a1", "app")), Worker(sync_call("b1", "app"), sync_call("b2", "other")),
               Worker(sync_call("c1", "app"))]
    enders = []
    for index, worker in enumerate(workers):
        parent_end, worker_end = pair()
        relay.attach(index, parent_end)
        elsewhere = app_ender(worker_end, clock, make_app_calls_stopper(worker.kill, worker.running))
        enders.append(make_app_calls_ender(MemoryCallStore(), clock, kill_call=worker.kill,
                                           running_calls=worker.running, elsewhere=elsewhere))
    assert result_of(ended(enders[1], "app")) is None
    assert [w.killed for w in workers] == [["a1"], ["b1"], ["c1"]]
    assert workers[1].calls == {"b2": sync_call("b2", "other")}


def test_a_worker_that_cannot_reach_its_siblings_still_deletes_the_app_and_says_so() -> None:
    clock = Clock()
    worker = Worker(sync_call("a1", "app"))

    async def unreachable(app_name: str) -> None:
        raise TimeoutError()

    ender = make_app_calls_ender(MemoryCallStore(), clock, kill_call=worker.kill, running_calls=worker.running,
                                 elsewhere=unreachable)
    with capturedLogs() as events:
        assert result_of(ended(ender, "app")) is None
    assert worker.killed == ["a1"]
    assert [e for e in events if "other workers could not be stopped" in e["log_format"]]


def test_the_relay_waits_for_no_worker_that_is_gone() -> None:
    relay = CancelRelay()
    parent_end, worker_end = pair()
    relay.attach(0, parent_end)
    gone_parent, _ = pair()
    relay.attach(1, gone_parent)
    relay.detach(1)
    asked = worker_end.request("app_calls_end", "app")
    assert result_of(asked) == 0


# -- cancels between workers (the relay's behaviour as a bus: tests/contracts/test_cancelbus.py)


def test_a_cancel_of_a_call_running_in_this_worker_asks_no_sibling() -> None:
    parent_end, worker_end = pair()
    CancelRelay().attach(0, parent_end)
    bus = ParentCancelBus(worker_end, Clock())
    record = CallRecord(id="c1", app_name="app", path="/sleep", image="i", type="sync",
                        status=CallStatus.CANCELLED, created_at=1)
    bus.on_cancel(lambda app, call_id: record if call_id == "c1" else None)
    assert result_of(Deferred.fromCoroutine(bus.publish("app", "c1", wait=1))) == record
    assert worker_end.sent == []
    assert result_of(Deferred.fromCoroutine(bus.publish("app", "c2", wait=1))) is None
    assert worker_end.sent == [("bus_publish", "app", "c2")]


class GoneLink(LoopChannel):
    def request(self, kind: str, *args: Any) -> Deferred[Any]:
        raise WorkerLinkError("the link to the node's parent process is gone")


def test_a_cancel_that_cannot_reach_the_parent_is_QueueUnavailable() -> None:
    bus = ParentCancelBus(GoneLink(), Clock())
    assert isinstance(result_of(Deferred.fromCoroutine(bus.publish("app", "c1", wait=1))), QueueUnavailable)


# -- a worker's signals


class SignalledReactor:
    """What ``stop_once_on_signals`` needs of a reactor: triggers, callFromThread, stop."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []
        self.stops = 0

    def addSystemEventTrigger(self, phase: str, event: str, fn: Any, *args: Any) -> None:  # noqa: N802
        self.triggers.append((phase, event, fn))

    def callFromThread(self, fn: Any, *args: Any) -> None:  # noqa: N802
        fn(*args)

    def stop(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


def test_a_worker_stops_on_its_first_SIGTERM_and_a_second_one_is_no_error() -> None:
    reactor = SignalledReactor()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop_once_on_signals(reactor)
    assert [(phase, event) for phase, event, _ in reactor.triggers] == [("after", "startup")]
    try:
        reactor.triggers[0][2]()  # the reactor has started: the worker's handlers go in
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and signal.getsignal(signal.SIGINT) is handler
        with capturedLogs() as events:
            handler(signal.SIGTERM, None)  # from the parent
            handler(signal.SIGTERM, None)  # and from systemd's KillMode=control-group
            handler(signal.SIGINT, None)
        assert reactor.stops == 3  # each asked; the repeats are no error
        assert [e["signal"] for e in events if "signal" in e] == ["SIGTERM"]
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
