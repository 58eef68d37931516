"""``/v1/apps/{app}/routes`` and ``/v1/routes``: the routes of an app, or of all apps.

A route's path is everything after ``/routes`` and may contain ``/``. It is taken from
the raw request path (before Twisted's unquoting), then normalised
(``paths.normalize_path``) so it is stored and looked up in one form.
"""

from __future__ import annotations

import re

from twisted.web.iweb import IRequest

from ironfunctions.api import schema
from ironfunctions.api.auth import EVERYTHING, Access
from ironfunctions.api.http import body_of, json_response, klein_app
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import AppAlreadyExists, AppNotFound, RouteNotFound, ValidationError
from ironfunctions.models import App
from ironfunctions.paths import normalize_path
from ironfunctions.routecache import RouteCache

_ROUTE_URL = re.compile(rb"^/v1/apps/[^/]*/routes(/.*)$", re.DOTALL)


def route_path_of(request: IRequest) -> str:
    """The normalised route path of ``/v1/apps/{app}/routes/<path>`` from the raw path."""
    match = _ROUTE_URL.match(request.path)
    if match is None:
        raise ValidationError("Missing route Path")
    return normalize_path(match.group(1))


class RoutesAPI:
    """The routes of one app. Mounted by ``AppsAPI``: werkzeug's branch rules cannot
    carry a route path such as ``//a`` (empty first segment), so the URL rules live
    there and call these handlers."""

    def __init__(self, datastore: IDatastore, routes: RouteCache, host_memory_mb: int, app_name: str) -> None:
        self._datastore = datastore
        self._routes = routes
        self._host_memory_mb = host_memory_mb
        self._app_name = app_name  # decoded once, as /v1/apps/{app} (a second decoding made %2500 a NUL)

    async def _ensure_app(self) -> None:
        """Create the app if missing (POST/PUT of a route do, as IronFunctions)."""
        try:
            await self._datastore.get_app(self._app_name)
        except AppNotFound:
            schema.validate_app_name(self._app_name)
            try:
                await self._datastore.insert_app(App(self._app_name))
            except AppAlreadyExists:
                pass  # created concurrently: fine

    async def list_routes(self, request: IRequest) -> bytes:
        await self._datastore.get_app(self._app_name)
        image = request.args.get(b"image", [b""])[0].decode("utf-8", "replace") or None
        routes = await self._datastore.get_routes(app_name=self._app_name, image=image)
        return json_response(
            request,
            {"message": "Successfully listed routes", "routes": [schema.route_json(r) for r in routes]},
        )

    async def create_route(self, request: IRequest) -> bytes:
        route = schema.parse_new_route(body_of(request), self._app_name, self._host_memory_mb)
        await self._ensure_app()
        await self._datastore.insert_route(route)
        self._routes.invalidate(self._app_name, route.path)
        return json_response(
            request, {"message": "Route successfully created", "route": schema.route_json(route)}
        )

    async def get_route(self, request: IRequest) -> bytes:
        path = route_path_of(request)
        try:
            route = await self._datastore.get_route(self._app_name, path)
        except RouteNotFound:
            # Which 404: ask about the app only on a miss, so a hit is one query.
            await self._datastore.get_app(self._app_name)
            raise
        return json_response(request, {"message": "Successfully loaded route", "route": schema.route_json(route)})

    async def update_route(self, request: IRequest) -> bytes:
        path = route_path_of(request)
        change = schema.parse_route_patch(body_of(request), path, self._host_memory_mb)
        await self._datastore.get_app(self._app_name)
        route = await self._datastore.update_route(self._app_name, path, change)
        self._routes.invalidate(self._app_name, path)
        return json_response(
            request, {"message": "Route successfully updated", "route": schema.route_json(route)}
        )

    async def put_route(self, request: IRequest) -> bytes:
        path = route_path_of(request)
        route = schema.parse_new_route(body_of(request), self._app_name, self._host_memory_mb, path=path)
        await self._ensure_app()
        route, created = await self._datastore.put_route(route)
        self._routes.invalidate(self._app_name, path)
        message = "Route successfully created" if created else "Route successfully updated"
        return json_response(request, {"message": message, "route": schema.route_json(route)})

    async def delete_route(self, request: IRequest) -> bytes:
        path = route_path_of(request)
        await self._datastore.get_app(self._app_name)
        await self._datastore.remove_route(self._app_name, path)
        self._routes.invalidate(self._app_name, path)
        return json_response(request, {"message": "Route deleted"})


class AllRoutesAPI:
    """``GET /v1/routes[?image=x]``: every route of every app the request may see."""

    app = klein_app()

    def __init__(self, datastore: IDatastore, access: Access = EVERYTHING) -> None:
        self._datastore = datastore
        self._access = access

    @app.route("/", methods=["GET"])
    async def list_routes(self, request: IRequest) -> bytes:
        image = request.args.get(b"image", [b""])[0].decode("utf-8", "replace") or None
        routes = self._access.only(await self._datastore.get_routes(image=image), lambda r: r.app_name)
        return json_response(
            request,
            {"message": "Successfully listed routes", "routes": [schema.route_json(r) for r in routes]},
        )

