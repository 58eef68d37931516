"""The per-node route cache: bounded staleness, negative entries, shared misses."""

from typing import cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.errors import AppNotFound, DatastoreUnavailable, RouteNotFound
from ironfunctions.metrics import MemoryMetrics
from ironfunctions.models import App, Route
from ironfunctions.routecache import RouteCache
from tests.sync import run


class CountingDatastore(MemoryDatastore):
    """Counts route reads; ``down`` makes every read fail as a dead store's would."""

    def __init__(self) -> None:
        super().__init__()
        self.route_reads = 0
        self.app_reads = 0
        self.down = False

    async def get_route(self, app_name: str, path: str) -> Route:
        self.route_reads += 1
        if self.down:
            raise DatastoreUnavailable()
        return await super().get_route(app_name, path)

    async def get_app(self, app_name: str) -> App:
        self.app_reads += 1
        if self.down:
            raise DatastoreUnavailable()
        return await super().get_app(app_name)




def hold_route_reads(ds: CountingDatastore, read_first: bool = False) -> Deferred[None]:
    """Route reads wait for the returned Deferred: before reading the route, or (with
    ``read_first``) after it, so a change made meanwhile is not in the value read."""
    gate: Deferred[None] = Deferred()
    original = ds.get_route

    async def held(app: str, path: str) -> Route:
        if read_first:
            route = await original(app, path)
            await gate
            return route
        await gate
        return await original(app, path)

    ds.get_route = held  # type: ignore[method-assign,assignment]  # the test swaps in a held read
    return gate


def setup(stale: float = 0.0, metrics: MemoryMetrics | None = None) -> tuple[CountingDatastore, Clock, RouteCache]:
    ds = CountingDatastore()
    run(ds.insert_app(App("a", {"K": "v"})))
    run(ds.insert_route(Route("a", "/r", "img")))
    clock = Clock()
    return ds, clock, RouteCache(ds, clock, ttl=1.0, stale=stale, metrics=metrics)


def test_hits_do_not_touch_the_datastore_until_ttl() -> None:
    ds, clock, cache = setup()
    for _ in range(5):
        assert run(cache.lookup("a", "/r")).image == "img"
    assert ds.route_reads == 1
    clock.advance(1.01)
    run(cache.lookup("a", "/r"))
    assert ds.route_reads == 2


def test_change_through_another_node_is_seen_within_ttl() -> None:
    ds, clock, cache = setup()
    run(cache.lookup("a", "/r"))
    run(ds.remove_route("a", "/r"))  # as another node would
    assert run(cache.lookup("a", "/r")).image == "img"  # still within the bound
    clock.advance(1.01)
    with pytest.raises(RouteNotFound):
        run(cache.lookup("a", "/r"))


def test_missing_app_and_missing_route_are_told_apart_and_cached() -> None:
    ds, clock, cache = setup()
    with pytest.raises(AppNotFound):
        run(cache.lookup("ghost", "/r"))
    with pytest.raises(RouteNotFound):
        run(cache.lookup("a", "/nope"))
    with pytest.raises(RouteNotFound):
        run(cache.lookup("a", "/nope"))
    assert ds.route_reads == 2


def test_invalidate_is_immediate_and_tells_listeners() -> None:
    ds, clock, cache = setup()
    seen = []
    cache.on_invalidate(lambda app, path: seen.append((app, path)))
    run(cache.lookup("a", "/r"))
    run(ds.update_route("a", "/r", lambda r: Route("a", "/r", "new")))
    cache.invalidate("a", "/r")
    assert run(cache.lookup("a", "/r")).image == "new"
    cache.invalidate("a")
    assert seen == [("a", "/r"), ("a", None)]


def test_concurrent_misses_share_one_query() -> None:
    ds, clock, cache = setup()
    gate = hold_route_reads(ds)
    results: list[Route] = []
    for _ in range(3):
        Deferred.fromCoroutine(cache.lookup("a", "/r")).addCallback(results.append)
    gate.callback(None)
    assert [r.image for r in results] == ["img"] * 3
    assert ds.route_reads == 1


def test_app_configs_are_cached_within_the_bound_and_invalidated_with_the_app() -> None:
    ds, clock, cache = setup()
    run(ds.update_app("a", lambda app: App("a", {"K": "1"})))
    assert run(cache.app_config("a")) == {"K": "1"}
    run(ds.update_app("a", lambda app: App("a", {"K": "2"})))
    assert run(cache.app_config("a")) == {"K": "1"}  # within the bound
    clock.advance(1.01)
    assert run(cache.app_config("a")) == {"K": "2"}
    run(ds.update_app("a", lambda app: App("a", {"K": "3"})))
    cache.invalidate("a")
    assert run(cache.app_config("a")) == {"K": "3"}
    assert run(cache.app_config("ghost")) == {}


def test_a_cancelled_caller_does_not_fail_the_others_waiting_on_the_same_load() -> None:
    ds, clock, cache = setup()
    gate = hold_route_reads(ds)
    first = Deferred.fromCoroutine(cache.lookup("a", "/r"))
    second = Deferred.fromCoroutine(cache.lookup("a", "/r"))
    first.cancel()
    first.addErrback(lambda f: None)
    results: list[Route] = []
    second.addCallback(results.append)
    gate.callback(None)
    assert [r.image for r in results] == ["img"]


