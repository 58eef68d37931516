"""Outage-style warnings: a line when a failure starts, a count a minute, a line at the end."""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs

from ironfunctions.ratelimit import ENDED, ONGOING, STARTED, Outage, OutageLog, Report


def test_first_failure_is_reported_then_silence_within_the_interval() -> None:
    outage = Outage(interval=60)
    assert outage.failed(100.0) == Report(STARTED, 1, 1, 0)
    assert [outage.failed(100.0 + n * 0.2) for n in range(1, 200)] == [None] * 199
    assert outage.ongoing


def test_a_count_at_most_once_per_interval_while_it_goes_on() -> None:
    outage = Outage(interval=60)
    reports = [outage.failed(n * 0.2) for n in range(0, 5 * 60 * 5 + 1)]  # 5 minutes, every 0.2 s
    said = [r for r in reports if r is not None]
    assert [r.kind for r in said] == [STARTED] + [ONGOING] * 5
    assert said[1] == Report(ONGOING, 300, 301, 60)  # the failures since the start line
    assert sum(r.failures for r in said) == len(reports)


def test_recovery_ends_the_outage_with_totals_and_a_new_one_starts_afresh() -> None:
    outage = Outage(interval=60)
    assert outage.recovered(1.0) is None  # no outage: nothing to say
    outage.failed(10.0)
    outage.failed(20.0)
    outage.failed(30.0)
    assert outage.recovered(42.5) == Report(ENDED, 2, 3, 32)
    assert not outage.ongoing and outage.recovered(43.0) is None
    assert outage.failed(50.0) == Report(STARTED, 1, 1, 0)


def test_outage_log_logs_three_lines_for_a_long_outage() -> None:
    clock = Clock()
    lines = OutageLog(Logger(), clock, started="down: {error}", ongoing="still down: {failures} failures",
                      ended="back after {seconds}s, {total} failures")
    with capturedLogs() as events:
        for _ in range(5 * 90):  # 90 s of retries every 0.2 s
            lines.failed(error="refused")
            clock.advance(0.2)
        lines.recovered()
        lines.recovered()
    assert [(e["log_level"], e["outage"]) for e in events] == [
        (LogLevel.warn, STARTED), (LogLevel.warn, ONGOING), (LogLevel.info, ENDED)]
    assert events[0]["error"] == "refused"
    assert (events[2]["total"], events[2]["seconds"]) == (450, 90)
