"""``/v1/apps``: create, list, load, update and delete applications."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ironfunctions.api import schema
from ironfunctions.api.auth import EVERYTHING, Access
from ironfunctions.api.calls import CallsAPI
from ironfunctions.calls.interface import AppCallsEnder, Canceller, ICallStore
from ironfunctions.api.http import body_of, json_response, klein_app
from ironfunctions.api.routes import RoutesAPI
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.routecache import RouteCache

log = Logger()


class AppsAPI:
    """Apps, and the branch to each app's routes. ``access`` is what the request's
    token grants: apps outside it are answered as missing ones (``api/auth.py``).
    ``end_calls`` ends a deleted app's calls (``runner.cancel.make_app_calls_ender``)."""

    app = klein_app()

    def __init__(
        self, datastore: IDatastore, calls: ICallStore, routes: RouteCache, host_memory_mb: int,
        cancel: Canceller, access: Access = EVERYTHING, end_calls: AppCallsEnder | None = None,
    ) -> None:
        self._datastore = datastore
        self._calls = calls
        self._routes = routes
        self._host_memory_mb = host_memory_mb
        self._cancel = cancel
        self._access = access
        self._end_calls = end_calls

    @app.route("/", methods=["GET"])
    async def list_apps(self, request: IRequest) -> bytes:
        apps = self._access.only(await self._datastore.get_apps(), lambda a: a.name)
        return json_response(
            request,
            {"message": "Successfully listed applications", "apps": [schema.app_json(a) for a in apps]},
        )

    @app.route("/", methods=["POST"])
    async def create_app(self, request: IRequest) -> bytes:
        new = schema.parse_new_app(body_of(request))
        self._access.check(new.name)
        app = await self._datastore.insert_app(new)
        self._routes.invalidate(app.name)
        return json_response(request, {"message": "App successfully created", "app": schema.app_json(app)})

    @app.route("/<string:name>", methods=["GET"])
    async def get_app(self, request: IRequest, name: str) -> bytes:
        self._access.check(name)
        app = await self._datastore.get_app(name)
        return json_response(request, {"message": "Successfully loaded app", "app": schema.app_json(app)})

    @app.route("/<string:name>", methods=["PATCH"])
    async def update_app(self, request: IRequest, name: str) -> bytes:
        self._access.check(name)
        change = schema.parse_app_patch(body_of(request))
        app = await self._datastore.update_app(name, change)
        self._routes.invalidate(name)
        return json_response(request, {"message": "App successfully updated", "app": schema.app_json(app)})

    @app.route("/<string:name>", methods=["DELETE"])
    async def delete_app(self, request: IRequest, name: str) -> bytes:
        self._access.check(name)
        await self._datastore.remove_app(name)
        self._routes.invalidate(name)
        if self._end_calls is not None:
            # After the app is gone, so no new call of it starts meanwhile; a failure
            # here leaves calls for CALL_RETENTION, and must not make the delete look failed.
            try:
                await self._end_calls(name)
            except Exception as e:
                log.warn("App {app} deleted, but its calls could not all be ended: {error}", app=name, error=str(e))
        return json_response(request, {"message": "App deleted"})

    def _routes_of(self, name: str) -> RoutesAPI:
        self._access.check(name)
        return RoutesAPI(self._datastore, self._routes, self._host_memory_mb, name)

    @app.route("/<string:name>/routes", methods=["GET"])
    async def list_routes(self, request: IRequest, name: str) -> bytes:
        return await self._routes_of(name).list_routes(request)

    @app.route("/<string:name>/routes", methods=["POST"])
    async def create_route(self, request: IRequest, name: str) -> bytes:
        return await self._routes_of(name).create_route(request)

    @app.route("/<string:name>/routes/<anypath:rest>", methods=["GET"])
    async def get_route(self, request: IRequest, name: str, rest: str) -> bytes:
        return await self._routes_of(name).get_route(request)

    @app.route("/<string:name>/routes/<anypath:rest>", methods=["PATCH"])
    async def update_route(self, request: IRequest, name: str, rest: str) -> bytes:
        return await self._routes_of(name).update_route(request)

    @app.route("/<string:name>/routes/<anypath:rest>", methods=["PUT"])
    async def put_route(self, request: IRequest, name: str, rest: str) -> bytes:
        return await self._routes_of(name).put_route(request)

    @app.route("/<string:name>/routes/<anypath:rest>", methods=["DELETE"])
    async def delete_route(self, request: IRequest, name: str, rest: str) -> bytes:
        return await self._routes_of(name).delete_route(request)

    def _calls_of(self, name: str) -> CallsAPI:
        self._access.check(name)
        return CallsAPI(self._datastore, self._calls, self._cancel, name)

    @app.route("/<string:name>/calls", methods=["GET"])
    async def list_calls(self, request: IRequest, name: str) -> bytes:
        return await self._calls_of(name).list_calls(request)

    @app.route("/<string:name>/calls/<string:call_id>", methods=["GET"])
    async def get_call(self, request: IRequest, name: str, call_id: str) -> bytes:
        return await self._calls_of(name).get_call(request, call_id)

    @app.route("/<string:name>/calls/<string:call_id>/log", methods=["GET"])
    async def get_call_log(self, request: IRequest, name: str, call_id: str) -> bytes:
        return await self._calls_of(name).get_log(request, call_id)

    @app.route("/<string:name>/calls/<string:call_id>", methods=["DELETE"])
    async def cancel_call(self, request: IRequest, name: str, call_id: str) -> bytes:
        return await self._calls_of(name).cancel_call(request, call_id)
