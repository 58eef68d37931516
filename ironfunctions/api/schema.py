"""Request parsing, validation and response shapes of the management API (pure).

Parsers take the raw body and return domain values, or raise ``ValidationError`` /
``InvalidJSON`` with the SPEC's messages; a route's message lists every problem found.
Unknown fields are ignored, as the Go server's JSON decoder did.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

import attrs

from ironfunctions.errors import InvalidJSON, ValidationError
from ironfunctions.models import (
    ROUTE_FORMATS,
    ROUTE_TYPES,
    App,
    Route,
)
from ironfunctions.paths import INVALID_PATH, normalize_path

APP_NAME = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would let a trailing newline in
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_APP_NAME = 30

# Numeric route fields: (name, low, high or None for "the host's memory").
NUMBER_LIMITS: dict[str, tuple[int, int | None]] = {
    "memory": (8, None),
    "max_concurrency": (1, 1000),
    "timeout": (1, 3600),
    "idle_timeout": (1, 3600),
}


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``InvalidJSON``."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested
        raise InvalidJSON() from None
    if not isinstance(value, dict):
        raise InvalidJSON("Invalid JSON: expected an object")
    return value


def _wrapped(body: bytes, key: str, missing: str) -> dict[str, Any]:
    value = parse_json_object(body).get(key)
    if value is None:
        raise ValidationError(missing)
    if not isinstance(value, dict):
        raise ValidationError(f"Invalid {key}: expected an object")
    return value


# -- apps


def validate_app_name(name: Any) -> str:
    if name is None or name == "":
        raise ValidationError("Missing app name")
    if not isinstance(name, str):
        raise ValidationError("Invalid app name")
    if len(name) > MAX_APP_NAME:
        raise ValidationError("App name must be 30 characters or less")
    if not APP_NAME.fullmatch(name):
        raise ValidationError("Invalid app name")
    return name


def parse_config(value: Any, problems: list[str]) -> dict[str, str] | None:
    """A config object: string keys usable as env names, string values ("" deletes in PATCH)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("config must be an object of strings")
        return None
    config: dict[str, str] = {}
    for key, item in value.items():
        if not key or any(c in key for c in "=\0") or not key.isprintable() or " " in key:
            problems.append(f"Invalid config key {key!r}")
        elif not isinstance(item, str) or "\0" in item:
            problems.append(f"config value of {key!r} must be a string")
        else:
            config[key] = item
    return config


def parse_new_app(body: bytes) -> App:
    """``POST /v1/apps`` body -> App."""
    data = _wrapped(body, "app", "Missing new application")
    name = validate_app_name(data.get("name"))
    problems: list[str] = []
    config = parse_config(data.get("config"), problems)
    if problems:
        raise ValidationError("; ".join(problems))
    return App(name, {k: v for k, v in (config or {}).items() if v != ""})


def parse_app_patch(body: bytes) -> Callable[[App], App]:
    """``PATCH /v1/apps/{app}`` body -> a pure change: config merges, "" deletes."""
    data = _wrapped(body, "app", "Missing new application")
    if data.get("name"):
        raise ValidationError("Could not update app - name is immutable")
    problems: list[str] = []
    patch = parse_config(data.get("config"), problems) or {}
    if problems:
        raise ValidationError("; ".join(problems))

    def change(app: App) -> App:
        return attrs.evolve(app, config=merge_config(app.config, patch))

    return change


def merge_config(current: Mapping[str, str], patch: Mapping[str, str]) -> dict[str, str]:
    merged = dict(current)
    for key, value in patch.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def app_json(app: App) -> dict[str, Any]:
    return {"name": app.name, "config": dict(app.config)}


# -- routes


def _parse_headers(value: Any, problems: list[str], allow_delete: bool) -> dict[str, list[str] | None]:
    """Header name -> list of values (a bare string is one value). With ``allow_delete``,
    ``[]`` or ``null`` mean "delete this header" and come back as None."""
    if not isinstance(value, dict):
        problems.append("headers must be an object of string lists")
        return {}
    headers: dict[str, list[str] | None] = {}
    for name, values in value.items():
        if not HEADER_NAME.fullmatch(name):
            problems.append(f"Invalid header name {name!r}")
            continue
        if values is None or values == []:
            if allow_delete:
                headers[name] = None
            continue
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append(f"header {name!r} must be a list of strings")
        elif any(c in v for v in values for c in "\r\n\0"):
            problems.append(f"header {name!r} has a control character")
        else:
            headers[name] = list(values)
    return headers


