"""The HTTP API. ``build_api`` is the one place that assembles the resources.

``/r/...`` (invocations) goes to a plain twisted.web resource with no routing framework
in its way: it is the hot path. Everything else is Klein: ``/``, ``/version``,
``/stats``, ``/health``, ``/metrics``, ``/tasks`` and ``/v1/*``. With a ``JWT_AUTH_KEY``,
``/v1/*``, ``/tasks``, ``/metrics`` and ``/stats`` need a Bearer token (``api/auth.py``);
``/``, ``/version`` and ``/health`` stay open for load balancers. ``/metrics`` and
``/stats`` describe the whole node, so a token limited to some apps gets 403 there.
Until ``ready()`` is true (the datastore is started), ``/v1`` and ``/r`` answer 503.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import NotFound

from ironfunctions.api import admin
from ironfunctions.api.apps import AppsAPI
from ironfunctions.api.calls import store_canceller
from ironfunctions.calls.interface import AppCallsEnder, Canceller, ICallStore
from ironfunctions.api.auth import EVERYTHING, Access, authorize
from ironfunctions.api.http import json_response, klein_app
from ironfunctions.api.routes import AllRoutesAPI
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import NotReady, ValidationError
from ironfunctions.names import text_from_url
from ironfunctions.routecache import RouteCache
from ironfunctions.runner.cancel import make_app_calls_ender


class V1API:
    """``/v1/*``: the management API."""

    app = klein_app()

    def __init__(
        self,
        datastore: IDatastore,
        calls: ICallStore,
        routes: RouteCache,
        host_memory_mb: int,
        cancel: Canceller,
        access: Access = EVERYTHING,
        end_app_calls: AppCallsEnder | None = None,
    ) -> None:
        self._datastore = datastore
        self._calls = calls
        self._routes = routes
        self._host_memory_mb = host_memory_mb
        self._cancel = cancel
        self._access = access
        self._end_app_calls = end_app_calls

    def scoped(self, access: Access) -> V1API:
        """This API as seen by a request granted ``access``."""
        return V1API(self._datastore, self._calls, self._routes, self._host_memory_mb, self._cancel, access,
                     self._end_app_calls)

    @app.route("/apps", branch=True)
    def apps(self, request: IRequest) -> IResource:
        return AppsAPI(
            self._datastore, self._calls, self._routes, self._host_memory_mb, self._cancel, self._access,
            self._end_app_calls,
        ).app.resource()

    @app.route("/routes", branch=True)
    def routes(self, request: IRequest) -> IResource:
        return AllRoutesAPI(self._datastore, self._access).app.resource()

    @app.route("/version", methods=["GET"])
    def version(self, request: IRequest) -> bytes:
        return admin.version(request)


class MainAPI:
    """Everything but ``/r``."""

    app = klein_app()

    def __init__(
        self,
        v1: V1API,
        jwt_auth_key: str,
        ready: Callable[[], bool],
        health_checks: admin.HealthChecks,
        clock: IReactorTime,
        stats: admin.StatsSource,
        render_metrics: Callable[[], Awaitable[bytes]],
        tasks: Callable[[Access], IResource] | None,
    ) -> None:
        self._v1 = v1
        self._tasks = tasks
        self._jwt_auth_key = jwt_auth_key
        self._ready = ready
        self._health_checks = health_checks
        self._clock = clock
        self._stats = stats
        self._render_metrics = render_metrics

    @app.route("/", methods=["GET"])
    def hello(self, request: IRequest) -> bytes:
        return admin.hello(request)

    @app.route("/version", methods=["GET"])
    def version(self, request: IRequest) -> bytes:
        return admin.version(request)

    def _node_wide(self, request: IRequest) -> bytes | None:
        """Check the key for a node-wide read (``/stats``, ``/metrics``): None if
        allowed, else the 403 body for a token limited to some apps. Raise
        ``Unauthorized`` for a missing or bad token."""
        if authorize(request, self._jwt_auth_key).limited:
            return json_response(
                request, {"error": {"message": "This token is limited to some apps; node-wide data needs an operator's token."}},
                status=403,
            )
        return None

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        return self._node_wide(request) or await admin.stats(request, self._stats)

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        return await admin.health(request, self._health_checks, self._clock)

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        return self._node_wide(request) or await admin.metrics(request, self._render_metrics)

    @app.route("/tasks", branch=True)
    def tasks(self, request: IRequest) -> IResource:
        """IronFunctions' async-runner protocol (``api/tasks.py``)."""
        if self._tasks is None:
            raise NotFound()
        access = authorize(request, self._jwt_auth_key)
        if not self._ready():
            raise NotReady()
        return self._tasks(access)

    @app.route("/v1", branch=True)
    def v1(self, request: IRequest) -> IResource:
        access = authorize(request, self._jwt_auth_key)
        if not self._ready():
            raise NotReady()
        return self._v1.scoped(access).app.resource()


class BadURL(Resource):
    """A 400 JSON answer for a URL no name can be read from (``names.text_from_url``),
    before Klein would answer its own text/html 400 (invalid UTF-8) or a handler would
    pass a NUL to the datastore."""

    isLeaf = True

    def __init__(self, message: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._message = message

    def render(self, request: IRequest) -> bytes:
        return json_response(request, {"error": {"message": self._message}}, status=400)


class RootResource(Resource):
    """Sends ``/r/...`` to the invoke resource and the rest to Klein."""

    def __init__(self, main: IResource, invoke: IResource | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._main = main
        self._invoke = invoke  # answers 503 itself until the node is ready

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        if path == b"r" and self._invoke is not None:
            return self._invoke
        try:
            text_from_url(request.path)  # NUL or not UTF-8: no app, route or call has such a name
        except ValidationError as e:
            return BadURL(str(e))
        # Klein routes on the whole path: give back the segment Twisted consumed.
        request.postpath.insert(0, request.prepath.pop())
        return self._main

    def render(self, request: IRequest) -> bytes:
        return json_response(request, {"error": {"message": "Not Found"}}, status=404)


def build_api(
    datastore: IDatastore,
    routes: RouteCache,
    *,
    calls: ICallStore,
    clock: IReactorTime,
    host_memory_mb: int,
    jwt_auth_key: str = "",
    ready: Callable[[], bool] = lambda: True,
    health_checks: admin.HealthChecks | None = None,
    stats: admin.StatsSource = lambda: {},
    render_metrics: Callable[[], Awaitable[bytes]] = lambda: succeed(b""),
    invoke: IResource | None = None,
    cancel: Canceller | None = None,
    tasks: Callable[[Access], IResource] | None = None,
    end_app_calls: AppCallsEnder | None = None,
) -> IResource:
    """The whole HTTP API as one resource for a ``Site``. ``calls`` is the call store
    beside ``datastore``; ``cancel`` stops a call (default: mark its record cancelled,
    see ``api.calls.store_canceller``); ``tasks`` gives the ``/tasks`` resource for a
    request granted some access (``TasksAPI.resource_for``). ``health_checks`` default to
    the datastore's ping as a shared backend; ``render_metrics`` gives ``/metrics``'
    Prometheus text. ``end_app_calls`` ends a deleted app's calls (default: their
    records only, ``runner.cancel.make_app_calls_ender`` with no queue or runner)."""
    v1 = V1API(datastore, calls, routes, host_memory_mb, cancel or store_canceller(calls, clock),
               end_app_calls=end_app_calls or make_app_calls_ender(calls, clock))
    main = MainAPI(
        v1,
        jwt_auth_key,
        ready,
        health_checks or admin.HealthChecks(shared={"datastore": datastore.ping}),
        clock,
        stats,
        render_metrics,
        tasks,
    )
    return RootResource(main.app.resource(), invoke)
