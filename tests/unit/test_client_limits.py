"""The pure parts of the client bounds: deadlines, the body budget, the connection
cap's formula and its alarm (SPEC §8, issue 13)."""

from __future__ import annotations

import resource

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.web.resource import Resource

from ironfunctions.http.budget import BodyBudget
from ironfunctions.http.conncap import CapAlarm, connection_cap, raise_file_limit
from ironfunctions.http.deadlines import ClientLimits, Deadline, Verdict
from ironfunctions.http.refusal import HEALTH_ROOM, MAX_REFUSING
from ironfunctions.http.site import make_site
from ironfunctions.runner.invoker import Invoker

LIMITS = ClientLimits(header_timeout=20, idle_timeout=60, body_min_rate=1000, window=10)


def test_a_head_is_due_within_the_header_timeout_of_its_first_byte() -> None:
    deadline = Deadline(0)
    assert deadline.check(19.9, LIMITS) is None
    deadline.head(5)  # the first byte, 5 s after the connection
    assert deadline.check(24.9, LIMITS) is None
    assert deadline.check(25, LIMITS) is Verdict.HEAD_TIMEOUT


def test_a_new_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    assert Deadline(0).check(20, LIMITS) is Verdict.CLOSE


def test_a_body_must_average_the_minimum_rate_over_each_window() -> None:
    deadline = Deadline(0)
    deadline.body(0)
    deadline.window_bytes = 10_000
    assert deadline.check(10, LIMITS) is None  # 1000 B/s: enough; a new window starts
    deadline.window_bytes = 9_999
    assert deadline.check(19.9, LIMITS) is None  # the window is not over yet
    assert deadline.check(20, LIMITS) is Verdict.BODY_TOO_SLOW


def test_no_minimum_rate_when_it_is_zero() -> None:
    deadline = Deadline(0)
    deadline.body(0)
    assert deadline.check(1000, ClientLimits(body_min_rate=0)) is None


def test_answering_has_no_client_bound_and_idle_has_the_idle_timeout() -> None:
    deadline = Deadline(0)
    deadline.busy()
    assert deadline.check(10**6, LIMITS) is None
    deadline.idle(100)
    assert deadline.check(159, LIMITS) is None and deadline.check(160, LIMITS) is Verdict.CLOSE


def test_a_close_that_does_not_complete_is_aborted() -> None:
    deadline = Deadline(0)
    deadline.closing(0)
    assert deadline.check(14, LIMITS) is None and deadline.check(15, LIMITS) is Verdict.ABORT


def test_the_budget_holds_bodies_in_memory_then_on_disk_then_refuses() -> None:
    budget = BodyBudget(max_buffered=100, max_spooled=1000)
    assert budget.take_memory(60) and not budget.take_memory(41) and budget.take_memory(40)
    assert budget.take_disk(1000) and not budget.take_disk(1)
    budget.release_memory(60)
    budget.release_disk(1000)
    assert (budget.in_memory, budget.on_disk) == (40, 0)
    assert budget.take_memory(60) and budget.take_disk(1)


def test_the_cap_keeps_a_reserve_for_containers_and_backends_of_at_most_half_the_limit() -> None:
    assert connection_cap(1024, 16) == 1024 - (64 + 4 * 16)
    assert connection_cap(128, 100) == 64
    assert connection_cap(65536, 100) == 65536 - 464
    # The reserve holds the connections beyond the cap that are refused or checked.
    assert 64 >= HEALTH_ROOM + MAX_REFUSING + 16


def test_an_unlimited_soft_limit_is_not_read_as_minus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's RLIM_INFINITY is -1: taken as a number, the cap would be 1 connection."""
    infinity = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda which: (infinity, infinity))
    before, after = raise_file_limit()
    assert before == after and after > 1000
    assert connection_cap(after, 64) > 1000


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        before, after = raise_file_limit()
        assert before == lower
        assert after == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert after == (hard if hard != resource.RLIM_INFINITY else after) and after >= lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_cap_alarm_says_once_that_it_starts_then_counts_at_most_once_a_minute() -> None:
    alarm = CapAlarm(interval=60)
    assert alarm.refused(0) is True
    assert not any(alarm.refused(t) for t in range(1, 50))
    assert alarm.report(30) is None
    assert alarm.report(60) == ("still", 50)
    assert alarm.refused(61) is False
    assert alarm.report(120) == ("still", 1)
    assert alarm.report(180) == ("over", 0)
    assert alarm.report(240) is None and alarm.refused(250) is True
    assert alarm.total == 52


def test_the_site_logs_the_cap_once_when_it_is_hit_not_per_refusal() -> None:
    async def never(*args: object) -> object:
        raise AssertionError("no call")

    clock = Clock()
    invoker = Invoker(never, never, never, lambda: "x", clock=clock)  # type: ignore[arg-type]
    site = make_site(Resource(), 1000, invoker=invoker, clock=clock, max_connections=0)
    with capturedLogs() as events:
        for _ in range(50):
            site.refused()
        for now in range(1, 62):
            site.tick(now)  # the watchdog's tick, once a second
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2 and "cap reached" in warnings[0]["log_format"]
    assert warnings[1]["refused"] == 50

