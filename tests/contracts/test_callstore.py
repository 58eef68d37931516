"""The call store contract: every ICallStore provider behaves exactly like this.

Run against memory, SQLite and Postgres (the ``calls`` fixture in conftest.py is the call
store ``stores_from_url`` builds beside each kind of datastore)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, NoReturn, cast

import attrs
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallPage, CallRecord, CallQuery, decode_cursor
from ironfunctions.errors import CallCompleted, CallNotFound
from ironfunctions.models import CallStatus


def call(n: int, app: str = "a", **kw: Any) -> CallRecord:
    return CallRecord(id=f"call{n:04d}", app_name=app, path=kw.pop("path", "/p"), created_at=1_000 + n, **kw)


def test_provides_ICallStore(calls: ICallStore) -> None:
    assert verifyObject(ICallStore, calls)


@pytest_twisted.ensureDeferred
async def test_every_field_round_trips(calls: ICallStore) -> None:
    full = CallRecord(
        id="01JABCDEF", app_name="a", path="/deep/p", image="img:1", type="async", format="http",
        status=CallStatus.SUCCESS, reason="", created_at=1700000000123, started_at=1700000000200,
        completed_at=1700000000300, attempt=2, exit_code=0, error="", wait_ms=5, start_ms=170,
        run_ms=100, body=b"\x00result\xff", priority=2,
    )
    await calls.put_calls([full])
    assert await calls.get_call("a", "01JABCDEF") == full


@pytest_twisted.ensureDeferred
async def test_put_replaces_by_id(calls: ICallStore) -> None:
    await calls.put_calls([call(1)])
    await calls.put_calls([attrs.evolve(call(1), status=CallStatus.RUNNING, started_at=5)])
    got = await calls.get_call("a", "call0001")
    assert (got.status, got.started_at) == ("running", 5)


@pytest_twisted.ensureDeferred
async def test_a_large_batch_is_written_whole_and_in_order(calls: ICallStore) -> None:
    """A recorder's batch (here 345 records, and one id twice: the later one wins)."""
    batch = [call(n, status=CallStatus.SUCCESS, run_ms=n) for n in range(345)]
    batch.append(attrs.evolve(call(7), status=CallStatus.ERROR, run_ms=7000))
    await calls.put_calls(batch)
    seen: list[CallRecord]
    after: tuple[int, str] | None
    seen, after = [], None
    while True:
        page = await calls.list_calls(CallQuery("a", per_page=100, after=after))
        seen.extend(page.calls)
        if page.next_cursor is None:
            break
        after = decode_cursor(page.next_cursor)
    assert sorted(c.id for c in seen) == [f"call{n:04d}" for n in range(345)]
    assert all(c.run_ms == int(c.id[4:]) for c in seen if c.id != "call0007")
    got = await calls.get_call("a", "call0007")
    assert (got.status, got.run_ms) == ("error", 7000)


