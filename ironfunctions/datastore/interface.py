"""The datastore interface: apps, routes and a small key/value "extras" store.

Every provider (memory, SQLite, Postgres) passes ``tests/contracts/test_datastore.py``.
Methods are coroutine functions (``async def``); awaiting them gives the documented value
or raises the documented domain exception. Any provider raises
``DatastoreUnavailable`` when its backend cannot be reached.
"""

from __future__ import annotations

from typing import Callable

from zope.interface import Interface

from ironfunctions.models import App, Route

AppChange = Callable[[App], App]
RouteChange = Callable[[Route], Route]


class IDatastore(Interface):
    """Where apps and routes live. Shared by every node of a cluster. (Call records
    live in an ``ICallStore`` over the same database, built alongside it by
    ``datastore.stores_from_url``; ``start`` and ``close`` open and close both.)"""

    async def start() -> None:
        """Connect and bring the schema (the call store's too) up to date. Called
        once, by the datastore's service, before any other method of this store or
        of its call store. Raise ``DatastoreUnavailable``."""

    async def ping() -> None:
        """Return when the backend answers; raise ``DatastoreUnavailable`` otherwise."""

    async def insert_app(app: App) -> App:
        """Store a new app and return it. Raise ``AppAlreadyExists``."""

    async def get_app(name: str) -> App:
        """Return the app. Raise ``AppNotFound``."""

    async def get_apps() -> list[App]:
        """Return every app, sorted by name."""

    async def update_app(name: str, change: AppChange) -> App:
        """Atomically replace the app by ``change(app)`` and return the new value.

        ``change`` is a pure function; it may raise (e.g. ``ValidationError``) to abort,
        and the exception propagates with nothing written. Raise ``AppNotFound``.
        The name cannot change: the returned app keeps the stored name.
        """

    async def remove_app(name: str) -> None:
        """Delete the app. Raise ``AppNotFound``, or ``AppHasRoutes`` if it has routes."""

    async def insert_route(route: Route) -> Route:
        """Store a new route. Raise ``AppNotFound`` if its app does not exist,
        ``RouteAlreadyExists`` if the app has a route at that path."""

    async def put_route(route: Route) -> tuple[Route, bool]:
        """Create or replace the route; return it and whether it was created.
        Raise ``AppNotFound`` if its app does not exist."""

    async def get_route(app_name: str, path: str) -> Route:
        """Return the route. Raise ``RouteNotFound`` (also when the app is missing)."""

    async def get_routes(
        app_name: str | None = None, image: str | None = None
    ) -> list[Route]:
        """Return routes, filtered by app and/or image, sorted by (app_name, path)."""

    async def update_route(app_name: str, path: str, change: RouteChange) -> Route:
        """Atomically replace the route by ``change(route)`` and return the new value.

        As ``update_app``: ``change`` may raise to abort. App name and path cannot
        change. Raise ``RouteNotFound``.
        """

    async def remove_route(app_name: str, path: str) -> None:
        """Delete the route. Raise ``RouteNotFound``."""

    async def put_extra(key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""

    async def get_extra(key: str) -> bytes | None:
        """Return the value stored under ``key``, or None."""

    async def close() -> None:
        """Release connections and threads. The datastore (and its call store) is
        unusable afterwards."""
