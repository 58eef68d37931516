"""The waiting queue shared by container admission and the hot pools: FIFO order, a
deadline per waiter, cancellation, and a bound on waiters (``Clock``, no reactor)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ironfunctions.errors import Overloaded
from ironfunctions.runner.waitqueue import WaitQueue


class WaitQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.left: list[int] = []
        self.queue: WaitQueue[str] = WaitQueue(
            self.clock, max_waiting=3, expired_message="too long", on_leave=lambda: self.left.append(len(self.queue)),
        )

    def test_values_go_to_waiters_first_come_first_served(self) -> None:
        first, second = self.queue.wait(5), self.queue.wait(5)
        assert len(self.queue) == 2
        assert self.queue.give("a") and self.queue.give("b")
        assert (self.successResultOf(first), self.successResultOf(second)) == ("a", "b")
        assert not self.queue.give("c") and len(self.queue) == 0

    def test_a_waiter_past_its_timeout_fails_with_Overloaded_and_leaves(self) -> None:
        short, long = self.queue.wait(1), self.queue.wait(5)
        self.clock.advance(1)
        failure = self.failureResultOf(short, Overloaded)
        assert str(failure.value) == "too long" and failure.value.retry_after == 1
        assert self.left == [1]
        self.queue.give("x")
        assert self.successResultOf(long) == "x"

    def test_a_served_waiter_leaves_no_timer_behind(self) -> None:
        d = self.queue.wait(5)
        self.queue.give("x")
        self.successResultOf(d)
        assert self.clock.getDelayedCalls() == []

    def test_a_cancelled_waiter_leaves_the_queue_and_gets_nothing(self) -> None:
        gone, stays = self.queue.wait(5), self.queue.wait(5)
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        assert len(self.queue) == 1 and self.left == [1]
        assert len(self.clock.getDelayedCalls()) == 1  # its timer went with it
        self.queue.give("x")
        assert self.successResultOf(stays) == "x"

    def test_a_full_queue_refuses_at_once_with_retry_after_the_timeout(self) -> None:
        for _ in range(3):
            self.queue.wait(7)
        with self.assertRaises(Overloaded) as raised:
            self.queue.wait(7)
        assert raised.exception.retry_after == 7 and len(self.queue) == 3

    def test_fail_oldest_fails_the_longest_waiter_with_the_given_error(self) -> None:
        first, second = self.queue.wait(5), self.queue.wait(5)
        assert self.queue.fail_oldest(ValueError("start failed"))
        self.failureResultOf(first, ValueError)
        self.assertNoResult(second)
        assert self.left == []  # served (with an error), not left early
        assert self.queue.fail_oldest(ValueError("again")) and not self.queue.fail_oldest(ValueError("none"))
        self.failureResultOf(second, ValueError)
