"""``ICallStore``: call records and logs. ``datastore.stores_from_url`` builds one
beside each datastore, over the same database (same connection or pool); the
datastore's ``start``/``close`` open and close it. Every provider passes
``tests/contracts/test_callstore.py``."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from zope.interface import Interface

from ironfunctions.calls.model import CallRecord, CallPage, CallQuery

CallChange = Callable[[CallRecord], CallRecord]
# Cancels a call: (app name, call id) -> the cancelled record (see runner/cancel.py).
Canceller = Callable[[str, str], Awaitable[CallRecord]]


class ICallStore(Interface):
    """Where call records live. Raise ``DatastoreUnavailable`` when the backend is down."""

    async def put_calls(calls: list[CallRecord]) -> None:
        """Insert or replace each call (by id), all in one transaction."""

    async def get_call(app_name: str, call_id: str) -> CallRecord:
        """Return the call. Raise ``CallNotFound`` (also for another app's call)."""

    async def list_calls(query: CallQuery) -> CallPage:
        """One page of the app's calls matching ``query``, newest first."""

    async def update_call(app_name: str, call_id: str, change: CallChange) -> CallRecord:
        """Atomically replace the call by ``change(call)``; ``change`` may raise to abort
        with nothing written. Raise ``CallNotFound``. When the new record is finished
        (a terminal status), the request ``put_async`` stored with it is dropped."""

    async def put_async(record: CallRecord, request: Mapping[str, Any]) -> None:
        """Insert or replace an accepted async call's record and store its request (a
        JSON-able mapping: what its queue item carries), in one transaction, so the
        call can be queued again from the datastore alone (the reconciler)."""

    async def get_request(app_name: str, call_id: str) -> dict[str, Any]:
        """The request ``put_async`` stored. Raise ``CallNotFound`` if there is none
        (another app's call, a sync call, or one that has ended)."""

    async def list_unfinished(
        before_ms: int, after: tuple[int, str] | None = None, limit: int = 100,
    ) -> list[CallRecord]:
        """Up to ``limit`` queued or running calls of every app created before
        ``before_ms``, oldest first by (created_at, id), starting after the key
        ``after`` (the last call of the previous page)."""

    async def put_log(app_name: str, call_id: str, log: bytes) -> None:
        """Store (replace) the call's log (already capped by the caller)."""

    async def get_log(app_name: str, call_id: str) -> bytes:
        """The call's log (empty if it wrote none). Raise ``CallNotFound``."""

    async def delete_call(app_name: str, call_id: str) -> bool:
        """Delete the call and its log; return whether it was there (another app's
        call is not). An async submit the queue refused takes its record back with it
        (``runner/submit.py``)."""
