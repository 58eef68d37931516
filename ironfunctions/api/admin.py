"""Node endpoints: ``/``, ``/version``, ``/stats``, ``/health``, ``/metrics``."""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

from twisted.web.iweb import IRequest

from ironfunctions import __version__
from ironfunctions.api.http import json_response

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

HealthCheck = Callable[[], Awaitable[None]]


async def check_health(checks: Mapping[str, HealthCheck]) -> list[str]:
    """Names of the parts that failed their check (each check raises when down)."""
    down = []
    for name, check in checks.items():
        try:
            await check()
        except Exception:
            down.append(name)
    return down


def hello(request: IRequest) -> bytes:
    return json_response(request, {"goto": "https://github.com/iron-io/functions", "hello": "world!"})


def version(request: IRequest) -> bytes:
    return json_response(request, {"version": __version__})


async def health(request: IRequest, checks: Mapping[str, HealthCheck]) -> bytes:
    down = await check_health(checks)
    if down:
        request.setHeader(b"retry-after", b"1")
        return json_response(
            request,
            {"status": "unavailable", "down": down, "error": {"message": "unavailable: " + ", ".join(down)}},
            status=503,
        )
    return json_response(request, {"status": "ok"})


def stats(request: IRequest, stats: Callable[[], Mapping[str, int]]) -> bytes:
    figures = stats()
    return json_response(
        request,
        {k: int(figures.get(k, 0)) for k in ("Queue", "Running", "Complete")},
    )


def metrics(request: IRequest, exposition: Callable[[], bytes]) -> bytes:
    """The Prometheus text exposition (``PrometheusMetrics.exposition``)."""
    request.setHeader(b"content-type", PROMETHEUS_CONTENT_TYPE)
    return exposition()
