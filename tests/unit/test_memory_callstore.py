"""The memory call store keeps the newest ``max_calls`` records (and their logs)."""

from __future__ import annotations

import pytest
import pytest_twisted

from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.calls.model import CallRecord, CallQuery
from ironfunctions.errors import CallNotFound


def call(n: int) -> CallRecord:
    return CallRecord(id=f"c{n}", app_name="a", path="/p", created_at=n)


@pytest_twisted.ensureDeferred
async def test_only_the_newest_records_and_their_logs_are_kept() -> None:
    store = MemoryCallStore(max_calls=3)
    await store.put_calls([call(1), call(2)])
    await store.put_log("a", "c1", b"log 1")
    await store.put_calls([call(3), call(4)])
    await store.put_calls([call(2)])  # replaced, not new: nothing more goes
    page = await store.list_calls(CallQuery("a", per_page=10))
    assert sorted(c.id for c in page.calls) == ["c2", "c3", "c4"]
    with pytest.raises(CallNotFound):
        await store.get_log("a", "c1")
    assert "c1" not in store._logs