@pytest_twisted.ensureDeferred
async def test_a_large_batch_fits_an_old_sqlite_variable_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 allows 999 parameters a statement (not 32,766). (SQLite only:
    the others have no such limit.)"""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads

    from ironfunctions.calls.sqlite import SqliteCallStore
    from ironfunctions.datastore.sqlite import sqlite_database

    database = sqlite_database(str(tmp_path / "ds.db"), cast(IReactorFromThreads, reactor))
    await database.open()
    try:
        await database.run(lambda c: c.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
        calls = SqliteCallStore(database)
        await calls.put_calls([call(n) for n in range(300)])
        page = await calls.list_calls(CallQuery("a", per_page=100))
        assert len(page.calls) == 100 and page.next_cursor is not None
        assert (await calls.get_call("a", "call0299")).id == "call0299"
    finally:
        await database.close()


@pytest_twisted.ensureDeferred
async def test_get_missing_or_other_apps_call_fails_with_CallNotFound(calls: ICallStore) -> None:
    await calls.put_calls([call(1, app="a")])
    with pytest.raises(CallNotFound):
        await calls.get_call("b", "call0001")
    with pytest.raises(CallNotFound):
        await calls.get_call("a", "nope")


@pytest_twisted.ensureDeferred
async def test_list_is_newest_first_and_paginates_with_cursor(calls: ICallStore) -> None:
    await calls.put_calls([call(n) for n in range(7)] + [call(100, app="other")])
    seen: list[str]
    after: tuple[int, str] | None
    seen, after = [], None
    while True:
        page = await calls.list_calls(CallQuery("a", per_page=3, after=after))
        seen.extend(c.id for c in page.calls)
        if page.next_cursor is None:
            break
        after = decode_cursor(page.next_cursor)
    assert seen == [f"call{n:04d}" for n in range(6, -1, -1)]


@pytest_twisted.ensureDeferred
async def test_list_filters_by_path_status_and_time(calls: ICallStore) -> None:
    await calls.put_calls([
        call(1, path="/x", status=CallStatus.SUCCESS), call(2, path="/y", status=CallStatus.ERROR),
        call(3, path="/x", status=CallStatus.ERROR), call(4, path="/x", status=CallStatus.QUEUED),
    ])
    ids: Callable[[CallPage], list[str]] = lambda page: [c.id for c in page.calls]  # noqa: E731
    assert ids(await calls.list_calls(CallQuery("a", path="/x"))) == ["call0004", "call0003", "call0001"]
    assert ids(await calls.list_calls(CallQuery("a", status=CallStatus.ERROR))) == ["call0003", "call0002"]
    assert ids(await calls.list_calls(CallQuery("a", from_ms=1002, to_ms=1003))) == ["call0003", "call0002"]
    assert (await calls.list_calls(CallQuery("a", path="/x", status=CallStatus.ERROR))).next_cursor is None


@pytest_twisted.ensureDeferred
async def test_same_created_at_pages_by_id(calls: ICallStore) -> None:
    same = [CallRecord(id=f"id{n}", app_name="a", path="/p", created_at=5) for n in range(5)]
    await calls.put_calls(same)
    first = await calls.list_calls(CallQuery("a", per_page=2))
    assert first.next_cursor is not None
    second = await calls.list_calls(CallQuery("a", per_page=10, after=decode_cursor(first.next_cursor)))
    assert [c.id for c in first.calls + second.calls] == ["id4", "id3", "id2", "id1", "id0"]


@pytest_twisted.ensureDeferred
async def test_update_call_is_atomic_and_may_abort(calls: ICallStore) -> None:
    await calls.put_calls([call(1)])
    new = await calls.update_call("a", "call0001", lambda c: attrs.evolve(c, status=CallStatus.CANCELLED))
    assert new.status == "cancelled"

    def refuse(c: CallRecord) -> NoReturn:
        raise CallCompleted()

    with pytest.raises(CallCompleted):
        await calls.update_call("a", "call0001", refuse)
    assert (await calls.get_call("a", "call0001")).status == "cancelled"
    with pytest.raises(CallNotFound):
        await calls.update_call("a", "nope", lambda c: c)


@pytest_twisted.ensureDeferred
async def test_logs_store_bytes_per_call(calls: ICallStore) -> None:
    await calls.put_calls([call(1), call(2)])
    assert await calls.get_log("a", "call0002") == b""
    await calls.put_log("a", "call0001", b"line 1\nline \xff2\n")
    assert await calls.get_log("a", "call0001") == b"line 1\nline \xff2\n"
    with pytest.raises(CallNotFound):
        await calls.get_log("b", "call0001")


@pytest_twisted.ensureDeferred
async def test_one_batch_with_an_id_twice_keeps_the_last(calls: ICallStore) -> None:
    """The recorder may hand over a call's 'running' and final records together."""
    await calls.put_calls([call(1, status=CallStatus.RUNNING), call(2), call(1, status=CallStatus.SUCCESS)])
    assert (await calls.get_call("a", "call0001")).status == "success"


@pytest_twisted.ensureDeferred
async def test_delete_call_removes_the_record_and_its_log_only_for_its_app(calls: ICallStore) -> None:
    await calls.put_calls([call(1), call(2)])
    await calls.put_log("a", "call0001", b"log")
    assert await calls.delete_call("b", "call0001") is False  # another app's call stays
    assert await calls.delete_call("a", "call0001") is True
    with pytest.raises(CallNotFound):
        await calls.get_call("a", "call0001")
    with pytest.raises(CallNotFound):
        await calls.get_log("a", "call0001")
    assert [c.id for c in (await calls.list_calls(CallQuery("a"))).calls] == ["call0002"]
    assert await calls.delete_call("a", "call0001") is False
    await calls.put_calls([call(1)])  # the id can be stored again, with no old log
    assert await calls.get_log("a", "call0001") == b""


