"""The async worker's companion while a call runs: its lease and its cancel.

Split from ``async_worker.py`` (which must stay small): a running async call's lease is
renewed every third of it, and a cancel made through any node stops its container.
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
