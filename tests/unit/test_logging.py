"""The logfmt observer: one line per event, fields kept, metrics in statsd-parsable form."""

import io

from twisted.logger import Logger, LogLevel, globalLogPublisher

from ironfunctions.logging import format_logfmt, logfmt_value, make_observer
from ironfunctions.metrics import LogMetrics


def test_values_are_quoted_only_when_needed() -> None:
    assert logfmt_value("plain") == "plain"
    assert logfmt_value("two words") == '"two words"'
    assert logfmt_value('q"uote\nline') == '"q\\"uote\\nline"'
    assert logfmt_value(12) == "12" and logfmt_value(True) == "true"
    assert logfmt_value("") == '""'


def test_event_line_has_time_level_msg_and_fields() -> None:
    line = format_logfmt({"log_format": "Ran {app}", "log_level": LogLevel.warn, "log_time": 0.5,
                          "app": "myapp", "call_id": "01ABC", "obj": object()})
    assert line == 'time=1970-01-01T00:00:00.500Z level=warn msg="Ran myapp" app=myapp call_id=01ABC'


def test_metric_events_print_metric_value_type_and_per_app_name() -> None:
    out = io.StringIO()
    observer = make_observer("info", out)
    globalLogPublisher.addObserver(observer)
    try:
        LogMetrics().count("run.requests", 1, app="myapp", call_id="X1")
        LogMetrics().timing("queue.wait_time", 12)
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "metric=run.requests value=1 type=count app=myapp call_id=X1" in lines[0]
    assert "metric=run.myapp.requests value=1 type=count" in lines[1]
    assert "metric=queue.wait_time value=12 type=time" in lines[2]
    assert all("msg=" not in line for line in lines)


def test_level_filter_drops_lower_levels() -> None:
    out = io.StringIO()
    observer = make_observer("warn", out)
    log = Logger(observer=observer)
    log.info("hidden")
    log.warn("shown {x}", x=1)
    log.error("also")
    assert [line.split("msg=")[1].split(" ")[0] for line in out.getvalue().splitlines()] == ['"shown', "also"]


def test_failures_stay_on_one_line() -> None:
    out = io.StringIO()
    log = Logger(observer=make_observer("info", out))
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("boom")
    text = out.getvalue()
    assert text.count("\n") == 1 and "ZeroDivisionError" in text


def test_a_metric_batch_prints_one_line_per_figure_in_one_write() -> None:
    out = io.StringIO()
    observer = make_observer("info", out)
    globalLogPublisher.addObserver(observer)
    try:
        LogMetrics().many([("count", "run.requests", 1), ("time", "run.exec_time", 7)], app="a", call_id="C")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "metric=run.requests value=1 type=count app=a call_id=C",
        "metric=run.a.requests value=1 type=count app=a call_id=C",
        "metric=run.exec_time value=7 type=time app=a call_id=C",
        "metric=run.a.exec_time value=7 type=time app=a call_id=C",
    ]


def test_with_a_clock_batches_are_coalesced_into_one_event() -> None:
    from twisted.internet.task import Clock

    out = io.StringIO()
    observer = make_observer("info", out)
    clock = Clock()
    metrics = LogMetrics(clock, coalesce=0.05)
    globalLogPublisher.addObserver(observer)
    try:
        metrics.many([("count", "run.requests", 1)], app="a", call_id="C1")
        metrics.many([("count", "run.requests", 1)], app="a", call_id="C2")
        assert out.getvalue() == ""
        clock.advance(0.05)
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "metric=run.requests value=1 type=count app=a call_id=C1",
        "metric=run.a.requests value=1 type=count app=a call_id=C1",
        "metric=run.requests value=1 type=count app=a call_id=C2",
        "metric=run.a.requests value=1 type=count app=a call_id=C2",
    ]


def test_values_need_quotes_for_each_unsafe_character_and_unprintable_text() -> None:
    for text in ["a b", "a=b", 'a"b', "a\\b", "a\x00b", "a\u2028b"]:
        assert logfmt_value(text).startswith('"'), text
    assert logfmt_value("ünï-01ABC/path.x") == "ünï-01ABC/path.x"

    class Name(str):
        def __str__(self) -> str:
            return "its str"

    assert logfmt_value(Name("x")) == '"its str"'


def test_rendered_metric_lines_each_get_time_and_level() -> None:
    head = "time=1970-01-01T00:00:00.500Z level=info "
    event = {"log_level": LogLevel.info, "log_time": 0.5, "log_format": "{count} metric lines"}
    assert format_logfmt({**event, "metric_lines": ["metric=a value=1 type=count", "metric=b value=2 type=time"],
                          "count": 2}) == f"{head}metric=a value=1 type=count\n{head}metric=b value=2 type=time"
    assert format_logfmt({**event, "metric_lines": [], "count": 0}) == ""


def test_every_control_character_is_escaped() -> None:
    # C0 (ESC, NUL, BEL...), DEL, C1 (NEL, CSI...), bidi controls, line and paragraph
    # separators: none may reach the log raw, each becomes a visible escape.
    cases = {
        "\x1b[31mred": '"\\x1b[31mred"',
        "a\x00b": '"a\\x00b"',
        "bell\x07": '"bell\\x07"',
        "del\x7f": '"del\\x7f"',
        "nel\x85csi\x9b": '"nel\\x85csi\\x9b"',
        "\u202eevil": '"\\u202eevil"',
        "\u202a\u202b\u202c\u202d": '"\\u202a\\u202b\\u202c\\u202d"',
        "\u2066\u2067\u2068\u2069": '"\\u2066\\u2067\\u2068\\u2069"',
        "\u200e\u200f\u061c": '"\\u200e\\u200f\\u061c"',
        "line\u2028para\u2029": '"line\\u2028para\\u2029"',
        "tab\tcr\rnl\n": '"tab\\tcr\\rnl\\n"',
        'q"b\\\x01': '"q\\"b\\\\\\x01"',
        "zero\u200bwidth\ufeff": '"zero\\u200bwidth\\ufeff"',
        "private\U000f0000": '"private\\U000f0000"',
    }
    for raw, escaped in cases.items():
        assert logfmt_value(raw) == escaped, raw
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A)]:
        value = logfmt_value(f"x{chr(code)}y")
        assert value.isascii() and value.isprintable(), hex(code)


def test_escaped_values_keep_the_line_whole() -> None:
    line = format_logfmt({"log_format": "function stderr", "log_time": 0.0,
                          "line": "a\x1b]0;title\x07\r\nforged=1\u2028b\x85"})
    assert line.isprintable() and line.isascii()
    assert line.endswith('line="a\\x1b]0;title\\x07\\r\\nforged=1\\u2028b\\x85"')
    # Printable text outside ASCII is kept as it is.
    assert logfmt_value("héllo wörld ✓") == '"héllo wörld ✓"'


def test_a_worker_process_names_itself_on_every_line_metrics_included() -> None:
    out = io.StringIO()
    observer = make_observer("info", out, worker=1)
    globalLogPublisher.addObserver(observer)
    try:
        Logger(observer=observer).info("ready")
        LogMetrics().count("run.requests", 1, app="myapp")
        LogMetrics().many([("count", "run.requests", 1), ("time", "run.wait_time", 3)], app="myapp")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 5
    assert all(" level=info worker=1 " in line for line in lines), lines
