"""Call records in process memory (the call store of ``memory://``).

Only the newest ``max_calls`` records (and their logs) are kept: a daemon on memory://
records every call, and at thousands of calls a second an unbounded store would grow
by megabytes a second until the process is killed.
"""

from __future__ import annotations

from zope.interface import implementer

from ironfunctions.calls.interface import CallChange, ICallStore
from ironfunctions.calls.model import CallRecord, CallPage, CallQuery, page_of
from ironfunctions.errors import CallNotFound


@implementer(ICallStore)
class MemoryCallStore:
    """Calls and logs in dicts, the newest ``max_calls``; lost with the process."""

    def __init__(self, max_calls: int = 100_000) -> None:
        self._max_calls = max_calls
        self._calls: dict[str, CallRecord] = {}  # in the order first stored: oldest first
        self._logs: dict[str, bytes] = {}

    async def put_calls(self, calls: list[CallRecord]) -> None:
        stored = self._calls
        for call in calls:
            stored[call.id] = call
        while len(stored) > self._max_calls:
            oldest = next(iter(stored))
            del stored[oldest]
            self._logs.pop(oldest, None)

    def _get(self, app_name: str, call_id: str) -> CallRecord:
        call = self._calls.get(call_id)
        if call is None or call.app_name != app_name:
            raise CallNotFound()
        return call

    async def get_call(self, app_name: str, call_id: str) -> CallRecord:
        return self._get(app_name, call_id)

    async def list_calls(self, query: CallQuery) -> CallPage:
        return page_of(list(self._calls.values()), query)

    async def update_call(self, app_name: str, call_id: str, change: CallChange) -> CallRecord:
        new = change(self._get(app_name, call_id))
        self._calls[call_id] = new
        return new

    async def put_log(self, app_name: str, call_id: str, log: bytes) -> None:
        self._logs[call_id] = bytes(log)

    async def get_log(self, app_name: str, call_id: str) -> bytes:
        self._get(app_name, call_id)
        return self._logs.get(call_id, b"")

    async def delete_call(self, app_name: str, call_id: str) -> bool:
        try:
            self._get(app_name, call_id)
        except CallNotFound:
            return False
        del self._calls[call_id]
        self._logs.pop(call_id, None)
        return True
