"""A route changed through one worker process is changed for all of the node's workers.

Each worker keeps its own route cache and hot pools. A route updated or deleted through
the API of one worker (``RouteCache.invalidate``) must retire the route's hot
containers and forget the cached route in every worker at once, as in one process
(SPEC §4: a route change retires its containers), not when each worker's cache entry
happens to expire: the worker that took the change tells the parent
(``route_changed``), which tells the others.
"""

from __future__ import annotations

from typing import Any

from ironfunctions.routecache import RouteCache
from ironfunctions.workers.slots import Channel


class RouteChangeRelay:
    """The parent's side: a route change reported by one worker goes to the others."""

    def __init__(self) -> None:
        self._links: dict[int, Channel] = {}

    def attach(self, worker: int, link: Channel) -> None:
        self._links[worker] = link
        link.handle("route_changed", lambda app, path: self._relay(worker, app, path))

    def detach(self, worker: int) -> None:
        self._links.pop(worker, None)

    def _relay(self, origin: int, app: str, path: Any) -> None:
        for worker, link in list(self._links.items()):
            if worker != origin:
                link.notify("route_changed", app, path)


def share_route_changes(link: Channel, routes: RouteCache) -> None:
    """A worker's side: its route changes go to the parent; the siblings' are applied
    to ``routes`` (its listeners, the hot pools, retire the route's containers)."""
    applying = False

    def changed_here(app: str, path: str | None) -> None:
        if not applying:
            link.notify("route_changed", app, path)

    def changed_elsewhere(app: str, path: Any) -> None:
        nonlocal applying
        applying = True
        try:
            routes.invalidate(app, None if path is None else str(path))
        finally:
            applying = False

    routes.on_invalidate(changed_here)
    link.handle("route_changed", changed_elsewhere)
