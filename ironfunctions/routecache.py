"""Route lookups for the invocation path, cached per node.

``/r/`` must not hit the datastore on every call, yet several nodes share one datastore:
a route deleted or changed through another node must stop being served soon. Each entry
(found or not found) lives at most ``ttl`` seconds (default 1 s), which is the bound on
staleness across nodes; changes made through this node's API invalidate at once.
Concurrent misses for one key share a single datastore query. App configs (which the
invocation path needs too) are cached the same way, with the same bound.
"""

from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import AppNotFound, RouteNotFound
from ironfunctions.models import Route

DEFAULT_TTL_S = 1.0


class RouteCache:
    """``await cache.lookup(app, path)`` -> Route, or AppNotFound / RouteNotFound."""

    def __init__(self, datastore: IDatastore, clock: IReactorTime, ttl: float = DEFAULT_TTL_S) -> None:
        self._datastore = datastore
        self._clock = clock
        self._ttl = ttl
        # key -> (expires_at, Route or the exception to raise)
        self._entries: dict[tuple[str, str], tuple[float, Route | Exception]] = {}
        self._pending: dict[tuple[str, str], Deferred[Route | Exception]] = {}
        self._generation = 0  # bumped by every invalidate
        self._listeners: list[Callable[[str, str | None], None]] = []
        self._configs: dict[str, tuple[float, Mapping[str, str]]] = {}

    async def lookup(self, app_name: str, path: str) -> Route:
        key = (app_name, path)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
            return _unwrap(entry[1])
        shared = self._pending.get(key)
        if shared is None:
            shared = Deferred.fromCoroutine(self._load_shared(key))
            if not shared.called:  # a store that answers at once leaves nothing pending
                self._pending[key] = shared
        # Each caller waits on its own Deferred: cancelling one caller (a client that
        # went away) must not cancel the load the others wait for.
        mine: Deferred[Route | Exception] = Deferred()

        def hand_over(result: Route | Exception) -> Route | Exception:
            if not mine.called:
                mine.callback(result)
            return result

        shared.addCallback(hand_over)
        return _unwrap(await mine)

    async def _load_shared(self, key: tuple[str, str]) -> Route | Exception:
        """Load ``key`` once for every caller waiting on it; never fails (an error is
        the value). A load that an invalidate overtook is not cached."""
        generation = self._generation
        try:
            result = await self._load(*key)
        except Exception as e:  # e.g. DatastoreUnavailable: given to the callers, not cached
            self._pending.pop(key, None)
            return e
        self._pending.pop(key, None)
        if generation == self._generation:
            if len(self._entries) > 100_000:  # bound memory under path scans
                self._entries.clear()
            self._entries[key] = (self._clock.seconds() + self._ttl, result)
        return result

    async def _load(self, app_name: str, path: str) -> Route | Exception:
        try:
            return await self._datastore.get_route(app_name, path)
        except RouteNotFound as not_found:
            try:
                await self._datastore.get_app(app_name)
            except AppNotFound as app_missing:
                return app_missing
            return not_found

    async def app_config(self, app_name: str) -> Mapping[str, str]:
        """The app's config (empty for a missing app: ``lookup`` reports that)."""
        entry = self._configs.get(app_name)
        now = self._clock.seconds()
        if entry is not None and entry[0] > now:
            return entry[1]
        try:
            config: Mapping[str, str] = (await self._datastore.get_app(app_name)).config
        except AppNotFound:
            config = {}
        if len(self._configs) > 10_000:
            self._configs.clear()
        self._configs[app_name] = (now + self._ttl, config)
        return config

    def invalidate(self, app_name: str, path: str | None = None) -> None:
        """Forget what is cached for one route (or, with no path, a whole app) and tell
        listeners (e.g. hot-container pools, which retire the route's containers)."""
        self._generation += 1
        self._configs.pop(app_name, None)
        if path is None:
            for key in [k for k in self._entries if k[0] == app_name]:
                del self._entries[key]
        else:
            self._entries.pop((app_name, path), None)
        for listener in self._listeners:
            listener(app_name, path)

    def on_invalidate(self, listener: Callable[[str, str | None], None]) -> None:
        """Call ``listener(app_name, path_or_None)`` whenever this node changes routes."""
        self._listeners.append(listener)


def _unwrap(result: Route | Exception) -> Route:
    if isinstance(result, Exception):
        raise type(result)(*result.args)  # a fresh one: no traceback piles up on the cached one
    return result