async def test_delete_call_removes_a_queued_calls_stored_request(calls: ICallStore) -> None:
    """A refused submit takes back the record and the request stored beside it."""
    await calls.put_async(call(3), {"method": "GET"})
    assert await calls.delete_call("a", "call0003") is True
    await calls.put_calls([call(3)])
    with pytest.raises(CallNotFound):
        await calls.get_request("a", "call0003")


async def test_lost_round_trips(calls: ICallStore) -> None:
    await calls.put_calls([call(1, lost=2)])
    assert (await calls.get_call("a", "call0001")).lost == 2


@pytest_twisted.ensureDeferred
async def test_put_async_stores_the_record_and_its_request_until_the_call_ends(calls: ICallStore) -> None:
    request = {"method": "POST", "url": "http://x/r/a/p", "headers": {"A": ["1", "ż"]}, "body": "aGk=", "params": {}}
    record = call(1, type="async", priority=2)
    await calls.put_async(record, request)
    assert await calls.get_call("a", "call0001") == record
    assert await calls.get_request("a", "call0001") == request
    with pytest.raises(CallNotFound):  # another app's call
        await calls.get_request("b", "call0001")
    await calls.put_calls([call(2)])
    with pytest.raises(CallNotFound):  # a call with no request stored (sync)
        await calls.get_request("a", "call0002")
    # Still unfinished (a retry): kept; finished: dropped with the change that ends it.
    await calls.update_call("a", "call0001", lambda c: attrs.evolve(c, status=CallStatus.RUNNING))
    assert await calls.get_request("a", "call0001") == request
    await calls.update_call("a", "call0001", lambda c: attrs.evolve(c, status=CallStatus.SUCCESS))
    with pytest.raises(CallNotFound):
        await calls.get_request("a", "call0001")


@pytest_twisted.ensureDeferred
async def test_list_unfinished_pages_queued_and_running_of_every_app_oldest_first(calls: ICallStore) -> None:
    await calls.put_calls([
        call(1, status=CallStatus.QUEUED), call(2, app="b", status=CallStatus.RUNNING),
        call(3, status=CallStatus.SUCCESS), call(4, app="c", status=CallStatus.QUEUED),
        call(5, status=CallStatus.CANCELLED), call(6, status=CallStatus.QUEUED),
        call(7, status=CallStatus.RUNNING),  # too young: created at 1007
        CallRecord(id="same-b", app_name="a", path="/p", created_at=1004),
    ])
    seen: list[str] = []
    after: tuple[int, str] | None = None
    while page := await calls.list_unfinished(1007, after, limit=2):
        assert len(page) <= 2
        seen.extend(c.id for c in page)
        after = (page[-1].created_at, page[-1].id)
    assert seen == ["call0001", "call0002", "call0004", "same-b", "call0006"]
async def ids_of(calls: ICallStore, app: str) -> set[str]:
    return {c.id for c in (await calls.list_calls(CallQuery(app, per_page=100))).calls}


@pytest_twisted.ensureDeferred
async def test_delete_finished_takes_calls_that_ended_before_the_cutoff_with_their_logs(calls: ICallStore) -> None:
    """CALL_RETENTION: finished calls end at completed_at (created_at if none); queued
    and running ones are never deleted, however old."""
    S = CallStatus
    await calls.put_calls([
        call(1, status=S.SUCCESS, completed_at=5_000),
        call(2, status=S.ERROR, completed_at=4_000),
        call(3, status=S.TIMEOUT, completed_at=6_000),
        call(4, status=S.CANCELLED),  # no completed_at: created_at 1_004
        call(5, status=S.SUCCESS, completed_at=9_000),  # ended after the cutoff
        call(6, status=S.QUEUED),
        call(7, status=S.RUNNING, started_at=1_010),
        call(8, app="b", status=S.SUCCESS, completed_at=2_000),
    ])
    await calls.put_log("a", "call0001", b"old log")
    await calls.put_log("a", "call0005", b"new log")
    assert await calls.delete_finished(8_000, 100) == 5
    assert await ids_of(calls, "a") == {"call0005", "call0006", "call0007"}
    assert await ids_of(calls, "b") == set()
    with pytest.raises(CallNotFound):
        await calls.get_log("a", "call0001")
    assert await calls.get_log("a", "call0005") == b"new log"
    await calls.put_calls([call(1)])  # the id is free again, and no old log comes back with it
    assert await calls.get_log("a", "call0001") == b""
    assert await calls.delete_finished(10**15, 100) == 1  # call0005; queued and running stay
    assert await ids_of(calls, "a") == {"call0001", "call0006", "call0007"}


