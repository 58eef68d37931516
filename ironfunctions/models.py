"""Plain values of the domain: apps, routes, and what a container run needs.

Everything here is immutable and free of I/O, so it can be passed across threads and
compared in tests. Serialisation to the wire lives in ``api/schema.py``.
"""

from __future__ import annotations

from typing import Mapping

import attrs

# Route defaults of IronFunctions' v1 API (SPEC §3).
DEFAULT_MEMORY_MB = 128
DEFAULT_TYPE = "sync"
DEFAULT_FORMAT = "default"
DEFAULT_MAX_CONCURRENCY = 1
DEFAULT_TIMEOUT_S = 30
DEFAULT_IDLE_TIMEOUT_S = 30

ROUTE_TYPES = ("sync", "async")
ROUTE_FORMATS = ("default", "http")


def _frozen_str_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def _frozen_headers(value: Mapping[str, list[str]] | None) -> Mapping[str, list[str]]:
    return {k: list(v) for k, v in (value or {}).items()}


@attrs.frozen
class App:
    """An application: a name and config shared by all of its routes."""

    name: str
    config: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)


@attrs.frozen
class Route:
    """A route: which image answers ``/r/{app_name}{path}`` and how it runs.

    ``path`` is always in normalised form (see ``paths.normalize_path``).
    ``headers`` maps a header name to all of its values, as Go's ``http.Header``.
    """

    app_name: str
    path: str
    image: str
    memory: int = DEFAULT_MEMORY_MB
    headers: Mapping[str, list[str]] = attrs.field(factory=dict, converter=_frozen_headers)
    type: str = DEFAULT_TYPE
    format: str = DEFAULT_FORMAT
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: int = DEFAULT_TIMEOUT_S
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT_S
    config: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)
    jwt_key: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """The identity of a route: its app and path."""
        return (self.app_name, self.path)
