"""``memory://``: a datastore in a dict. A real backend for throwaway runs and tests;
it passes the same contract suite as SQLite and Postgres."""

from __future__ import annotations

import attrs
from zope.interface import implementer

from ironfunctions.datastore.interface import AppChange, IDatastore, RouteChange
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    RouteAlreadyExists,
    RouteNotFound,
)
from ironfunctions.models import App, Route


@implementer(IDatastore)
class MemoryDatastore:
    """Apps, routes and extras in process memory; lost when the process exits."""

    def __init__(self) -> None:
        self._apps: dict[str, App] = {}
        self._routes: dict[tuple[str, str], Route] = {}
        self._extras: dict[str, bytes] = {}

    async def start(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def insert_app(self, app: App) -> App:
        if app.name in self._apps:
            raise AppAlreadyExists()
        self._apps[app.name] = app
        return app

    async def get_app(self, name: str) -> App:
        try:
            return self._apps[name]
        except KeyError:
            raise AppNotFound() from None

    async def get_apps(self) -> list[App]:
        return [self._apps[name] for name in sorted(self._apps)]

    async def update_app(self, name: str, change: AppChange) -> App:
        current = await self.get_app(name)
        new = attrs.evolve(change(current), name=current.name)
        self._apps[name] = new
        return new

    async def remove_app(self, name: str) -> None:
        await self.get_app(name)
        if any(app_name == name for app_name, _ in self._routes):
            raise AppHasRoutes()
        del self._apps[name]

    async def insert_route(self, route: Route) -> Route:
        await self.get_app(route.app_name)
        if route.key in self._routes:
            raise RouteAlreadyExists()
        self._routes[route.key] = route
        return route

    async def put_route(self, route: Route) -> tuple[Route, bool]:
        await self.get_app(route.app_name)
        created = route.key not in self._routes
        self._routes[route.key] = route
        return route, created

    async def get_route(self, app_name: str, path: str) -> Route:
        try:
            return self._routes[(app_name, path)]
        except KeyError:
            raise RouteNotFound() from None

    async def get_routes(self, app_name: str | None = None, image: str | None = None) -> list[Route]:
        return [
            self._routes[key]
            for key in sorted(self._routes)
            if (app_name is None or key[0] == app_name)
            and (image is None or self._routes[key].image == image)
        ]

    async def update_route(self, app_name: str, path: str, change: RouteChange) -> Route:
        current = await self.get_route(app_name, path)
        new = attrs.evolve(change(current), app_name=app_name, path=path)
        self._routes[current.key] = new
        return new

    async def remove_route(self, app_name: str, path: str) -> None:
        await self.get_route(app_name, path)
        del self._routes[(app_name, path)]

    async def put_extra(self, key: str, value: bytes) -> None:
        self._extras[key] = bytes(value)

    async def get_extra(self, key: str) -> bytes | None:
        return self._extras.get(key)

    async def close(self) -> None:
        return None
