"""What the parent and its workers need of the link between them, and the parent's
side of one kind of message (``Relay``).

``Channel`` is what ``workers/link.py``'s ``Link`` offers (unit tests use a loopback
one). Each of the parent's parts that serves its workers (``SlotBroker``,
``ForwardRelay``, ``CancelRelay``, ``RouteChangeRelay``, ``GuardRelay``, ``NodeViews``)
is a ``Relay``: it keeps the live workers' links, and registers its handlers on each
link as the worker starts (``serve``).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

__all__ = ["Channel", "Relay"]


class Channel(Protocol):
    """A link between the parent and one worker."""

    def request(self, kind: str, *args: Any) -> Deferred[Any]: ...

    def notify(self, kind: str, *args: Any) -> None: ...

    def handle(self, kind: str, handler: Callable[..., Any]) -> None: ...


class Relay:
    """The parent's side of one kind of message: the links of the node's live workers."""

    def __init__(self) -> None:
        self._links: dict[int, Channel] = {}

    def attach(self, worker: int, link: Channel) -> None:
        """``worker`` started, with ``link``: serve it."""
        self._links[worker] = link
        self.serve(worker, link)

    def serve(self, worker: int, link: Channel) -> None:
        """Register this relay's handlers on ``worker``'s ``link``."""

    def detach(self, worker: int) -> None:
        """``worker`` is gone (its link with it)."""
        self._links.pop(worker, None)

    def others(self, worker: int | None = None) -> list[tuple[int, Channel]]:
        """The live workers' links, but ``worker``'s, by index."""
        return [(index, link) for index, link in sorted(self._links.items()) if index != worker]
