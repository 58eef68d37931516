"""The cancel bus (``interface.py``), chosen by the queue's URL: Redis pub/sub when
``MQ_URL`` is Redis (nodes share it), in memory otherwise (a single node)."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime

from ironfunctions.cancelbus.interface import CancelHandler, ICancelBus
from ironfunctions.mq.interface import IMessageQueue

__all__ = ["CancelHandler", "ICancelBus", "cancel_bus_for"]


def cancel_bus_for(mq_url: str, queue: IMessageQueue, clock: IReactorTime) -> ICancelBus:
    """The bus of the nodes sharing ``queue`` (built from ``mq_url``, not started)."""
    if urlsplit(mq_url).scheme in ("redis", "rediss"):
        from ironfunctions.cancelbus.redis import RedisCancelBus
        from ironfunctions.mq.redis import RedisQueue

        assert isinstance(queue, RedisQueue)
        return RedisCancelBus(queue, clock)
    from ironfunctions.cancelbus.memory import MemoryCancelBus

    return MemoryCancelBus()
