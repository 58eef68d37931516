"""Running a coroutine of fakes to its end at once, in unit tests with no reactor."""

from __future__ import annotations

from typing import Any, Coroutine

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The result of ``coro``, which must finish without waiting on anything outside it
    (fakes answer at once; a test that needs time drives a ``Clock`` instead); a failure
    is raised."""
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "coroutine did not finish synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]
