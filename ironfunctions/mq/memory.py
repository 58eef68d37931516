"""``memory://``: a queue in process memory. A real backend for throwaway runs and
tests; it passes the same contract suite as SQLite and Redis. Leases and delays run
on the clock it is given, so tests drive them with ``twisted.internet.task.Clock``."""

from __future__ import annotations

import heapq
import itertools
import uuid
from typing import AbstractSet, Collection

import attrs
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ironfunctions.errors import LeaseLost, QueueFull, QueueUnavailable
from ironfunctions.mq._waiting import Waiters, reserve_loop
from ironfunctions.mq.interface import (
    AppUsage, IMessageQueue, Lease, QueueItem, QueueLimits, Reservation, lease_of,
)


@attrs.define
class _Entry:
    item: QueueItem
    seq: int
    visible_at: float
    attempts: int = 0
    token: str | None = None
    # Renewed (from a queue-wide counter) whenever the entry is (re)scheduled: heap
    # rows with another generation are stale and skipped, which is cheaper than
    # deleting from a heap.
    generation: int = 0
    size: int = 0
    # Whether the entry is in its app's waiting counters (not under a live lease).
    # Every transition goes through ``MemoryQueue._count``, which looks at this flag, so
    # an entry is never counted twice nor taken off twice.
    counted: bool = False


