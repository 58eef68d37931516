"""The async queue interface: calls waiting to run, reserved with a lease.

Every provider (memory, SQLite, Redis) passes ``tests/contracts/test_queue.py``.
Methods are coroutine functions (``async def``); awaiting them gives the documented
value or raises the documented domain exception. Any provider raises
``QueueUnavailable`` when its backend cannot be reached.

Semantics shared by every provider (SPEC §4 Async, issue 5):

- Order: higher ``priority`` first (2, then 1, then 0, as IronFunctions' queues), then
  FIFO by the order items were first pushed. An item whose lease expires, or that is
  released, goes back to that same place, not to the back of the queue.
- At-least-once: ``reserve`` hides an item for ``lease_seconds``; unless it is acked,
  renewed or released by then, it becomes visible again and the next delivery has
  ``attempt`` one higher. Two reservers never hold the same item at once.
- Items are keyed by ``call_id``; pushing an id that is already queued is a no-op, so
  a submit can be retried safely.
- Per-app bounds (SPEC §8 "Apps share fairly", issue 13): each provider keeps, per
  app, the number and the bytes (``QueueItem.size``) of its *waiting* items: visible,
  delayed, released for a retry, or with an expired lease; not those under a live
  lease (running). ``push(item, limits=...)`` checks them and stores the item in one
  atomic step (one Lua script on Redis, so across every node; one transaction on
  SQLite), so no number of concurrent submitters gets an app past its bound. Counting
  is cheap: counters kept up to date by every transition, no scan per push.
  ``rebuild_counts`` recomputes them from the queue's content.
"""

from __future__ import annotations

import json
from typing import AbstractSet, Any, Collection, Mapping

import attrs
from zope.interface import Interface

PRIORITIES = (0, 1, 2)
# How many visible items a reserve filtered by ``apps`` may look at (Redis: one
# atomic script must stay short); memory and SQLite look at every item.
APPS_SCAN_LIMIT = 1000


def _check_priority(instance: Any, attribute: Any, value: int) -> None:
    if value not in PRIORITIES:
        raise ValueError(f"priority must be 0, 1 or 2, got {value!r}")


