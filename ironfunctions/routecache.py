"""Route lookups for the invocation path, cached per node.

``/r/`` must not hit the datastore on every call, yet several nodes share one datastore:
a route deleted or changed through another node must stop being served soon. Each entry
(found or not found) lives at most ``ttl`` seconds (default 1 s), which is the bound on
staleness across nodes; changes made through this node's API invalidate at once.
Concurrent misses for one key share a single datastore query. App configs (which the
invocation path needs too) are cached the same way, with the same bound.

While the datastore is down (SPEC §10), a route found (and an app config read) up to
``stale`` seconds ago (``ROUTE_CACHE_STALE``) is served when its refresh fails, so sync
calls to routes this node knows keep working; each such answer counts in
``routes.stale_served``. A failed refresh is remembered for ``ttl`` too, so a dead store
gets at most one query per key per ``ttl``, however many calls arrive. A route not
known (or known only as missing) fails with the store's error: 503.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, Mapping, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import AppNotFound, RouteNotFound
from ironfunctions.metrics import COUNT, IMetrics
from ironfunctions.models import Route

DEFAULT_TTL_S = 1.0
MAX_ROUTES = 100_000  # bound memory under path scans
MAX_CONFIGS = 10_000

T = TypeVar("T")

# siblings(app, path): another worker's (read at, route, app config or None), or None.
Siblings = Callable[[str, str], Awaitable["tuple[float, Route, Mapping[str, str] | None] | None"]]


@attrs.frozen
class _Entry(Generic[T]):
    """A cached answer: ``value`` (a route, a config, or the exception to raise) is
    served until ``expires``; ``good`` is the last value read from the store and when
    (served stale while a refresh fails), if there is one."""

    expires: float
    value: T | Exception
    good: tuple[float, T] | None = None


class RouteCache:
    """``await cache.lookup(app, path)`` -> Route, or AppNotFound / RouteNotFound, or
    the store's error (e.g. DatastoreUnavailable) when it fails with nothing to serve."""

    def __init__(
        self, datastore: IDatastore, clock: IReactorTime, ttl: float = DEFAULT_TTL_S,
        stale: float = 0.0, metrics: IMetrics | None = None,
    ) -> None:
        self._datastore = datastore
        self._clock = clock
        self._ttl = ttl
        self._stale = stale
        self._metrics = metrics
        self._entries: dict[tuple[str, str], _Entry[Route]] = {}
        self._pending: dict[tuple[str, str], Deferred[Route | Exception]] = {}
        self._generation = 0  # bumped by every invalidate
        self._listeners: list[Callable[[str, str | None], None]] = []
        self._configs: dict[str, _Entry[Mapping[str, str]]] = {}
        self._siblings: Siblings | None = None

    async def lookup(self, app_name: str, path: str) -> Route:
        key = (app_name, path)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > self._clock.seconds():
            value = entry.value
            if not isinstance(value, Exception):  # the hot path: a route read within the TTL
                return value
            return self._served(entry, key)
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
        result = await mine
        entry = self._entries.get(key)
        if entry is not None and entry.value is result:
            return self._served(entry, key)
        return _unwrap(result)

    def _served(self, entry: _Entry[Route], key: tuple[str, str]) -> Route:
        """The route ``entry`` holds; a stale one (its refresh failed) is counted."""
        route = self._good_or_raise(entry)
        if entry.value is not route and self._metrics is not None:
            # many(): coalesced with the call's own figures, not a log line per call
            self._metrics.many(((COUNT, "routes.stale_served", 1),), app=key[0], path=key[1])
        return route

    def _good_or_raise(self, entry: _Entry[T]) -> T:
        """The value of ``entry``, or while its refresh fails the last good value up to
        ``stale`` seconds old; else raise (a fresh copy of) its error."""
        if not isinstance(entry.value, Exception):
            return entry.value
        if entry.good is not None and self._clock.seconds() - entry.good[0] <= self._stale:
            return entry.good[1]
        raise _fresh(entry.value)

    def share_with(self, siblings: Siblings) -> None:
        """With worker processes, each has its own cache: while the store is down, a
        route this worker never read is asked of ``siblings`` (``workers/routes.py``),
        so every worker serves what any of the node's workers knows."""
        self._siblings = siblings

    def known(self, app_name: str, path: str) -> tuple[float, Route, Mapping[str, str] | None] | None:
        """The last good route (and app config) read for ``(app_name, path)`` up to
        ``stale`` seconds ago, with when it was read; None if there is none."""
        entry = self._entries.get((app_name, path))
        if entry is None or entry.good is None or self._clock.seconds() - entry.good[0] > self._stale:
            return None
        config = self._configs.get(app_name)
        return entry.good[0], entry.good[1], (config.good[1] if config is not None and config.good else None)

    async def _from_siblings(self, key: tuple[str, str], error: Exception) -> _Entry[Route] | None:
        """An entry serving a sibling worker's last good route while the store fails."""
        if self._siblings is None or not self._stale:
            return None
        try:
            found = await self._siblings(*key)
        except Exception:
            return None
        if found is None or self._clock.seconds() - found[0] > self._stale:
            return None
        read_at, route, config = found
        now = self._clock.seconds()
        if config is not None and self._configs.get(key[0]) is None:
            self._configs[key[0]] = _Entry(now + self._ttl, error, (read_at, config))
        return _Entry(now + self._ttl, error, (read_at, route))

    async def _load_shared(self, key: tuple[str, str]) -> Route | Exception:
        """Load ``key`` once for every caller waiting on it; never fails (an error is
        the value). A load that an invalidate overtook is not cached."""
        generation = self._generation
        try:
            result = await self._load(*key)
        except Exception as e:  # e.g. DatastoreUnavailable
            result = e
        borrowed: _Entry[Route] | None = None
        if isinstance(result, Exception) and not isinstance(result, (AppNotFound, RouteNotFound)):
            old = self._entries.get(key)
            if old is None or old.good is None:
                borrowed = await self._from_siblings(key, result)
        self._pending.pop(key, None)
        if generation == self._generation:
            entry = borrowed or self._entry(self._entries.get(key), result)
            if len(self._entries) >= MAX_ROUTES:
                _shrink(self._entries, self._clock.seconds(), self._keep())
            self._entries[key] = entry
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

    def _entry(self, old: _Entry[T] | None, result: T | Exception) -> _Entry[T]:
        """The entry for a load's ``result``: a store error keeps the last good value
        while it is at most ``stale`` seconds old (served stale); a not-found drops it."""
        now = self._clock.seconds()
        if isinstance(result, (AppNotFound, RouteNotFound)):
            return _Entry(now + self._ttl, result)
        if isinstance(result, Exception):
            good = old.good if old is not None else None
            if good is not None and now - good[0] > self._stale:
                good = None
            return _Entry(now + self._ttl, result, good)
        return _Entry(now + self._ttl, result, (now, result))

    def _keep(self) -> float:
        """How long an entry may be of use after it was read."""
        return max(self._ttl, self._stale)

    async def app_config(self, app_name: str) -> Mapping[str, str]:
        """The app's config (empty for a missing app: ``lookup`` reports that); the
        last one read, up to ``stale`` seconds old, while the store fails."""
        entry = self._configs.get(app_name)
        if entry is None or entry.expires <= self._clock.seconds():
            generation = self._generation
            result: Mapping[str, str] | Exception
            try:
                result = (await self._datastore.get_app(app_name)).config
            except AppNotFound:
                result = {}
            except Exception as e:
                result = e
            entry = self._entry(self._configs.get(app_name), result)
            if generation == self._generation:
                if len(self._configs) >= MAX_CONFIGS:
                    _shrink(self._configs, self._clock.seconds(), self._keep())
                self._configs[app_name] = entry
        return self._good_or_raise(entry)

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


K = TypeVar("K")


def _shrink(entries: dict[K, _Entry[T]], now: float, keep: float) -> None:
    """Make room in a full cache: drop entries of no more use (expired, and nothing
    good to serve stale), then, if still more than half full, every entry without a
    good value (not-found answers of a path scan), then everything. Each step is one
    pass, and leaves at most half the bound, so the cost is amortised."""
    limit = len(entries) // 2
    for key in [k for k, e in entries.items()
                if e.expires <= now and (e.good is None or now - e.good[0] > keep)]:
        del entries[key]
    if len(entries) > limit:
        for key in [k for k, e in entries.items() if e.good is None]:
            del entries[key]
    if len(entries) > limit:
        entries.clear()


def _unwrap(result: Route | Exception) -> Route:
    if isinstance(result, Exception):
        raise _fresh(result)
    return result


def _fresh(error: Exception) -> Exception:
    """A copy of a cached ``error`` to raise: no traceback piles up on the cached one."""
    try:
        return type(error)(*error.args)
    except Exception:  # an exception class with another signature
        return error