@implementer(IMessageQueue)
class MemoryQueue:
    """Items in a dict, ordered by two heaps: visible items by (priority, seq), hidden
    ones (delayed or leased) by when they become visible. Lost when the process exits."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._ready: list[tuple[int, int, str, int]] = []  # (-priority, seq, id, generation)
        self._hidden: list[tuple[float, int, str, int]] = []  # (visible_at, seq, id, generation)
        self._seq = itertools.count(1)
        self._generations = itertools.count(1)
        self._waiters = Waiters(clock)
        self._closed = False
        self._usage: dict[str, AppUsage] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise QueueUnavailable("queue closed")

    def _schedule(self, entry: _Entry) -> None:
        entry.generation = next(self._generations)
        row_id = entry.item.call_id
        if entry.visible_at <= self._clock.seconds():
            heapq.heappush(self._ready, (-entry.item.priority, entry.seq, row_id, entry.generation))
        else:
            heapq.heappush(self._hidden, (entry.visible_at, entry.seq, row_id, entry.generation))

    def _current(self, call_id: str, generation: int) -> _Entry | None:
        entry = self._entries.get(call_id)
        return entry if entry is not None and entry.generation == generation else None

    def _surface(self, now: float) -> None:
        """Move hidden items whose time has come back to their place among the visible
        (an expired lease makes its item waiting again: counted)."""
        while self._hidden and self._hidden[0][0] <= now:
            _, _, call_id, generation = heapq.heappop(self._hidden)
            entry = self._current(call_id, generation)
            if entry is not None:
                entry.token = None
                self._count(entry, True)
                self._schedule(entry)

    def _count(self, entry: _Entry, waiting: bool) -> None:
        """Put ``entry`` in (``waiting``) or take it out of its app's counters."""
        if entry.counted == waiting:
            return
        entry.counted = waiting
        app = entry.item.app_name
        old = self._usage.get(app, AppUsage())
        sign = 1 if waiting else -1
        new = AppUsage(old.calls + sign, old.bytes + sign * entry.size)
        if new.calls:
            self._usage[app] = new
        else:
            self._usage.pop(app, None)

    def _held(self, held: Reservation | Lease) -> _Entry:
        lease = lease_of(held)
        entry = self._entries.get(lease.call_id)
        if entry is None or entry.token != lease.token or entry.visible_at <= self._clock.seconds():
            raise LeaseLost()
        return entry

    async def start(self) -> None:
        self._check_open()

    async def ping(self) -> None:
        self._check_open()

    async def push(self, item: QueueItem, delay: float = 0, limits: QueueLimits | None = None) -> bool:
        self._check_open()
        if item.call_id in self._entries:
            return False
        now = self._clock.seconds()
        size = item.size()
        if limits is not None:
            self._surface(now)  # expired leases count as waiting again
            refused = limits.refusal(item.app_name, self._usage.get(item.app_name, AppUsage()), size)
            if refused is not None:
                raise QueueFull(item.app_name, *refused)
        entry = _Entry(item, next(self._seq), now + max(0.0, delay), size=size)
        self._entries[item.call_id] = entry
        self._count(entry, True)
        self._schedule(entry)
        self._waiters.wake_all()
        return True

    def _pop_first(self, apps: AbstractSet[str] | None) -> _Entry | None:
        """Take the first live visible entry (of one of ``apps``) off the ready heap."""
        if apps is None:
            while self._ready:
                _, _, call_id, generation = heapq.heappop(self._ready)
                entry = self._current(call_id, generation)
                if entry is not None:
                    return entry
            return None
        for row in sorted(self._ready):  # in order; other apps' rows stay where they are
            entry = self._current(row[2], row[3])
            if entry is not None and entry.item.app_name in apps:
                self._ready.remove(row)
                heapq.heapify(self._ready)
                return entry
        return None

    async def _try_reserve(
        self, lease_seconds: float, apps: AbstractSet[str] | None,
    ) -> tuple[Reservation | None, float | None]:
        now = self._clock.seconds()
        self._surface(now)
        entry = self._pop_first(apps)
        if entry is not None:
            call_id = entry.item.call_id
            entry.attempts += 1
            self._count(entry, False)
            entry.token = uuid.uuid4().hex
            entry.visible_at = now + lease_seconds
            self._schedule(entry)
            return Reservation(entry.item, Lease(call_id, entry.token), entry.attempts), None
        next_due = self._hidden[0][0] - now if self._hidden else None
        return None, next_due

    async def reserve(
        self, lease_seconds: float, timeout: float = 0, apps: AbstractSet[str] | None = None,
    ) -> Reservation | None:
        self._check_open()
        return await reserve_loop(
            lambda: self._try_reserve(lease_seconds, apps),
            self._waiters,
            self._clock,
            timeout,
            lambda: self._closed,
        )

    async def ack(self, held: Reservation | Lease) -> None:
        self._check_open()
        entry = self._held(held)
        self._count(entry, False)
        del self._entries[entry.item.call_id]

    async def renew(self, held: Reservation | Lease, lease_seconds: float) -> None:
        self._check_open()
        entry = self._held(held)
        entry.visible_at = self._clock.seconds() + lease_seconds
        self._schedule(entry)

    async def release(self, held: Reservation | Lease, delay: float = 0) -> None:
        self._check_open()
        entry = self._held(held)
        entry.token = None
        self._count(entry, True)
        entry.visible_at = self._clock.seconds() + max(0.0, delay)
        self._schedule(entry)
        self._waiters.wake_all()

    async def remove(self, call_id: str) -> bool:
        self._check_open()
        entry = self._entries.pop(call_id, None)
        if entry is None:
            return False
        self._count(entry, False)
        return True

    async def holds(self, call_ids: Collection[str]) -> set[str]:
        self._check_open()
        return {call_id for call_id in call_ids if call_id in self._entries}

    async def depth(self) -> int:
        self._check_open()
        now = self._clock.seconds()
        return sum(1 for e in self._entries.values() if e.token is None or e.visible_at <= now)

    async def close(self) -> None:
        self._closed = True
        self._waiters.wake_all()

    async def app_usage(self, app_name: str) -> AppUsage:
        self._check_open()
        self._surface(self._clock.seconds())
        return self._usage.get(app_name, AppUsage())

    async def rebuild_counts(self) -> None:
        self._check_open()
        now = self._clock.seconds()
        self._surface(now)
        self._usage = {}
        for entry in self._entries.values():
            entry.counted = False
            self._count(entry, entry.token is None or entry.visible_at <= now)
