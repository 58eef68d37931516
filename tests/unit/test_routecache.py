"""The per-node route cache: bounded staleness, negative entries, shared misses."""

from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.errors import AppNotFound, RouteNotFound
from ironfunctions.models import App, Route
from ironfunctions.routecache import RouteCache
from tests.sync import run


class CountingDatastore(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.route_reads = 0

    async def get_route(self, app_name: str, path: str) -> Route:
        self.route_reads += 1
        return await super().get_route(app_name, path)




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


def setup() -> tuple[CountingDatastore, Clock, RouteCache]:
    ds = CountingDatastore()
    run(ds.insert_app(App("a")))
    run(ds.insert_route(Route("a", "/r", "img")))
    clock = Clock()
    return ds, clock, RouteCache(ds, clock, ttl=1.0)


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
