"""The async worker's companion while a call runs: its lease and its cancel.

Split from ``async_worker.py`` (which must stay small): a running async call's lease is
renewed every third of it, a cancel made through any node stops its container, and a
call given back while the queue is down is given back once it returns.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ironfunctions import errors
from ironfunctions.calls.interface import ICallStore
from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CallStatus
from ironfunctions.mq.interface import IMessageQueue, Reservation

log = Logger()


async def keep_lease(queue: IMessageQueue, calls: ICallStore, kill_call: Callable[[str], Awaitable[Any]],
                     clock: IReactorTime, held: Reservation, lease: float, record: CallRecord) -> None:
    """Until cancelled (the call ended): renew the lease every third of it, and stop
    the call's container once its record says ``cancelled``. A passing outage of the
    queue or store is tried again next tick; a lost lease ends the watch."""
    interval = max(0.5, min(lease / 3, 5.0))
    try:
        while True:
            await deferLater(clock, interval, lambda: None)
            try:
                await queue.renew(held, lease)
                current = await calls.get_call(record.app_name, record.id)
            except errors.LeaseLost:
                log.warn("Lease of {call_id} lost while running", call_id=record.id)
                return
            except CancelledError:  # the call ended: stop (CancelledError is an Exception)
                raise
            except Exception as e:  # a passing outage: try again next tick
                log.warn("Could not renew {call_id}: {error}", call_id=record.id, error=str(e))
                continue
            if current.status == CallStatus.CANCELLED:
                log.info("Call {call_id} cancelled while running; stopping it", call_id=record.id)
                try:
                    await kill_call(record.id)
                except Exception as e:  # engine trouble: the call runs to its timeout
                    log.warn("Could not stop cancelled call {call_id}: {error}", call_id=record.id, error=str(e))
                return
    except CancelledError:
        return


RELEASE_RETRY_S = 1.0  # a release the queue refused (it is down) is tried again this often


async def release_patiently(queue: IMessageQueue, held: Reservation, delay: float, clock: IReactorTime,
                            sleep: Callable[[float], Awaitable[None]], running: Callable[[], bool],
                            give_up_after: float) -> None:
    """Release ``held`` (visible again after ``delay``). While the queue is down, try
    again every ``RELEASE_RETRY_S`` (with ``sleep``, which the worker cancels at stop):
    a call given back the moment the queue returns runs then, not when its lease runs
    out. Once ``give_up_after`` seconds have passed (its lease has run out by then
    anyway), or when not ``running`` any more, leave it to the lease."""
    give_up = clock.seconds() + give_up_after
    retried = False
    while True:
        try:
            await queue.release(held, delay)
        except errors.QueueUnavailable as e:
            if not retried:
                log.warn("Could not release {call_id} ({error}); trying again while the queue is down",
                         call_id=held.call_id, error=str(e))
            retried = True
            if not running() or clock.seconds() + RELEASE_RETRY_S >= give_up:
                log.warn("Could not release {call_id}: its lease gives it back instead", call_id=held.call_id)
                return
            try:
                await sleep(RELEASE_RETRY_S)
            except CancelledError:  # stopping: the lease gives it back
                return
            continue
        except Exception as e:  # lease lost, or a bug: its lease (if any) expires instead
            log.warn("Could not release {call_id}: {error}", call_id=held.call_id, error=str(e))
            return
        if retried:
            log.info("Released {call_id} now that the queue is back", call_id=held.call_id)
        return


async def write_unless_cancelled(calls: ICallStore, record: CallRecord) -> bool:
    """Replace the stored record by ``record`` in one atomic step, unless the call was
    cancelled (by any node) since it was read; return whether it was written. A
    read-then-put would let a cancel landing in between be overwritten."""

    def change(current: CallRecord) -> CallRecord:
        if current.status == CallStatus.CANCELLED:
            raise errors.CallCompleted()
        return record

    try:
        await calls.update_call(record.app_name, record.id, change)
    except errors.CallCompleted:
        return False
    return True