@attrs.frozen
class QueueItem:
    """One async call waiting to run. ``payload`` is small JSON-able data the worker
    needs besides the call record (kept as given, round-tripped through JSON)."""

    call_id: str
    app_name: str
    path: str
    priority: int = attrs.field(default=0, validator=_check_priority)
    payload: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> str:
        """The item as one JSON text (what the persistent providers store)."""
        return json.dumps(
            {
                "call_id": self.call_id,
                "app_name": self.app_name,
                "path": self.path,
                "priority": self.priority,
                "payload": dict(self.payload),
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> QueueItem:
        data = json.loads(text)
        return cls(data["call_id"], data["app_name"], data["path"], data["priority"], data["payload"])

    def size(self) -> int:
        """The bytes the item takes in the queue: its JSON text (ASCII, as ``json.dumps``
        escapes the rest), which is what sits in Redis or SQLite. What the per-app byte
        bound counts."""
        return len(self.to_json())


@attrs.frozen
class QueueLimits:
    """How much of one app may wait in the queue: ``ASYNC_MAX_QUEUED`` calls and
    ``ASYNC_MAX_QUEUED_BYTES`` bytes (``QueueItem.size``)."""

    max_calls: int
    max_bytes: int

    def refusal(self, app_name: str, usage: AppUsage, size: int) -> tuple[str, int] | None:
        """The bound (setting name, value) that one more item of ``size`` bytes would
        pass, given the app's current ``usage``; None if it fits. Pure; the memory and
        SQLite providers use it, the Redis script does the same in Lua."""
        if usage.calls + 1 > self.max_calls:
            return "ASYNC_MAX_QUEUED", self.max_calls
        if usage.bytes + size > self.max_bytes:
            return "ASYNC_MAX_QUEUED_BYTES", self.max_bytes
        return None


@attrs.frozen
class AppUsage:
    """What one app has waiting in the queue: how many calls, how many bytes."""

    calls: int = 0
    bytes: int = 0


@attrs.frozen
class Lease:
    """What ``ack``/``renew``/``release`` need: the item and the token of one delivery.

    ``str(lease)`` and ``Lease.parse`` round-trip it, so the ``/tasks`` runner protocol
    can hand it to an external runner and take it back on ``DELETE /tasks``.
    """

    call_id: str
    token: str

    def __str__(self) -> str:
        return f"{self.token}.{self.call_id}"

    @classmethod
    def parse(cls, text: str) -> Lease:
        """Inverse of ``str(lease)``. Raise ``ValueError`` for text it did not make."""
        token, sep, call_id = text.partition(".")
        if not sep or not token or not call_id:
            raise ValueError(f"not a queue lease: {text!r}")
        return cls(call_id, token)


@attrs.frozen
class Reservation:
    """One delivery of an item: hidden from other reservers until its lease ends.
    ``attempt`` counts deliveries of this item, starting at 1."""

    item: QueueItem
    lease: Lease
    attempt: int

    @property
    def call_id(self) -> str:
        return self.item.call_id


def lease_of(held: Reservation | Lease) -> Lease:
    """The lease of a reservation (methods taking a lease accept either)."""
    return held.lease if isinstance(held, Reservation) else held


class IMessageQueue(Interface):
    """Where async calls wait for a worker. Shared by every node of a cluster."""

    async def start() -> None:
        """Connect (and bring a schema up to date). Called once, by the queue's service,
        before any other method; calling it again after a failure retries.
        Raise ``QueueUnavailable``."""

    async def ping() -> None:
        """Return when the backend answers; raise ``QueueUnavailable`` otherwise."""

    async def push(item: QueueItem, delay: float = 0, limits: QueueLimits | None = None) -> bool:
        """Store ``item`` durably (as durable as the backend is) and return True once
        it is stored; it can be reserved ``delay`` seconds from now. Return False, and
        change nothing, if an item with that ``call_id`` is already queued or reserved.
        Wakes a waiting ``reserve``. Raise ``QueueUnavailable``.

        With ``limits``, atomically with the store: raise ``QueueFull`` (naming the
        bound), and change nothing, if the item's app would then have more than
        ``limits.max_calls`` items or ``limits.max_bytes`` bytes waiting."""

    async def reserve(
        lease_seconds: float, timeout: float = 0, apps: AbstractSet[str] | None = None,
    ) -> Reservation | None:
        """Take the first visible item (priority, then FIFO) for ``lease_seconds``.

        With ``apps``, only an item whose ``app_name`` is one of them (a ``/tasks``
        runner whose token is limited to those apps): other items are not touched,
        their attempts and places stay as they were. A provider may look only at the
        first ``APPS_SCAN_LIMIT`` visible items in order, so such a reserve can come
        back empty while items of ``apps`` wait behind that many of other apps.

        If none is visible, wait up to ``timeout`` seconds for one (a push on this
        node wakes the wait at once; other nodes' pushes too where the backend can
        notify). Return None when the wait ends empty-handed or the queue is closed.
        Raise ``QueueUnavailable``; the item is then not reserved, or its lease simply
        expires. Cancelling the returned Deferred ends the wait.
        """

    async def ack(held: Reservation | Lease) -> None:
        """Delete the reserved item: its call is done. Raise ``LeaseLost`` if the lease
        has expired, was released, or the item was removed or delivered again."""

    async def renew(held: Reservation | Lease, lease_seconds: float) -> None:
        """Extend the lease to ``lease_seconds`` from now (for long calls).
        Raise ``LeaseLost`` as ``ack``."""

    async def release(held: Reservation | Lease, delay: float = 0) -> None:
        """Give the item back, at its old place in order, reservable again ``delay``
        seconds from now (retry with backoff). The next delivery's ``attempt`` is one
        higher. Raise ``LeaseLost`` as ``ack``."""

    async def remove(call_id: str) -> bool:
        """Delete the item ``call_id`` whether it waits or is reserved (cancelling a
        call); return whether it was there. A holder's later ack/renew/release raises
        ``LeaseLost``."""

    async def holds(call_ids: Collection[str]) -> set[str]:
        """Which of ``call_ids`` the queue has, in any state: waiting, delayed or
        reserved (even under an expired lease). The reconciler's question: a queued
        call the queue does not hold was lost (SPEC §10). Raise ``QueueUnavailable``."""

    async def depth() -> int:
        """Items waiting to run: visible or delayed, not under a live lease (the
        ``queue.depth`` gauge)."""

    async def close() -> None:
        """Release connections and threads; waiting ``reserve`` calls return None.
        The queue is unusable afterwards."""

    async def app_usage(app_name: str) -> AppUsage:
        """The calls and bytes ``app_name`` has waiting (what ``push`` checks its
        limits against): a counter read, no scan. Raise ``QueueUnavailable``."""

    async def rebuild_counts() -> None:
        """Recompute every app's waiting counters from the items actually queued
        (the reconciler calls it after a queue restart, in case the counters and the
        items parted). Scans the whole queue: not for the request path. Raise
        ``QueueUnavailable``."""
