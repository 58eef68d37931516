"""Row <-> model conversion shared by the SQL providers (pure)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from ironfunctions.models import App, Route

ROUTE_COLUMNS = (
    "app_name, path, image, memory, headers, type, format, max_concurrency, "
    "timeout, idle_timeout, config, jwt_key"
)


def dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_json(value: Any) -> Any:
    """Columns come back as text (SQLite) or already decoded (Postgres JSONB)."""
    if isinstance(value, (str, bytes, bytearray)):
        return json.loads(value)
    return value


def app_from_row(row: Sequence[Any]) -> App:
    return App(name=row[0], config=load_json(row[1]))


def route_from_row(row: Sequence[Any]) -> Route:
    return Route(
        app_name=row[0],
        path=row[1],
        image=row[2],
        memory=int(row[3]),
        headers=load_json(row[4]),
        type=row[5],
        format=row[6],
        max_concurrency=int(row[7]),
        timeout=int(row[8]),
        idle_timeout=int(row[9]),
        config=load_json(row[10]),
        jwt_key=row[11],
    )


def route_params(route: Route) -> tuple[Any, ...]:
    """Values in ROUTE_COLUMNS order, JSON fields serialised."""
    return (
        route.app_name,
        route.path,
        route.image,
        route.memory,
        dump_json(dict(route.headers)),
        route.type,
        route.format,
        route.max_concurrency,
        route.timeout,
        route.idle_timeout,
        dump_json(dict(route.config)),
        route.jwt_key,
    )