def test_a_load_overtaken_by_an_invalidate_is_not_cached() -> None:
    ds, clock, cache = setup()
    original = ds.get_route
    gate = hold_route_reads(ds, read_first=True)
    pending = Deferred.fromCoroutine(cache.lookup("a", "/r"))  # read "img", now waits
    ds.get_route = original  # type: ignore[method-assign]  # the test puts the plain read back
    run(ds.update_route("a", "/r", lambda r: Route("a", "/r", "new")))
    cache.invalidate("a", "/r")
    gate.callback(None)
    assert cast(Route, pending.result).image == "img"  # that caller got what it asked for
    assert run(cache.lookup("a", "/r")).image == "new"  # but it was not cached


# -- While the datastore is down (SPEC §10)


def test_a_known_route_and_its_app_config_are_served_stale_while_the_store_is_down() -> None:
    metrics = MemoryMetrics()
    ds, clock, cache = setup(stale=600, metrics=metrics)
    assert run(cache.lookup("a", "/r")).image == "img"
    assert run(cache.app_config("a")) == {"K": "v"}
    ds.down = True
    for _ in range(3):
        clock.advance(1.01)  # past the TTL: each lookup tries a refresh, which fails
        assert run(cache.lookup("a", "/r")).image == "img"
        assert run(cache.app_config("a")) == {"K": "v"}
    assert metrics.total("routes.stale_served", app="a", path="/r") == 3
    ds.down = False
    run(ds.update_route("a", "/r", lambda r: Route("a", "/r", "new")))  # as another node would
    clock.advance(1.01)
    assert run(cache.lookup("a", "/r")).image == "new"  # the store is back: fresh again
    assert metrics.total("routes.stale_served") == 3


def test_stale_entries_are_served_only_up_to_the_stale_bound() -> None:
    ds, clock, cache = setup(stale=10)
    run(cache.lookup("a", "/r"))
    run(cache.app_config("a"))
    ds.down = True
    clock.advance(9.5)
    assert run(cache.lookup("a", "/r")).image == "img"
    assert run(cache.app_config("a")) == {"K": "v"}
    clock.advance(1.0)  # read 10.5 s ago: too old
    with pytest.raises(DatastoreUnavailable):
        run(cache.lookup("a", "/r"))
    with pytest.raises(DatastoreUnavailable):
        run(cache.app_config("a"))
    clock.advance(1.01)
    with pytest.raises(DatastoreUnavailable):  # and it stays so
        run(cache.lookup("a", "/r"))


def test_with_no_stale_window_an_outage_fails_lookups_once_the_ttl_is_over() -> None:
    ds, clock, cache = setup(stale=0)
    run(cache.lookup("a", "/r"))
    ds.down = True
    clock.advance(1.01)
    with pytest.raises(DatastoreUnavailable):
        run(cache.lookup("a", "/r"))


def test_unknown_routes_and_routes_known_missing_fail_during_an_outage() -> None:
    ds, clock, cache = setup(stale=600)
    with pytest.raises(RouteNotFound):
        run(cache.lookup("a", "/nope"))
    ds.down = True
    clock.advance(1.01)
    with pytest.raises(DatastoreUnavailable):
        run(cache.lookup("a", "/nope"))
    with pytest.raises(DatastoreUnavailable):
        run(cache.lookup("a", "/never-seen"))


def test_a_dead_store_is_asked_at_most_once_per_key_per_ttl() -> None:
    ds, clock, cache = setup(stale=600)
    run(cache.lookup("a", "/r"))
    ds.down = True
    reads = ds.route_reads
    for step in range(50):  # 5 s of calls, every 0.1 s
        clock.advance(0.1)
        assert run(cache.lookup("a", "/r")).image == "img"
        with pytest.raises(DatastoreUnavailable):
            run(cache.lookup("a", "/unknown"))
    # 5 s at most one read per TTL for each of the two keys (plus one at the start)
    assert ds.route_reads - reads <= 2 * 6


def test_concurrent_lookups_during_an_outage_share_one_query() -> None:
    ds, clock, cache = setup(stale=600)
    run(cache.lookup("a", "/r"))
    clock.advance(1.01)
    gate = hold_route_reads(ds)
    ds.down = True
    reads = ds.route_reads
    results: list[Route] = []
    for _ in range(3):
        Deferred.fromCoroutine(cache.lookup("a", "/r")).addCallback(results.append)
    gate.callback(None)
    assert [r.image for r in results] == ["img"] * 3
    assert ds.route_reads - reads == 1


def test_a_full_cache_keeps_routes_it_may_serve_stale_over_a_scan_of_missing_paths() -> None:
    from ironfunctions import routecache

    ds, clock, cache = setup(stale=600)
    run(cache.lookup("a", "/r"))
    limit = 100
    original = routecache.MAX_ROUTES
    routecache.MAX_ROUTES = limit
    try:
        for n in range(3 * limit):  # a path scan
            with pytest.raises(RouteNotFound):
                run(cache.lookup("a", f"/scan{n}"))
        assert len(cache._entries) <= limit
        ds.down = True
        clock.advance(1.01)
        assert run(cache.lookup("a", "/r")).image == "img"
    finally:
        routecache.MAX_ROUTES = original
