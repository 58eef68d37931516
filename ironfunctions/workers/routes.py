"""A route changed through one worker process is changed for all of the node's workers.

Each worker keeps its own route cache and hot pools. A route updated or deleted through
the API of one worker (``RouteCache.invalidate``) must retire the route's hot
containers and forget the cached route in every worker at once, as in one process
(SPEC §4: a route change retires its containers), not when each worker's cache entry
happens to expire: the worker that took the change tells the parent
(``route_changed``), which tells the others.

While the datastore is down (SPEC §10), a worker serves the routes it read lately from
its cache (``ROUTE_CACHE_STALE``); a route only a sibling has read is asked of the
siblings through the parent (``route_known``), so the node serves every route any of
its workers knows, as one process would.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ironfunctions.models import Route
from ironfunctions.routecache import RouteCache
from ironfunctions.workers.channel import Channel, Relay
from ironfunctions.workers.wire import route_from_tuple, route_tuple

ASK_TIMEOUT_S = 1.0  # a sibling's answer during an outage: short against a call's wait


class RouteChangeRelay(Relay):
    """The parent's side: a route change reported by one worker goes to the others."""

    def serve(self, worker: int, link: Channel) -> None:
        link.handle("route_changed", lambda app, path: self._relay(worker, app, path))
        link.handle("route_known", lambda app, path: Deferred.fromCoroutine(self._known(worker, app, path)))

    async def _known(self, origin: int, app: str, path: str) -> Any:
        """The first sibling's answer that knows the route, or None."""
        for _, link in self.others(origin):
            try:
                found = await link.request("route_known_here", app, path)
            except Exception:
                continue
            if found is not None:
                return found
        return None

    def _relay(self, origin: int, app: str, path: Any) -> None:
        for _, link in self.others(origin):
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


def share_known_routes(link: Channel, routes: RouteCache, clock: IReactorTime) -> None:
    """A worker's side of ``route_known``: its siblings may ask what it knows, and it
    asks them while the store is down (``RouteCache.share_with``)."""

    def known_here(app: str, path: str) -> Any:
        found = routes.known(app, path)
        if found is None:
            return None
        read_at, route, config = found
        return (read_at, route_tuple(route, config or {}), config is not None)

    async def ask(app: str, path: str) -> tuple[float, Route, Mapping[str, str] | None] | None:
        found = await link.request("route_known", app, path).addTimeout(ASK_TIMEOUT_S, clock)
        if found is None:
            return None
        read_at, fields, has_config = found
        route, config = route_from_tuple(fields)
        return float(read_at), route, (config if has_config else None)

    link.handle("route_known_here", known_here)
    routes.share_with(ask)
