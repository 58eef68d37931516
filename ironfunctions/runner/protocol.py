"""The ``http`` format of hot functions (SPEC §4): HTTP/1.1 over stdin/stdout.

The daemon writes one request per call to the container's stdin; the function writes
back one response with a ``Content-Length``. As IronFunctions did, the request's
headers carry the call's environment in Go's canonical header form (``METHOD`` →
``Method``, ``REQUEST_URL`` → ``Request_url``, ``HEADER_CONTENT_TYPE`` →
``Header_content_type``, config keys likewise), plus ``Fn-Call-Id``, ``Task-Id`` and
``Content-Length``. What is the same for every call of a route (app and route config,
``APP_NAME``, ``ROUTE``...) is also the container's environment and is encoded once
per container (``RequestEncoder``); per call only the call's own values are added.

Responses are parsed by ``runner.response.ResponseParser``.
"""

from __future__ import annotations

from typing import Mapping

from ironfunctions.http.headers import TOKEN
from ironfunctions.models import LABEL_APP, LABEL_KIND, LABEL_NODE, LABEL_PATH, Call, ContainerSpec, Route
from ironfunctions.runner.plan import FunctionPolicy, cpu_shares, route_env, tmpfs_mb

def canonical(name: str) -> str:
    """Go's canonical form of an environment-style header name: ``Request_url``."""
    return name[:1].upper() + name[1:].lower()


def _header_line(name: str, value: str) -> bytes:
    """``Name: value\\r\\n``; empty for a name that cannot be a header; CR/LF in a
    value (config is verbatim) become spaces so no value can inject a header."""
    raw_name = canonical(name).encode("latin-1", "replace")
    if not TOKEN.fullmatch(raw_name):
        return b""
    raw_value = value.encode("utf-8").replace(b"\r", b" ").replace(b"\n", b" ")
    return raw_name + b": " + raw_value + b"\r\n"


def hot_container_spec(
    route: Route,
    app_config: Mapping[str, str],
    node_id: str,
    network_mode: str = "bridge",
    policy: FunctionPolicy = FunctionPolicy(),
) -> ContainerSpec:
    """The long-lived container of ``route``: its image, memory and route-level
    environment, labelled with the node, app, path and kind ``hot``, hardened by
    ``policy`` as cold containers are."""
    return ContainerSpec(
        image=route.image,
        env=route_env(route, app_config),
        memory_mb=route.memory,
        labels={LABEL_NODE: node_id, LABEL_APP: route.app_name, LABEL_PATH: route.path, LABEL_KIND: "hot"},
        timeout_s=float(route.timeout),
        network_mode=network_mode,
        cpu_shares=cpu_shares(route.memory),
        read_only_rootfs=policy.read_only_rootfs,
        tmpfs_mb=tmpfs_mb(route.memory, policy),
        user=policy.user,
    )


class RequestEncoder:
    """Encodes calls of one route (and app config) as HTTP/1.1 requests."""

    def __init__(self, route: Route, app_config: Mapping[str, str]) -> None:
        self._fixed = b"".join(_header_line(k, v) for k, v in route_env(route, app_config).items())
        self._drop_authorization = bool(route.jwt_key)

    def encode(self, call: Call) -> bytes:
        """The request for ``call``: its method and URL path in the request line (a
        HEAD is sent as GET: the function's answer must carry the body), then the
        headers, then the body."""
        request = call.request
        method = request.method
        url = request.url
        # The URL is built by the invoke resource as scheme://host/path?query.
        slash = url.find("/", url.find("//") + 2)
        target = url[slash:] if slash >= 0 else "/"
        parts = [
            b"%s %s HTTP/1.1\r\n" % ((b"GET" if method == "HEAD" else method.encode("latin-1")),
                                     target.encode("latin-1", "replace")),
            self._fixed,
            b"Method: %s\r\nRequest_url: %s\r\nCall_id: %s\r\nFn-Call-Id: %s\r\nTask-Id: %s\r\n"
            % (method.encode("latin-1"), url.encode("latin-1", "replace"),
               call.id.encode(), call.id.encode(), call.id.encode()),
        ]
        for name, values in request.headers.items():
            # As plan.call_env: no "_" names, no Authorization a jwt_key consumed (issue 11).
            if "_" in name or (self._drop_authorization and name.lower() == "authorization"):
                continue
            parts.append(_header_line("HEADER_" + name.replace("-", "_"), ", ".join(values)))
        for name, value in request.params.items():
            parts.append(_header_line("PARAM_" + name.replace("-", "_"), value))
        body = request.body
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
        return b"".join(parts)


