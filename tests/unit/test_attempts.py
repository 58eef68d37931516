"""The attempt accounting of async calls (SPEC §10), pure: record in, decision out."""

from __future__ import annotations

from typing import Any

import attrs

from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CallStatus
from ironfunctions.runner.attempts import (
    PLATFORM_RETRY_CAP_S,
    AttemptPolicy,
    GiveUp,
    Run,
    Skip,
    on_delivery,
    platform_delay,
    retries_after_failure,
    retry_delay,
)

POLICY = AttemptPolicy(max_attempts=3, retry_base=1.0, max_age=3600.0)
CREATED = 1_700_000_000_000
NOW = CREATED + 5_000


def record(**kw: Any) -> CallRecord:
    return attrs.evolve(CallRecord(id="c1", app_name="a", path="/p", type="async", created_at=CREATED), **kw)


def test_a_fresh_call_runs_attempt_1() -> None:
    assert on_delivery(record(), NOW, POLICY) == Run(1, 0)


def test_after_a_function_failure_the_next_attempt_runs() -> None:
    assert on_delivery(record(reason="retry", attempt=1), NOW, POLICY) == Run(2, 0)
    assert on_delivery(record(reason="retry", attempt=2), NOW, POLICY) == Run(3, 0)


def test_after_a_platform_failure_the_same_attempt_runs_again() -> None:
    assert on_delivery(record(reason="platform_retry", attempt=1), NOW, POLICY) == Run(1, 0)
    assert on_delivery(record(reason="platform_retry", attempt=2), NOW, POLICY) == Run(2, 0)
    # Any number of them: only the age bounds them.
    assert on_delivery(record(reason="platform_retry", attempt=2), NOW + 3_000_000, POLICY) == Run(2, 0)


def test_a_delivery_finding_the_record_running_counts_a_lost_node_not_an_attempt() -> None:
    assert on_delivery(record(status=CallStatus.RUNNING, attempt=2), NOW, POLICY) == Run(2, 1)
    assert on_delivery(record(status=CallStatus.RUNNING, attempt=2, lost=1), NOW, POLICY) == Run(2, 2)


def test_the_third_lost_node_ends_the_call_node_lost() -> None:
    decision = on_delivery(record(status=CallStatus.RUNNING, lost=2), NOW, POLICY)
    assert isinstance(decision, GiveUp) and (decision.reason, decision.lost) == ("node_lost", 3)


def test_losses_are_kept_across_platform_and_function_retries() -> None:
    assert on_delivery(record(reason="retry", attempt=1, lost=2), NOW, POLICY) == Run(2, 2)


def test_a_call_older_than_max_age_expires_unrun() -> None:
    at_age = CREATED + 3_600_000
    assert on_delivery(record(reason="platform_retry"), at_age - 1, POLICY) == Run(1, 0)
    decision = on_delivery(record(reason="platform_retry"), at_age, POLICY)
    assert isinstance(decision, GiveUp) and decision.reason == "expired"
    running = on_delivery(record(status=CallStatus.RUNNING), at_age, POLICY)
    assert isinstance(running, GiveUp) and (running.reason, running.lost) == ("expired", 1)


def test_ended_calls_are_skipped() -> None:
    for status in (CallStatus.SUCCESS, CallStatus.ERROR, CallStatus.TIMEOUT, CallStatus.CANCELLED):
        assert on_delivery(record(status=status), NOW + 10**12, POLICY) == Skip()


def test_only_the_last_attempt_failing_gives_up() -> None:
    assert [retries_after_failure(n, POLICY) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_function_retries_double() -> None:
    assert [retry_delay(1.0, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_platform_retries_double_up_to_a_minute() -> None:
    assert [platform_delay(1.0, n) for n in (1, 2, 3, 6, 7, 8, 100)] == [1, 2, 4, 32, 60, 60, 60]
    assert PLATFORM_RETRY_CAP_S == 60.0
    assert platform_delay(0, 1) > 0  # never a hot loop against a backend that is down
