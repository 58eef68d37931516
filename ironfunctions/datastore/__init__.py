"""Datastores, chosen by URL: ``memory://``, ``sqlite:///path``, ``postgres://...``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import ConfigError


def datastore_from_url(url: str, reactor: Any) -> IDatastore:
    """Build (not connect) the datastore ``url`` names. Raise ``ConfigError``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ironfunctions.datastore.memory import MemoryDatastore

        return MemoryDatastore()
    if scheme == "sqlite":
        path = sqlite_path(url, "DB_URL")
        from ironfunctions.datastore.sqlite import SqliteDatastore

        return SqliteDatastore(path, reactor)
    if scheme in ("postgres", "postgresql"):
        from ironfunctions.datastore.postgres import PostgresDatastore

        return PostgresDatastore(url, reactor)
    raise ConfigError(f"DB_URL: unsupported scheme {scheme!r} (use memory://, sqlite:/// or postgres://)")


def sqlite_path(url: str, variable: str) -> str:
    """The file path of a ``sqlite:///path`` URL (``sqlite:////abs`` or ``sqlite:///rel``
    both give what follows ``sqlite://``). Raise ``ConfigError`` naming ``variable``."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.path == "/":
        raise ConfigError(f"{variable}: expected sqlite:///path/to/file.db, got {url!r}")
    return parts.path
