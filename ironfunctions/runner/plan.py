"""Planning a container for a call (pure): Route + request -> ``ContainerSpec``.

The environment follows IronFunctions (SPEC §4): the call's own variables first, then
the app's config, then the route's (route wins), then ``HEADER_<NAME>`` for each request
header whose name has no ``_`` (values joined with ", ") and ``PARAM_<NAME>`` for path parameters. Config
names are upper-cased with "-" turned into "_"; values are passed verbatim.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from ironfunctions.models import (
    LABEL_APP,
    LABEL_CALL,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_PATH,
    Call,
    ContainerSpec,
    Route,
)


@attrs.frozen
class FunctionPolicy:
    """The operator's hardening choices for every function container (SPEC §2):
    ``read_only_rootfs`` (``FUNCTION_READONLY_ROOTFS``) and ``user``
    (``FUNCTION_USER``, normalised to ``uid:gid``; empty: the image's user)."""

    read_only_rootfs: bool = True
    user: str = ""


# CPU weight in proportion to memory, as Lambda does: a route's 128 MiB default gets the
# engine's default weight (1024, what any other container on the host has), 256 MiB
# twice that, 64 MiB half. Clamped to what the engine accepts.
CPU_SHARES_PER_128_MB = 1024
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144


def cpu_shares(memory_mb: int) -> int:
    """The CPU shares of a container with ``memory_mb`` of memory."""
    return max(MIN_CPU_SHARES, min(MAX_CPU_SHARES, memory_mb * CPU_SHARES_PER_128_MB // 128))


def tmpfs_mb(memory_mb: int, policy: FunctionPolicy) -> int:
    """Size of the writable ``/tmp`` of a read-only root: the route's memory, since
    tmpfs pages are charged to the container's memory limit anyway (a fuller /tmp
    leaves the function less memory, it never exceeds the limit). 0 (none) with a
    writable root."""
    return memory_mb if policy.read_only_rootfs else 0


def env_name(name: str, prefix: str = "") -> str:
    """``content-type`` -> ``CONTENT_TYPE`` (with ``prefix``: ``HEADER_CONTENT_TYPE``)."""
    name = name.upper().replace("-", "_")
    return f"{prefix}_{name}" if prefix else name


def route_env(route: Route, app_config: Mapping[str, str]) -> dict[str, str]:
    """The environment shared by every call of ``route``: the hot container's own
    environment and the fixed part of each request's headers."""
    env = {
        "APP_NAME": route.app_name,
        "ROUTE": route.path,
        "FN_FORMAT": route.format,
        "MEMORY_MB": str(route.memory),
    }
    for config in (app_config, route.config):
        for key, value in config.items():
            env[env_name(key)] = value
    return env


def call_env(call: Call) -> dict[str, str]:
    """The container environment of ``call`` (see the module docstring)."""
    route, request = call.route, call.request
    env = {"METHOD": request.method, "REQUEST_URL": request.url, "CALL_ID": call.id}
    env.update(route_env(route, call.app_config))
    drop_authorization = bool(route.jwt_key)
    for key, values in request.headers.items():
        # X_User must not pose as X-User; a jwt_key route's token is not the function's
        # (issue 11: the invoker drops both; this covers calls queued before it did).
        if "_" in key or (drop_authorization and key.lower() == "authorization"):
            continue
        env[env_name(key, "HEADER")] = ", ".join(values)
    for key, value in request.params.items():
        env[env_name(key, "PARAM")] = value
    return env


def container_labels(call: Call, node_id: str, kind: str = "cold") -> dict[str, str]:
    """Labels that let a node find its containers (crash and stop cleanup)."""
    return {
        LABEL_NODE: node_id,
        LABEL_APP: call.route.app_name,
        LABEL_PATH: call.route.path,
        LABEL_CALL: call.id,
        LABEL_KIND: kind,
    }


def container_spec(
    call: Call,
    node_id: str,
    network_mode: str = "bridge",
    max_response_size: int = 6 * 1024 * 1024,
    policy: FunctionPolicy = FunctionPolicy(),
) -> ContainerSpec:
    """The cold container for ``call``: the route's image, memory and timeout, the
    call's environment and labels, the request body as stdin, hardened by ``policy``."""
    memory = call.route.memory
    return ContainerSpec(
        image=call.route.image,
        env=call_env(call),
        memory_mb=memory,
        labels=container_labels(call, node_id),
        stdin=call.request.body,
        timeout_s=float(call.route.timeout),
        network_mode=network_mode,
        stdout_limit=max_response_size,
        cpu_shares=cpu_shares(memory),
        read_only_rootfs=policy.read_only_rootfs,
        tmpfs_mb=tmpfs_mb(memory, policy),
        user=policy.user,
    )
