"""MemoryQueue on a fake clock: the queue rules of the contract suite, pinned without
sockets, threads or real time (leases and delays move only when the test says so)."""

from __future__ import annotations

from typing import Any, Coroutine, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import LeaseLost, QueueUnavailable
from ironfunctions.mq.interface import Lease, QueueItem, Reservation
from ironfunctions.mq.memory import MemoryQueue


def item(call_id: str, priority: int = 0) -> QueueItem:
    return QueueItem(call_id, "app", "/p", priority)


class MemoryQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = MemoryQueue(self.clock)

    def run_now(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """The result of a coroutine that must finish without the clock moving."""
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def reserve(self, lease: float = 30) -> Reservation | None:
        result: Reservation | None = self.run_now(self.queue.reserve(lease))
        return result

    def test_expired_lease_is_redelivered_first_with_attempt_two(self) -> None:
        self.run_now(self.queue.push(item("a")))
        self.run_now(self.queue.push(item("b")))
        first = self.reserve(10)
        assert first is not None and first.call_id == "a"
        self.clock.advance(9.9)
        second = self.reserve()
        assert second is not None and second.call_id == "b"
        assert self.reserve() is None
        self.clock.advance(0.1)
        again = self.reserve()
        assert again is not None and (again.call_id, again.attempt) == ("a", 2)
        self.failureResultOf(Deferred.fromCoroutine(self.queue.ack(first)), LeaseLost)

    def test_renew_moves_the_expiry(self) -> None:
        self.run_now(self.queue.push(item("a")))
        r = self.reserve(10)
        assert r is not None
        self.clock.advance(9)
        self.run_now(self.queue.renew(r, 10))
        self.clock.advance(9)
        assert self.reserve() is None
        self.run_now(self.queue.ack(r.lease))
        assert self.run_now(self.queue.depth()) == 0

    def test_waiting_reserve_fires_on_push_without_the_clock_moving(self) -> None:
        waiting = Deferred.fromCoroutine(self.queue.reserve(30, timeout=60))
        self.assertNoResult(waiting)
        self.run_now(self.queue.push(item("a", 2)))
        assert cast(Reservation, self.successResultOf(waiting)).call_id == "a"

    def test_waiting_reserve_returns_None_at_its_timeout(self) -> None:
        waiting = Deferred.fromCoroutine(self.queue.reserve(30, timeout=5))
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        assert self.successResultOf(waiting) is None

    def test_waiting_reserve_wakes_when_a_delayed_item_comes_due(self) -> None:
        self.run_now(self.queue.push(item("later"), delay=3))
        waiting = Deferred.fromCoroutine(self.queue.reserve(30, timeout=60))
        self.clock.advance(2.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        assert cast(Reservation, self.successResultOf(waiting)).call_id == "later"

    def test_release_with_delay_keeps_the_old_place(self) -> None:
        for call_id in ["a", "b", "c"]:
            self.run_now(self.queue.push(item(call_id)))
        a = self.reserve()
        assert a is not None
        self.run_now(self.queue.release(a, delay=5))
        self.clock.advance(5)
        got = [self.reserve() for _ in range(3)]
        assert [(r.call_id, r.attempt) for r in got if r] == [("a", 2), ("b", 1), ("c", 1)]

    def test_cancelling_a_waiting_reserve_forgets_it(self) -> None:
        waiting = Deferred.fromCoroutine(self.queue.reserve(30, timeout=60))
        waiting.cancel()
        self.failureResultOf(waiting)
        assert self.clock.getDelayedCalls() == []
        self.run_now(self.queue.push(item("a")))
        assert self.run_now(self.queue.depth()) == 1

    def test_a_pushed_id_can_be_pushed_again_after_remove(self) -> None:
        self.run_now(self.queue.push(item("a")))
        assert self.run_now(self.queue.remove("a")) is True
        self.run_now(self.queue.push(item("a", 1)))
        r = self.reserve()
        assert r is not None and (r.item.priority, r.attempt) == (1, 1)

    def test_closed_queue_refuses_work(self) -> None:
        self.run_now(self.queue.close())
        self.failureResultOf(Deferred.fromCoroutine(self.queue.push(item("a"))), QueueUnavailable)


def test_priority_outside_0_to_2_is_rejected() -> None:
    with pytest.raises(ValueError):
        QueueItem("c", "app", "/p", 3)


def test_lease_text_round_trips_and_rejects_garbage() -> None:
    lease = Lease("01HZX.with.dots", "abc123")
    assert Lease.parse(str(lease)) == lease
    for bad in ["", "nodot", ".x", "x."]:
        with pytest.raises(ValueError):
            Lease.parse(bad)


def test_item_json_round_trips() -> None:
    i = QueueItem("c", "app", "/a/b", 2, {"body": "żółw", "n": [1, None]})
    assert QueueItem.from_json(i.to_json()) == i
