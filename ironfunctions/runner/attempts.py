"""What an async delivery means, and what a failure costs (SPEC §10): pure decisions.

The queue's own delivery count cannot tell a function that failed from a platform that
could not run it (a Postgres restart once turned accepted calls into ``too many
attempts`` at attempt 1). The call's record, in the datastore, is the source of truth:

- ``attempt`` is the number of the current (or last) *function* attempt. It goes up
  only after the function itself failed: non-zero exit, timeout, out of memory, image
  not found (the worker then stores the record ``queued`` with reason ``retry``).
- A platform failure (store or queue error, overload, Docker unavailable, node not
  ready or draining) puts the call back ``queued`` with reason ``platform_retry``, with
  a backoff, and the next delivery runs the *same* attempt again; ``ASYNC_MAX_AGE``
  since the record was created bounds that (then ``error``, reason ``expired``).
- A delivery that finds the record ``running`` means the previous one's node died
  mid-call (it never wrote an outcome): ``lost`` goes up, and the 3rd such loss ends
  the call (``error``, reason ``node_lost``), so a call that kills its node cannot
  cycle for ever.
"""

from __future__ import annotations

import attrs

from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CallStatus

MAX_LOST = 3
PLATFORM_RETRY_CAP_S = 60.0
RETRY = "retry"  # reason of a record waiting for its next function attempt
PLATFORM_RETRY = "platform_retry"  # reason of a record put back after a platform failure
EXPIRED = "expired"
NODE_LOST = "node_lost"


@attrs.frozen
class AttemptPolicy:
    """The settings the decisions need: ``ASYNC_MAX_ATTEMPTS``, ``ASYNC_RETRY_DELAY``
    (seconds) and ``ASYNC_MAX_AGE`` (seconds)."""

    max_attempts: int = 3
    retry_base: float = 1.0
    max_age: float = 24 * 3600.0
    max_lost: int = MAX_LOST


@attrs.frozen
class Skip:
    """The call has ended (cancelled, or a duplicate delivery): ack, run nothing."""


@attrs.frozen
class GiveUp:
    """End the call ``error`` with ``reason`` and ``error``, unrun; then ack."""

    reason: str
    error: str
    lost: int


@attrs.frozen
class Run:
    """Run function attempt number ``attempt``; ``lost`` is the record's new count."""

    attempt: int
    lost: int


Delivery = Skip | GiveUp | Run


def on_delivery(record: CallRecord, now_ms: int, policy: AttemptPolicy) -> Delivery:
    """What to do with a delivery of the call whose stored record is ``record``."""
    if record.terminal:
        return Skip()
    lost = record.lost + 1 if record.status == CallStatus.RUNNING else record.lost
    if now_ms - record.created_at >= policy.max_age * 1000:
        return GiveUp(EXPIRED, "not run within ASYNC_MAX_AGE", lost)
    if lost >= policy.max_lost:
        return GiveUp(NODE_LOST, f"lost with its node {lost} times", lost)
    if record.status == CallStatus.QUEUED and record.reason == RETRY:
        return Run(record.attempt + 1, lost)
    return Run(record.attempt, lost)


def retries_after_failure(attempt: int, policy: AttemptPolicy) -> bool:
    """Whether a call whose function failed on ``attempt`` gets another one."""
    return attempt < policy.max_attempts


def retry_delay(base: float, attempt: int) -> float:
    """Delay before function attempt ``attempt + 1``: ``base``, doubling each attempt."""
    factor: int = 2 ** max(0, attempt - 1)  # int ** int is Any in typeshed
    return base * factor


def platform_delay(base: float, deliveries: int) -> float:
    """Delay before the next delivery of a call the platform could not run, after
    ``deliveries`` deliveries: ``base`` doubling, at most ``PLATFORM_RETRY_CAP_S``."""
    if deliveries >= 32:  # 2**31 seconds is far past the cap anyway
        return PLATFORM_RETRY_CAP_S
    return min(PLATFORM_RETRY_CAP_S, retry_delay(max(base, 0.1), deliveries))
