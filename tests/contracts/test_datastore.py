"""The datastore contract: every IDatastore provider behaves exactly like this.

Run against memory, SQLite and Postgres (the ``datastore`` fixture in conftest.py is
parametrized over every provider; a real backend that cannot start fails, never skips).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NoReturn, cast

import attrs
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    RouteAlreadyExists,
    RouteNotFound,
    ValidationError,
)
from ironfunctions.models import App, Route


def test_provides_IDatastore(datastore: IDatastore) -> None:
    """The provider fully implements the interface."""
    assert verifyObject(IDatastore, datastore)


@pytest_twisted.ensureDeferred
async def test_ping_answers(datastore: IDatastore) -> None:
    await datastore.ping()


@pytest_twisted.ensureDeferred
async def test_insert_and_get_app_round_trips_config(datastore: IDatastore) -> None:
    app = App("myapp", {"K": "v", "unicode": "żółw ☃"})
    assert await datastore.insert_app(app) == app
    assert await datastore.get_app("myapp") == app


@pytest_twisted.ensureDeferred
async def test_insert_app_twice_fails_with_AppAlreadyExists(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    with pytest.raises(AppAlreadyExists):
        await datastore.insert_app(App("a", {"x": "y"}))
    assert await datastore.get_app("a") == App("a")


@pytest_twisted.ensureDeferred
async def test_get_missing_app_fails_with_AppNotFound(datastore: IDatastore) -> None:
    with pytest.raises(AppNotFound):
        await datastore.get_app("nope")


@pytest_twisted.ensureDeferred
async def test_get_apps_is_sorted_by_name(datastore: IDatastore) -> None:
    for name in ["b", "C", "a", "a_1"]:
        await datastore.insert_app(App(name))
    assert [a.name for a in await datastore.get_apps()] == sorted(["b", "C", "a", "a_1"])


@pytest_twisted.ensureDeferred
async def test_update_app_applies_change_and_keeps_name(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a", {"x": "1"}))
    new = await datastore.update_app("a", lambda app: attrs.evolve(app, name="zzz", config={"y": "2"}))
    assert new == App("a", {"y": "2"})
    assert await datastore.get_app("a") == new
    with pytest.raises(AppNotFound):
        await datastore.get_app("zzz")


@pytest_twisted.ensureDeferred
async def test_update_app_change_that_raises_writes_nothing(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a", {"x": "1"}))

    def bad(app: App) -> NoReturn:
        raise ValidationError("no")

    with pytest.raises(ValidationError):
        await datastore.update_app("a", bad)
    assert await datastore.get_app("a") == App("a", {"x": "1"})


@pytest_twisted.ensureDeferred
async def test_update_missing_app_fails_with_AppNotFound(datastore: IDatastore) -> None:
    with pytest.raises(AppNotFound):
        await datastore.update_app("nope", lambda app: app)


@pytest_twisted.ensureDeferred
async def test_remove_app(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.remove_app("a")
    with pytest.raises(AppNotFound):
        await datastore.get_app("a")
    with pytest.raises(AppNotFound):
        await datastore.remove_app("a")


@pytest_twisted.ensureDeferred
async def test_remove_app_with_routes_fails_with_AppHasRoutes(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_route(Route("a", "/r", "img"))
    with pytest.raises(AppHasRoutes):
        await datastore.remove_app("a")
    assert await datastore.get_app("a") == App("a")


FULL_ROUTE = Route(
    app_name="a",
    path="/deep/path",
    image="repo/image:1.2",
    memory=256,
    headers={"X-Multi": ["1", "2"], "Content-Type": ["application/json"]},
    type="async",
    format="http",
    max_concurrency=4,
    timeout=120,
    idle_timeout=5,
    config={"K": "v"},
    jwt_key="secret",
)


@pytest_twisted.ensureDeferred
async def test_every_route_field_persists_including_jwt_key(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    assert await datastore.insert_route(FULL_ROUTE) == FULL_ROUTE
    assert await datastore.get_route("a", "/deep/path") == FULL_ROUTE


@pytest_twisted.ensureDeferred
async def test_insert_route_without_app_fails_with_AppNotFound(datastore: IDatastore) -> None:
    with pytest.raises(AppNotFound):
        await datastore.insert_route(Route("ghost", "/r", "img"))


@pytest_twisted.ensureDeferred
async def test_insert_route_twice_fails_with_RouteAlreadyExists(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_route(Route("a", "/r", "img"))
    with pytest.raises(RouteAlreadyExists):
        await datastore.insert_route(Route("a", "/r", "other"))
    assert (await datastore.get_route("a", "/r")).image == "img"


@pytest_twisted.ensureDeferred
async def test_same_path_in_two_apps_is_two_routes(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_app(App("b"))
    await datastore.insert_route(Route("a", "/r", "img-a"))
    await datastore.insert_route(Route("b", "/r", "img-b"))
    assert (await datastore.get_route("a", "/r")).image == "img-a"
    assert (await datastore.get_route("b", "/r")).image == "img-b"


@pytest_twisted.ensureDeferred
async def test_get_missing_route_fails_with_RouteNotFound(datastore: IDatastore) -> None:
    with pytest.raises(RouteNotFound):
        await datastore.get_route("nope", "/r")
    await datastore.insert_app(App("a"))
    with pytest.raises(RouteNotFound):
        await datastore.get_route("a", "/r")


@pytest_twisted.ensureDeferred
async def test_put_route_creates_then_replaces(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    route, created = await datastore.put_route(Route("a", "/r", "one", memory=64))
    assert created and route.image == "one"
    route, created = await datastore.put_route(Route("a", "/r", "two"))
    assert not created
    assert await datastore.get_route("a", "/r") == Route("a", "/r", "two")
    with pytest.raises(AppNotFound):
        await datastore.put_route(Route("ghost", "/r", "img"))


@pytest_twisted.ensureDeferred
async def test_get_routes_filters_by_app_and_image_sorted(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_app(App("b"))
    await datastore.insert_route(Route("b", "/y", "img1"))
    await datastore.insert_route(Route("a", "/z", "img2"))
    await datastore.insert_route(Route("a", "/x", "img1"))
    keys: Callable[[list[Route]], list[tuple[str, str]]] = lambda routes: [r.key for r in routes]  # noqa: E731
    assert keys(await datastore.get_routes()) == [("a", "/x"), ("a", "/z"), ("b", "/y")]
    assert keys(await datastore.get_routes(app_name="a")) == [("a", "/x"), ("a", "/z")]
    assert keys(await datastore.get_routes(image="img1")) == [("a", "/x"), ("b", "/y")]
    assert keys(await datastore.get_routes(app_name="a", image="img1")) == [("a", "/x")]
    assert await datastore.get_routes(app_name="nope") == []


@pytest_twisted.ensureDeferred
async def test_update_route_applies_change_and_keeps_identity(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_route(FULL_ROUTE)
    new = await datastore.update_route(
        "a", "/deep/path", lambda r: attrs.evolve(r, path="/other", image="new", jwt_key="")
    )
    assert new == attrs.evolve(FULL_ROUTE, image="new", jwt_key="")
    assert await datastore.get_route("a", "/deep/path") == new
    with pytest.raises(RouteNotFound):
        await datastore.update_route("a", "/missing", lambda r: r)


@pytest_twisted.ensureDeferred
async def test_update_route_change_that_raises_writes_nothing(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_route(FULL_ROUTE)

    def bad(route: Route) -> NoReturn:
        raise ValidationError("no")

    with pytest.raises(ValidationError):
        await datastore.update_route("a", "/deep/path", bad)
    assert await datastore.get_route("a", "/deep/path") == FULL_ROUTE


@pytest_twisted.ensureDeferred
async def test_remove_route(datastore: IDatastore) -> None:
    await datastore.insert_app(App("a"))
    await datastore.insert_route(Route("a", "/r", "img"))
    await datastore.remove_route("a", "/r")
    with pytest.raises(RouteNotFound):
        await datastore.get_route("a", "/r")
    with pytest.raises(RouteNotFound):
        await datastore.remove_route("a", "/r")
    await datastore.remove_app("a")


@pytest_twisted.ensureDeferred
async def test_extras_store_bytes_and_replace(datastore: IDatastore) -> None:
    assert await datastore.get_extra("k") is None
    await datastore.put_extra("k", b"\x00\xffvalue")
    assert await datastore.get_extra("k") == b"\x00\xffvalue"
    await datastore.put_extra("k", b"second")
    assert await datastore.get_extra("k") == b"second"


@pytest_twisted.ensureDeferred
async def test_sqlite_start_can_be_retried_after_a_failure(tmp_path: Path) -> None:
    """A failed start (here: the folder cannot be created) leaves the datastore able to
    start later, as BackendService retries it; close always frees its thread."""
    import os

    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads

    from ironfunctions.datastore.sqlite import SqliteDatastore, sqlite_database
    from ironfunctions.errors import DatastoreUnavailable

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    database = sqlite_database(str(blocker / "ds.db"), cast(IReactorFromThreads, reactor))
    ds = SqliteDatastore(database)
    with pytest.raises(DatastoreUnavailable):
        await ds.start()
    os.remove(blocker)
    await ds.start()
    await ds.ping()
    await ds.close()
    assert database.stopped