def _parse_route_fields(
    data: dict[str, Any], problems: list[str], host_memory_mb: int, patch: bool
) -> dict[str, Any]:
    """Validate the fields present in ``data``; return them as Route keyword values."""
    fields: dict[str, Any] = {}
    if "image" in data:
        image = data["image"]
        if image is None or image == "":
            if not patch:
                problems.append("Missing route Image")
        elif not isinstance(image, str) or any(c.isspace() or not c.isprintable() for c in image):
            problems.append("Invalid route Image")
        else:
            fields["image"] = image
    elif not patch:
        problems.append("Missing route Image")
    for name, (low, high) in NUMBER_LIMITS.items():
        if data.get(name) is None:
            continue
        value = data[name]
        top = host_memory_mb if high is None else high
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"Invalid route {name}: must be an integer")
        elif not low <= value <= top:
            problems.append(f"Invalid route {name}: must be between {low} and {top}")
        else:
            fields[name] = value
    for name, allowed, message in (
        ("type", ROUTE_TYPES, "Invalid route Type"),
        ("format", ROUTE_FORMATS, "Invalid route Format"),
    ):
        if data.get(name) in (None, ""):
            continue
        if data[name] not in allowed:
            problems.append(message)
        else:
            fields[name] = data[name]
    if data.get("headers") is not None:
        fields["headers"] = _parse_headers(data["headers"], problems, allow_delete=patch)
    if data.get("config") is not None:
        fields["config"] = parse_config(data["config"], problems)
    if data.get("jwt_key") is not None:
        if not isinstance(data["jwt_key"], str) or not data["jwt_key"].isprintable():
            problems.append("jwt_key must be a string of printable characters")
        else:
            fields["jwt_key"] = data["jwt_key"]
    return fields


def parse_path(value: Any, problems: list[str]) -> str | None:
    if value is None or value == "":
        problems.append("Missing route Path")
        return None
    if not isinstance(value, str):
        problems.append(INVALID_PATH)
        return None
    try:
        return normalize_path(value)
    except ValidationError:
        problems.append(INVALID_PATH)
        return None


def parse_new_route(body: bytes, app_name: str, host_memory_mb: int, path: str | None = None) -> Route:
    """``POST /v1/apps/{app}/routes`` body (or, with ``path`` from the URL, ``PUT``'s)
    -> a whole Route, defaults filled in."""
    data = _wrapped(body, "route", "Missing new route")
    problems: list[str] = []
    if path is None:
        path = parse_path(data.get("path"), problems)
    elif data.get("path") not in (None, ""):
        body_path = parse_path(data["path"], problems)
        if body_path is not None and body_path != path:
            problems.append("Could not update route - path is immutable")
    fields = _parse_route_fields(data, problems, host_memory_mb, patch=False)
    if problems:
        raise ValidationError("; ".join(problems))
    assert path is not None
    fields["config"] = {k: v for k, v in (fields.get("config") or {}).items() if v != ""}
    return Route(app_name=app_name, path=path, **fields)


def parse_route_patch(body: bytes, path: str, host_memory_mb: int) -> Callable[[Route], Route]:
    """``PATCH`` body -> a pure change: given fields replace, config merges ("" deletes),
    headers replace per key ([] or null deletes the key). Repeating it is idempotent."""
    data = _wrapped(body, "route", "Missing new route")
    problems: list[str] = []
    if data.get("path") not in (None, ""):
        body_path = parse_path(data["path"], problems)
        if body_path is not None and body_path != path:
            problems = ["Could not update route - path is immutable"]
    fields = _parse_route_fields(data, problems, host_memory_mb, patch=True)
    if problems:
        raise ValidationError("; ".join(problems))
    config_patch = fields.pop("config", None)
    headers_patch = fields.pop("headers", None)

    def change(route: Route) -> Route:
        new = attrs.evolve(route, **fields)
        if config_patch is not None:
            new = attrs.evolve(new, config=merge_config(route.config, config_patch))
        if headers_patch is not None:
            headers = dict(route.headers)
            for name, values in headers_patch.items():
                if values is None:
                    headers.pop(name, None)
                else:
                    headers[name] = values
            new = attrs.evolve(new, headers=headers)
        return new

    return change


def route_json(route: Route) -> dict[str, Any]:
    """A route on the wire, fields in the SPEC's order."""
    return {
        "app_name": route.app_name,
        "path": route.path,
        "image": route.image,
        "memory": route.memory,
        "headers": {k: list(v) for k, v in route.headers.items()},
        "type": route.type,
        "format": route.format,
        "max_concurrency": route.max_concurrency,
        "timeout": route.timeout,
        "idle_timeout": route.idle_timeout,
        "config": dict(route.config),
        "jwt_key": route.jwt_key,
    }

