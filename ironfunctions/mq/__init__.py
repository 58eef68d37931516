"""Async queues, chosen by URL: ``memory://``, ``sqlite:///path``, ``redis[s]://...``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ironfunctions.errors import ConfigError
from ironfunctions.mq.interface import AppUsage, IMessageQueue, Lease, QueueItem, QueueLimits, Reservation

__all__ = ["AppUsage", "IMessageQueue", "Lease", "QueueItem", "QueueLimits", "Reservation", "queue_from_url"]


def queue_from_url(url: str, reactor: Any) -> IMessageQueue:
    """Build (not connect) the queue ``url`` names. Raise ``ConfigError`` naming MQ_URL."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ironfunctions.mq.memory import MemoryQueue

        return MemoryQueue(reactor)
    if scheme == "sqlite":
        from ironfunctions.mq.sqlite import SqliteQueue
        from ironfunctions.storage.urls import sqlite_path

        return SqliteQueue(sqlite_path(url, "MQ_URL"), reactor)
    if scheme in ("redis", "rediss"):
        from ironfunctions.mq.redis import RedisQueue

        return RedisQueue.from_url(url, reactor)
    raise ConfigError(f"MQ_URL: unsupported scheme {scheme!r} (use memory://, sqlite:///, redis:// or rediss://)")
