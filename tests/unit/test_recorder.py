"""CallRecorder: batched, off the request path, bounded, retried when the store is down."""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.calls.model import LOG_TRUNCATED_MARKER, CallQuery, CallRecord
from ironfunctions.calls.recorder import CallRecorder, record_size
from ironfunctions.errors import DatastoreUnavailable
from ironfunctions.metrics import MemoryMetrics
from tests.sync import run




class FlakyStore(MemoryCallStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.batches: list[int] = []

    async def put_calls(self, calls: list[CallRecord]) -> None:
        if self.down:
            raise DatastoreUnavailable()
        self.batches.append(len(calls))
        await super().put_calls(calls)


def make(**kw: Any) -> tuple[FlakyStore, Clock, MemoryMetrics, CallRecorder]:
    store, clock, metrics = FlakyStore(), Clock(), MemoryMetrics()
    recorder = CallRecorder(store, clock, metrics, interval=0.2, **kw)
    recorder.startService()
    return store, clock, metrics, recorder


def test_records_are_written_later_in_one_batch() -> None:
    store, clock, _, recorder = make()
    for n in range(10):
        recorder.record(CallRecord(id=f"c{n}", app_name="a", path="/p"), b"log %d" % n)
    assert store.batches == []  # nothing written on the request path
    clock.advance(0.2)
    assert store.batches == [10]
    assert run(store.get_log("a", "c3")) == b"log 3"


def test_store_down_keeps_records_until_it_is_back() -> None:
    store, clock, _, recorder = make()
    store.down = True
    recorder.record(CallRecord(id="c1", app_name="a", path="/p"))
    clock.advance(0.2)
    clock.advance(0.2)
    assert recorder.pending == 1
    store.down = False
    clock.advance(0.2)
    assert recorder.pending == 0 and run(store.get_call("a", "c1")).id == "c1"


def call(n: int) -> CallRecord:
    return CallRecord(id=f"c{n:04d}", app_name="a", path="/p")


RECORD = record_size(call(0))  # each of these records' size in the buffer


def test_buffer_is_bounded_and_drops_are_counted() -> None:
    store, clock, metrics, recorder = make(max_bytes=3 * RECORD)
    for n in range(5):
        recorder.record(CallRecord(id=f"c{n}", app_name="a", path="/p"))
    assert recorder.pending == 3 and metrics.total("calls.dropped") == 2


def test_logs_are_capped_with_a_marker() -> None:
    store, clock, _, recorder = make()
    recorder.record(CallRecord(id="c1", app_name="a", path="/p"), b"x" * (2 * 1024 * 1024))
    clock.advance(0.2)
    log = run(store.get_log("a", "c1"))
    assert log.endswith(LOG_TRUNCATED_MARKER) and len(log) < 1024 * 1024 + 100


def test_stop_flushes_what_is_pending() -> None:
    store, clock, _, recorder = make()
    recorder.record(CallRecord(id="c1", app_name="a", path="/p"))
    d = recorder.stopService()
    assert d.called and store.batches == [1]


def test_records_arriving_during_a_slow_write_are_neither_lost_nor_miscounted() -> None:
    """While a batch is being written, new records arrive: once the write succeeds,
    every record is written and nothing was counted as dropped (the batch in flight is
    out of the buffer, so it cannot be 'dropped' nor make others drop)."""
    from twisted.internet.defer import Deferred as D

    store, clock, metrics, recorder = make(max_batch=2, max_bytes=3 * RECORD)
    gate: D[None] = D()
    written: list[str] = []

    async def slow_put(calls: list[CallRecord]) -> None:
        written.extend(c.id for c in calls)
        await gate

    store.put_calls = slow_put  # type: ignore[method-assign]  # the test swaps in a slow write
    for n in range(3):
        recorder.record(CallRecord(id=f"c{n}", app_name="a", path="/p"))
    clock.advance(0.2)  # flush takes c0, c1 and waits
    recorder.record(CallRecord(id="c3", app_name="a", path="/p"))
    recorder.record(CallRecord(id="c4", app_name="a", path="/p"))
    gate.callback(None)
    clock.advance(0.2)
    assert written == ["c0", "c1", "c2", "c3", "c4"]
    assert metrics.total("calls.dropped") == 0


class GatedStore(MemoryCallStore):
    """Each write waits for ``open_gate()``, as a real store's round trip does."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gates: list[Deferred[None]] = []

    async def put_calls(self, calls: list[CallRecord]) -> None:
        self.batches.append(len(calls))
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        await gate
        await super().put_calls(calls)

    def open_gate(self) -> None:
        self.gates.pop(0).callback(None)


def test_records_arriving_during_a_write_wait_for_the_next_tick() -> None:
    """Under load a flush must not chase newcomers with a transaction every few calls."""
    store, clock = GatedStore(), Clock()
    recorder = CallRecorder(store, clock, MemoryMetrics(), interval=0.2, max_batch=4)
    recorder.startService()
    for n in range(6):
        recorder.record(CallRecord(id=f"c{n}", app_name="a", path="/p"))
    clock.advance(0.2)
    assert store.batches == [4]
    for n in range(6, 9):  # arrive while the first batch is being written
        recorder.record(CallRecord(id=f"c{n}", app_name="a", path="/p"))
    store.open_gate()
    assert store.batches == [4, 2]  # the rest of what was pending at the tick
    recorder.record(CallRecord(id="c9", app_name="a", path="/p"))
    store.open_gate()
    assert store.batches == [4, 2] and recorder.pending == 4  # newcomers wait
    clock.advance(0.2)
    assert store.batches == [4, 2, 4]
    store.open_gate()
    assert recorder.pending == 0
    assert sorted(c.id for c in run(store.list_calls(CallQuery("a", per_page=20))).calls) == [f"c{n}" for n in range(10)]


# -- A datastore outage: a buffer bounded in bytes, logs dropped first, quiet logging


def test_logs_are_dropped_oldest_first_before_any_record() -> None:
    store, clock, metrics, recorder = make(max_bytes=5 * RECORD + 200)
    store.down = True
    for n in range(5):
        recorder.record(call(n), b"x" * 100)
    assert recorder.pending == 5 and recorder.pending_bytes <= 5 * RECORD + 200
    assert (metrics.total("calls.logs_dropped"), metrics.total("calls.dropped")) == (3, 0)
    store.down = False
    clock.advance(0.2)
    assert recorder.pending == 0
    assert [run(store.get_call("a", call(n).id)).id for n in range(5)] == [call(n).id for n in range(5)]
    assert [run(store.get_log("a", call(n).id)) for n in range(5)] == [b""] * 3 + [b"x" * 100] * 2


def test_after_failed_writes_the_oldest_log_is_still_the_first_dropped() -> None:
    """A batch that could not be written goes back in front, and its logs with it."""
    store, clock, metrics, recorder = make(max_bytes=3 * RECORD + 250)
    store.down = True
    recorder.record(call(0), b"0" * 100)
    recorder.record(call(1), b"1" * 100)
    clock.advance(0.2)  # a failed write: both are taken out and put back
    clock.advance(0.2)
    recorder.record(call(2), b"2" * 100)  # over by 50 bytes: c0's log goes
    assert metrics.total("calls.logs_dropped") == 1
    store.down = False
    clock.advance(0.2)
    assert [run(store.get_log("a", call(n).id)) for n in range(3)] == [b"", b"1" * 100, b"2" * 100]
    assert sorted(c.id for c in run(store.list_calls(CallQuery("a", per_page=20))).calls) == [call(n).id for n in range(3)]


def test_a_long_outage_is_logged_in_a_few_lines_not_one_per_retry() -> None:
    store, clock, _, recorder = make()
    with capturedLogs() as events:
        store.down = True
        for n in range(3 * 60 * 5):  # 3 minutes of calls, a tick every 0.2 s
            recorder.record(call(n))
            clock.advance(0.2)
        store.down = False
        clock.advance(0.2)
    warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert [e.get("outage") for e in warnings] == ["started", "ongoing", "ongoing"]
    ended = [e for e in events if e.get("outage") == "ended"]
    assert len(ended) == 1 and ended[0]["total"] == 3 * 60 * 5
    assert recorder.pending == 0


def test_drops_are_logged_once_when_they_start_and_with_totals_when_the_store_is_back() -> None:
    store, clock, metrics, recorder = make(max_bytes=10 * RECORD)
    with capturedLogs() as events:
        store.down = True
        for n in range(1000):
            recorder.record(call(n), b"log")
        store.down = False
        clock.advance(0.2)
    warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert len(warnings) == 1 and "full" in warnings[0]["log_format"]
    ended = [e for e in events if "records_dropped" in e and e.get("outage") == "ended"]
    assert len(ended) == 1 and (ended[0]["logs_dropped"], ended[0]["records_dropped"]) == (1000, 990)
    assert metrics.total("calls.dropped") == 990 and recorder.pending == 0
