"""What a hot container reports to the pool that owns it.

A ``HotContainer`` (``runner/hot_container.py``) knows when it has finished a call,
died, misbehaved or stayed idle too long; what follows (the next call, a replacement,
the removal, the slot) is its pool's business (``runner/hot_pool.py``). The container
tells its owner through this narrow interface instead of reaching into the pool, and
this module sits below both so neither imports the other's module for it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred

C_contra = TypeVar("C_contra", contravariant=True)


class ContainerOwner(Protocol[C_contra]):
    """The owner of hot containers of type ``C_contra`` (the pool of one route)."""

    def available(self, container: C_contra) -> None:
        """``container`` finished its call (or has just started) and can take the
        next one."""

    def kill(self, container: C_contra) -> Deferred[None]:
        """``container`` misbehaved (or its call overran its timeout or was
        cancelled): take it out of service and remove it. The Deferred fires once it
        is gone (never fails)."""

    def exited(self, container: C_contra) -> None:
        """``container``'s function exited on its own: it serves no more calls."""

    def idle_expired(self, container: C_contra) -> None:
        """``container`` was idle for the route's ``idle_timeout``: stop it."""
