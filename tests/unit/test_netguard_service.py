"""NetguardService on a Clock with a scripted guard: when it checks, what it logs, when
it stops the daemon (drivers/netguard.py). No threads, no commands."""

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ironfunctions.drivers.netguard import EngineUnavailable, GuardError
from ironfunctions.drivers.netguard_service import NetguardService


class ScriptedGuard:
    network = "ironfunctions"

    def __init__(self, *results: list[str] | Exception) -> None:
        self.results = list(results)
        self.calls = 0

    def ensure(self) -> list[str]:
        self.calls += 1
        result = self.results.pop(0) if self.results else []
        if isinstance(result, Exception):
            raise result
        return result


def make(guard: ScriptedGuard, docker_host: str = "") -> tuple[NetguardService, Clock, list[str]]:
    clock = Clock()
    fatal: list[str] = []
    service = NetguardService(guard, reactor=None, on_fatal=fatal.append, clock=clock,
                              docker_host=docker_host, in_pool=maybeDeferred)
    return service, clock, fatal


def test_rules_are_put_in_place_at_start_then_rechecked_every_30s_and_repairs_logged() -> None:
    guard = ScriptedGuard(["ipv4 chain IFN-ironfunctions"], [], ["ipv4 jump INPUT -> IFN-ironfunctions-IN"])
    service, clock, fatal = make(guard)
    with capturedLogs() as events:
        service.startService()
        assert guard.calls == 1 and service.ready
        clock.advance(29)
        assert guard.calls == 1
        clock.advance(1)
        assert guard.calls == 2
        clock.advance(30)
        assert guard.calls == 3
    repairs = [e for e in events if "repaired" in e]
    # The first put-in-place is no repair; the later one is, with what was repaired.
    assert [e["repaired"] for e in repairs] == ["ipv4 jump INPUT -> IFN-ironfunctions-IN"]
    assert fatal == []


def test_health_fails_until_the_rules_are_in_place_while_the_engine_is_retried_each_second() -> None:
    guard = ScriptedGuard(EngineUnavailable("connection refused"), [])
    service, clock, fatal = make(guard)
    service.startService()
    assert isinstance(ping(service), RuntimeError)
    clock.advance(1)
    assert guard.calls == 2 and service.ready and fatal == []
    assert ping(service) is None


def ping(service: NetguardService) -> BaseException | None:
    """What ``service.ping()`` ended with: None, or its exception."""
    outcome: list[BaseException | None] = []
    d = Deferred.fromCoroutine(service.ping())
    d.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    return outcome[0]


def test_no_permission_at_start_stops_the_daemon_with_one_line_saying_what_to_do() -> None:
    service, clock, fatal = make(ScriptedGuard(GuardError("iptables -w 5 -S DOCKER-USER: Permission denied")))
    service.startService()
    assert len(fatal) == 1
    assert "Permission denied" in fatal[0] and "grant" in fatal[0] and "choose DOCKER_NETWORK" in fatal[0]
    clock.advance(60)
    assert len(fatal) == 1  # the loop stopped


def test_a_failure_after_start_is_logged_and_retried_not_fatal() -> None:
    guard = ScriptedGuard([], GuardError("iptables timed out"), [])
    service, clock, fatal = make(guard)
    with capturedLogs() as events:
        service.startService()
        clock.advance(30)
        clock.advance(30)
    assert fatal == [] and guard.calls == 3
    assert any(e.get("error") == "iptables timed out" for e in events)


def test_a_failed_repair_holds_calls_and_health_until_a_repair_works() -> None:
    """The rules may be gone and could not be put back: no function runs meanwhile."""
    guard = ScriptedGuard([], GuardError("iptables-restore: Permission denied"), [])
    service, clock, fatal = make(guard)
    service.startService()
    clock.advance(30)
    assert guard.calls == 2 and not service.ready and fatal == []
    assert isinstance(ping(service), RuntimeError)
    clock.advance(1)  # retried at once, not 30 s later
    assert guard.calls == 3 and service.ready and ping(service) is None
    for _ in range(60):
        clock.advance(1)
    assert guard.calls == 5  # back to a re-check every 30 s, not every second


def test_a_remote_docker_host_is_fatal_before_any_command() -> None:
    guard = ScriptedGuard()
    service, clock, fatal = make(guard, docker_host="tcp://10.0.0.5:2376")
    service.startService()
    assert guard.calls == 0 and len(fatal) == 1
    assert "DOCKER_HOST=tcp://10.0.0.5:2376" in fatal[0] and "choose DOCKER_NETWORK" in fatal[0]


def test_calls_wait_for_the_rules_and_give_up_with_NotReady() -> None:
    from ironfunctions.drivers.netguard_service import guarded_calls
    from ironfunctions.errors import NotReady

    ran: list[str] = []

    async def run_call(call: str) -> str:
        ran.append(call)
        return "result"

    guard = ScriptedGuard(*[EngineUnavailable("down")] * 20)
    service, clock, fatal = make(guard)
    service.startService()
    run = guarded_calls(run_call, service, wait=10.0)
    early, late = Deferred.fromCoroutine(run("a")), []
    clock.advance(10)
    early.addErrback(lambda f: late.append(f.value))
    assert isinstance(late[0], NotReady) and ran == []
    waiting = Deferred.fromCoroutine(run("b"))
    guard.results = []  # the engine answers: the next check puts the rules in place
    clock.advance(1)
    assert service.ready and ran == ["b"] and waiting.result == "result"
    assert guarded_calls(run_call, None) is run_call
