"""Call records in process memory (the call store of ``memory://``).

Only the newest ``max_calls`` records (and their logs) are kept: a daemon on memory://
records every call, and at thousands of calls a second an unbounded store would grow
by megabytes a second until the process is killed.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from zope.interface import implementer

from ironfunctions.calls.interface import CallChange, ICallStore
from ironfunctions.calls.model import CallRecord, CallPage, CallQuery, page_of, sort_key
from ironfunctions.errors import CallNotFound


@implementer(ICallStore)
class MemoryCallStore:
    """Calls and logs in dicts, the newest ``max_calls``; lost with the process."""

    def __init__(self, max_calls: int = 100_000) -> None:
        self._max_calls = max_calls
        self._calls: dict[str, CallRecord] = {}  # in the order first stored: oldest first
        self._logs: dict[str, bytes] = {}
        self._requests: dict[str, str] = {}  # async requests as JSON text, as the SQL stores keep them

    async def put_calls(self, calls: list[CallRecord]) -> None:
        stored = self._calls
        for call in calls:
            stored[call.id] = call
        while len(stored) > self._max_calls:
            oldest = next(iter(stored))
            del stored[oldest]
            self._logs.pop(oldest, None)
            self._requests.pop(oldest, None)

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
        if new.terminal:
            self._requests.pop(call_id, None)
        return new

    async def put_async(self, record: CallRecord, request: Mapping[str, Any]) -> None:
        text = json.dumps(dict(request))  # fails here, as it would in SQL, if not JSON-able
        await self.put_calls([record])
        if record.id in self._calls:
            self._requests[record.id] = text

    async def get_request(self, app_name: str, call_id: str) -> dict[str, Any]:
        self._get(app_name, call_id)
        text = self._requests.get(call_id)
        if text is None:
            raise CallNotFound()
        request: dict[str, Any] = json.loads(text)
        return request

    async def list_unfinished(
        self, before_ms: int, after: tuple[int, str] | None = None, limit: int = 100,
    ) -> list[CallRecord]:
        found = sorted(
            (c for c in self._calls.values()
             if not c.terminal and c.created_at < before_ms and (after is None or sort_key(c) > after)),
            key=sort_key,
        )
        return found[:limit]

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
        self._requests.pop(call_id, None)
        return True
