"""Memory backends that fail on demand, for outage tests: ``store.fail("update_call", 2)``
makes the next two calls of that method raise the backend's "unavailable" error, as a
Postgres or Redis restart would; ``store.down = True`` fails every call until set back."""

from __future__ import annotations

from typing import Any

from ironfunctions import errors
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.mq.memory import MemoryQueue


class _Flaky:
    unavailable: type[Exception] = Exception

    def _init_flaky(self) -> None:
        self.failing: dict[str, int] = {}
        self.failed: list[str] = []  # method names, in the order they failed
        self.down = False

    def fail(self, method: str, times: int = 1) -> None:
        self.failing[method] = self.failing.get(method, 0) + times

    def _check(self, method: str) -> None:
        if self.down:
            self.failed.append(method)
            raise self.unavailable(f"{method}: backend down")
        if self.failing.get(method, 0) > 0:
            self.failing[method] -= 1
            self.failed.append(method)
            raise self.unavailable(f"{method}: backend down")


def _wrap(name: str) -> Any:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(name)
        return await getattr(super(type(self), self), name)(*args, **kwargs)

    method.__name__ = name
    return method


class FlakyCallStore(MemoryCallStore, _Flaky):
    unavailable = errors.DatastoreUnavailable

    def __init__(self) -> None:
        super().__init__()
        self._init_flaky()

    put_calls = _wrap("put_calls")
    get_call = _wrap("get_call")
    update_call = _wrap("update_call")
    put_log = _wrap("put_log")
    put_async = _wrap("put_async")
    get_request = _wrap("get_request")
    list_unfinished = _wrap("list_unfinished")


class FlakyQueue(MemoryQueue, _Flaky):
    unavailable = errors.QueueUnavailable

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self._init_flaky()

    push = _wrap("push")
    reserve = _wrap("reserve")
    ack = _wrap("ack")
    renew = _wrap("renew")
    release = _wrap("release")
    holds = _wrap("holds")