@pytest_twisted.ensureDeferred
async def test_delete_finished_goes_in_batches_of_at_most_limit(calls: ICallStore) -> None:
    await calls.put_calls([call(n, status=CallStatus.SUCCESS, completed_at=2_000) for n in range(25)])
    assert [await calls.delete_finished(3_000, 10) for _ in range(4)] == [10, 10, 5, 0]
    assert await ids_of(calls, "a") == set()


@pytest_twisted.ensureDeferred
async def test_delete_finished_of_one_app_leaves_other_apps(calls: ICallStore) -> None:
    done = {"status": CallStatus.SUCCESS, "completed_at": 2_000}
    await calls.put_calls([call(1, app="a", **done), call(2, app="b", **done), call(3, app="a", **done)])
    assert await calls.delete_finished(3_000, 100, app_name="a") == 2
    assert await ids_of(calls, "a") == set() and await ids_of(calls, "b") == {"call0002"}


@pytest_twisted.ensureDeferred
async def test_cancel_unfinished_cancels_an_apps_queued_and_running_calls(calls: ICallStore) -> None:
    S = CallStatus
    await calls.put_calls([
        call(1, status=S.QUEUED), call(2, status=S.RUNNING), call(3, status=S.SUCCESS, completed_at=1_500),
        call(4, app="b", status=S.QUEUED),
    ])
    ended = await calls.cancel_unfinished("a", 7_000, "route_deleted")
    assert sorted(ended) == [("call0001", S.QUEUED), ("call0002", S.RUNNING)]
    for call_id in ("call0001", "call0002"):
        got = await calls.get_call("a", call_id)
        assert (got.status, got.reason, got.completed_at) == (S.CANCELLED, "route_deleted", 7_000)
    assert (await calls.get_call("a", "call0003")).status == S.SUCCESS
    assert (await calls.get_call("b", "call0004")).status == S.QUEUED
    assert await calls.cancel_unfinished("a", 8_000, "route_deleted") == []


@pytest_twisted.ensureDeferred
async def test_the_retention_sweep_finds_expired_calls_through_an_index(tmp_path: Path) -> None:
    """(SQLite's plan; Postgres has the same index, 0004_call_expiry.sql.)"""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads

    from ironfunctions.calls import ending
    from ironfunctions.datastore.sqlite import sqlite_database

    database = sqlite_database(str(tmp_path / "ds.db"), cast(IReactorFromThreads, reactor))
    await database.open()
    try:
        statement = ending.expired_ids_sql(1000, "?", by_app=False)
        plan = await database.run(lambda c: c.execute("EXPLAIN QUERY PLAN " + statement, (1,)).fetchall())
        assert "calls_ended_at" in str(plan), plan
    finally:
        await database.close()


@pytest_twisted.ensureDeferred
async def test_ending_an_apps_calls_or_expiring_them_drops_their_stored_requests(calls: ICallStore) -> None:
    """A request is kept only to queue its call again; a cancelled or deleted call must
    leave none behind (the reconciler would find nothing to run, and it holds a body)."""
    await calls.put_async(call(1), {"method": "POST"})
    await calls.put_async(call(2, app="b"), {"method": "POST"})
    assert [i for i, _ in await calls.cancel_unfinished("a", 9_000, "route_deleted")] == ["call0001"]
    with pytest.raises(CallNotFound):
        await calls.get_request("a", "call0001")
    assert await calls.get_request("b", "call0002") == {"method": "POST"}  # another app's stays
    assert await calls.delete_finished(10_000, 100, app_name="a") == 1
    with pytest.raises(CallNotFound):
        await calls.get_request("a", "call0001")
